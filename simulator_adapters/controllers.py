"""The controller interface: what a controller sees at a decision step, and what it returns.

Every controller (the synthetic expert, BlueSky's MVP, none, and learned models through
``model:URI``) implements :class:`Controller`; the closed-loop harness calls ``reset`` once per
scenario and ``decide`` at every decision step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import pandas as pd


@dataclass(frozen=True)
class Clearance:
    """One clearance in the action contract's terms: ``value`` is the signed change from the state now
    (heading/direct_to deg, + = right; altitude ft, + = climb; speed kt, + = faster; resume 0)."""
    flight_id: str
    action_type: str
    value: float = 0.0
    waypoint: str | None = None
    #: the other aircraft of the conflict this clearance resolves, when the controller knows it (the
    #: expert and the model controller do): written to the action log so that the clearance is linked to
    #: that conflict only, not to every conflict its aircraft is in
    against: str | None = None


@dataclass
class Observation:
    """What a controller sees at one decision step.

    ``radar``: the radar picture (canonical track columns, with radar noise as configured);
    ``conflicts``: conflicts detected on that picture (columns of ``pipelines.conflicts.detect_snapshot``);
    ``flight_plans``: flight_id -> {"route": waypoints [(name, lat_deg, lon_deg, alt_ft|None)], "level_ft":
    planned level, optionally "exit_level_ft": the level at the last waypoint} (:func:`flight_plan_rows`
    turns them into flight-plan contract rows);
    ``cleared``: this controller's own past clearances (action contract rows), oldest first.
    """
    time: pd.Timestamp
    sim_s: float
    radar: pd.DataFrame
    conflicts: pd.DataFrame
    flight_plans: dict
    cleared: pd.DataFrame


def flight_plan_rows(plans: dict, prefix: str = "") -> pd.DataFrame:
    """Observation flight plans -> flight-plan contract rows (``atc-il/flight-plan/1``), flight ids prefixed.

    A waypoint's ``alt_ft`` is its own, else the exit level (``exit_level_ft``, else ``level_ft``) at the last
    waypoint and the planned level (``level_ft``) before it; NaN where none is given."""
    rows = []
    for fid, plan in plans.items():
        route = list(plan.get("route") or ())
        level = plan.get("level_ft")
        exit_level = plan.get("exit_level_ft", level)
        for seq, (name, lat, lon, alt) in enumerate(route):
            fill = exit_level if seq == len(route) - 1 else level
            rows.append((prefix + str(fid), seq, name, float(lat), float(lon),
                         float(alt) if alt is not None else float(fill) if fill is not None else float("nan")))
    df = pd.DataFrame(rows, columns=["flight_id", "seq", "waypoint", "lat_deg", "lon_deg", "alt_ft"])
    df["seq"] = df["seq"].astype("int64")
    df["time"] = pd.Series(pd.NaT, index=df.index, dtype="datetime64[ns, UTC]")
    return df


@dataclass
class Decision:
    clearances: list[Clearance] = field(default_factory=list)
    # ground truth for evaluation only, never a model input: one row per conflict considered
    truth: list[dict] = field(default_factory=list)


class Controller(ABC):
    name: str = "controller"
    #: BlueSky conflict-resolution method to enable in the simulator while this controller runs
    sim_resolution: str = "OFF"
    #: BlueSky stack commands run for each aircraft right after it is created ("{fid}" is its id); none by default
    spawn_commands: tuple[str, ...] = ()

    def reset(self, scenario_name: str, seed: int) -> None:  # noqa: B027  (optional hook)
        """Start a controller session (one scenario)."""

    @abstractmethod
    def decide(self, obs: Observation) -> Decision:
        ...


class NoController(Controller):
    """The baseline: never issues a clearance."""
    name = "none"

    def decide(self, obs: Observation) -> Decision:
        return Decision()


class MVPController(Controller):
    """BlueSky's own conflict resolution (MVP) as an independent expert: the simulator resolves, and
    the harness records each resolution manoeuvre as clearances in the action contract."""
    name = "mvp"
    sim_resolution = "MVP"

    def decide(self, obs: Observation) -> Decision:
        return Decision()
