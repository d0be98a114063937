"""Closed-loop rollouts: a scenario, a controller and BlueSky, stepped together.

At every decision step (default 5 s, the dataset's grid): spawn due flights, read the state, delete
flights that left the sector, record the state as track points, give the controller its observation
(noisy radar picture, conflicts detected on it by atc-il, flight plans, its own past clearances),
issue its clearances in BlueSky, then advance the simulation. Under BlueSky's MVP, each resolution
manoeuvre that MVP starts is recorded as a clearance (type from the largest change it makes over the
next 30 s) and its end as a ``resume``.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from atc_il.config import ConflictConfig
from atc_il.errors import SimulatorError
from atc_il.geometry import wrap180
from atc_il.schemas import ACTION_SCHEMA, TRACK_SCHEMA, action_id
from simulator_adapters.bluesky_sim import AircraftInit, BlueSkySim, SimConfig
from simulator_adapters.controllers import Clearance, Controller, Observation
from simulator_adapters.scenarios import FlightSpec, Scenario


@dataclass(frozen=True)
class RadarNoise:
    """Gaussian noise on what the controller sees (standard deviations); zero = a perfect picture."""
    pos_nm: float = 0.05
    alt_ft: float = 25.0
    gs_kt: float = 3.0
    trk_deg: float = 1.0
    vs_fpm: float = 100.0


@dataclass(frozen=True)
class RolloutConfig:
    decision_dt_s: float = 5.0
    noise: RadarNoise = RadarNoise()
    conflicts: ConflictConfig = ConflictConfig()
    sim: SimConfig = SimConfig()
    exit_grace_s: float = 60.0       # a flight outside the sector this long after spawning is deleted
    mvp_probe_s: float = 30.0
    record_bluesky_conflicts: bool = False   # keep BlueSky's own conflict pairs per step (cross-checks)


@dataclass
class RolloutResult:
    scenario: str
    controller: str
    tracks: pd.DataFrame
    actions: pd.DataFrame
    truth: pd.DataFrame
    meta: dict = field(default_factory=dict)
    #: the controller's radar picture at every decision step (``tracks`` with the radar noise): what a
    #: surveillance recording of the session holds, and what the controller decided on
    radar: pd.DataFrame | None = None


def aircraft_init(f: FlightSpec) -> AircraftInit:
    route = [(w.name, w.lat_deg, w.lon_deg, w.alt_ft) for w in f.route]
    return AircraftInit(f.flight_id, actype=f.actype, lat_deg=f.lat_deg, lon_deg=f.lon_deg, hdg_deg=f.hdg_deg,
                        alt_ft=f.alt_ft, cas_kt=f.cas_kt, route=route)


def noisy(radar: pd.DataFrame, noise: RadarNoise, rng: np.random.Generator) -> pd.DataFrame:
    out = radar.copy()
    n = len(out)
    if n == 0:
        return out
    lat = out["lat_deg"].to_numpy()
    out["lat_deg"] = lat + rng.normal(0, noise.pos_nm, n) / 60.0
    out["lon_deg"] = out["lon_deg"].to_numpy() + rng.normal(0, noise.pos_nm, n) / 60.0 / np.cos(np.radians(lat))
    out["alt_ft"] = out["alt_ft"].to_numpy() + rng.normal(0, noise.alt_ft, n)
    out["gs_kt"] = np.maximum(out["gs_kt"].to_numpy() + rng.normal(0, noise.gs_kt, n), 0.0)
    out["trk_deg"] = (out["trk_deg"].to_numpy() + rng.normal(0, noise.trk_deg, n)) % 360.0
    out["vs_fpm"] = out["vs_fpm"].to_numpy() + rng.normal(0, noise.vs_fpm, n)
    return out


def _plans(scenario: Scenario) -> dict:
    return {f.flight_id: {"route": [(w.name, w.lat_deg, w.lon_deg, w.alt_ft) for w in f.route],
                          "level_ft": f.cleared_alt_ft, "exit_level_ft": f.exit_level_ft} for f in scenario.flights}


class _MvpRecorder:
    """Turns MVP's resolution flags into clearances in the action contract."""

    def __init__(self, probe_s: float):
        self.probe_s = probe_s
        self.active: dict[str, bool] = {}
        self.open: list[tuple[float, pd.Timestamp, str, dict]] = []   # (sim_s, time, fid, state at start)

    def update(self, sim_s: float, time: pd.Timestamp, states: pd.DataFrame, active: dict[str, bool]) -> list[dict]:
        rows = []
        by_id = states.set_index("flight_id")
        for fid, on in active.items():
            was = self.active.get(fid, False)
            if on and not was and fid in by_id.index:
                self.open.append((sim_s, time, fid, by_id.loc[fid].to_dict()))
            elif was and not on:
                rows.append(_row(time, fid, "resume", 0.0, "", "simulator"))
        self.active = dict(active)
        still = []
        for s0, t0, fid, st in self.open:
            if sim_s - s0 < self.probe_s:
                still.append((s0, t0, fid, st))
            elif fid in by_id.index:
                now = by_id.loc[fid]
                changes = {"heading": (float(wrap180(now["trk_deg"] - st["trk_deg"])), 10.0, "deg"),
                           "speed": (float(now["gs_kt"] - st["gs_kt"]), 15.0, "kt"),
                           "altitude": (float(now["alt_ft"] - st["alt_ft"]), 300.0, "ft")}
                kind = max(changes, key=lambda k: abs(changes[k][0]) / changes[k][1])
                value, scale, unit = changes[kind]
                if abs(value) >= scale / 2:
                    rows.append(_row(t0, fid, kind, value, unit, "simulator"))
        self.open = still
        return rows


def _row(t, fid, kind, value, unit, source) -> dict:
    return {"action_id": action_id(fid, t, kind), "time": t, "flight_id": fid, "action_type": kind,
            "value": value, "unit": unit, "target_value": np.nan, "waypoint": None, "source": source,
            "confidence": 1.0}


class ClosedLoop:
    """The closed loop's stepper, shared by :func:`rollout` and the Gymnasium environment
    (:mod:`simulator_adapters.gym_env`): one scenario on an open simulator, one decision step at a time.

    ``reset()`` resets the simulator; then, per decision step, ``observe()`` spawns due flights, reads the
    true state, deletes flights that left the sector, records it and returns the controller's
    :class:`Observation` (noisy radar and atc-il's detection on it; the picture is recorded too, ``radar``); ``apply(clearances)`` issues clearances
    in BlueSky (a rejected one is counted in ``errors``, not raised); ``advance()`` steps the simulation to
    the next decision time. The loop is over (``done``) once the time passes the scenario's duration.
    ``state`` is the last true state read (after deletions); ``result()`` gives what happened so far.
    """

    def __init__(self, scenario: Scenario, sim: BlueSkySim, cfg: RolloutConfig = RolloutConfig(),
                 seed: int | None = None, sim_resolution: str = "OFF", spawn_commands: tuple[str, ...] = ()):
        self.scenario, self.sim, self.cfg = scenario, sim, cfg
        self.seed = scenario.seed if seed is None else seed
        self.sim_resolution, self.spawn_commands = sim_resolution, tuple(spawn_commands)
        self.plans = _plans(scenario)

    def reset(self) -> None:
        """Reset the simulator (seeded) and the loop's state to the scenario's start."""
        self.wall = _time.perf_counter()
        self.sim.reset(seed=self.seed, scenario=self.scenario.name)
        if self.sim_resolution != self.sim.config.resolution:
            self.sim.stack(f"RESO {self.sim_resolution}")
        self.rng = np.random.default_rng([self.seed, 7])
        self.steps = max(1, int(round(self.cfg.decision_dt_s / self.sim.config.dt_s)))
        self.pending = sorted(self.scenario.flights, key=lambda f: (f.spawn_s, f.flight_id))
        self.spawned: dict[str, float] = {}
        self.tracks: list[pd.DataFrame] = []
        self.radar: list[pd.DataFrame] = []
        self.actions: list[dict] = []
        self.errors: list[str] = []
        self.mvp = _MvpRecorder(self.cfg.mvp_probe_s) if self.sim_resolution == "MVP" else None
        self.cleared = pd.DataFrame(columns=ACTION_SCHEMA.names)
        self.t, self.n_decisions, self.max_ac = 0.0, 0, 0
        self.bs_pairs: set = set()
        self.state = TRACK_SCHEMA.empty_table().to_pandas()
        self.now = self.sim.time_of(0.0)

    @property
    def done(self) -> bool:
        return self.t > self.scenario.duration_s

    def observe(self) -> Observation:
        """Spawn, read and record the state at the current decision time; the controller's observation."""
        from pipelines.conflicts import detect_snapshot

        sim, cfg, t = self.sim, self.cfg, self.t
        due = [f for f in self.pending if f.spawn_s <= t and f.flight_id not in self.spawned]
        if due:
            sim.create([aircraft_init(f) for f in due])
            for f in due:
                for cmd in self.spawn_commands:
                    sim.stack(cmd.format(fid=f.flight_id))
            for f in due:       # the planned climb or descent (flight plan, not a controller clearance)
                if abs(f.cleared_alt_ft - f.alt_ft) >= 100:
                    sim.stack(f"ALT {f.flight_id} {f.cleared_alt_ft:.0f}")
            self.spawned.update({f.flight_id: t for f in due})
        self.pending = [f for f in self.pending if f.flight_id not in self.spawned]
        st = sim.states()
        if len(st):
            gone = ~self.scenario.sector.contains(st["lat_deg"].to_numpy(), st["lon_deg"].to_numpy())
            gone &= np.array([t - self.spawned.get(f, t) >= cfg.exit_grace_s for f in st["flight_id"]])
            for fid in st.loc[gone, "flight_id"]:
                sim.delete(fid)
            st = st[~gone].reset_index(drop=True)
        self.max_ac = max(self.max_ac, len(st))
        self.tracks.append(st)
        self.state = st
        self.now = now = sim.time_of(t)
        if self.mvp is not None:
            self.actions.extend(self.mvp.update(t, now, st, sim.resolution_active()))
        if cfg.record_bluesky_conflicts:
            bsc = sim.conflicts()
            self.bs_pairs.update(zip(bsc.loc[bsc["conflict"], "flight_id_1"], bsc.loc[bsc["conflict"], "flight_id_2"]))
        radar = noisy(st, cfg.noise, self.rng)
        self.radar.append(radar)
        conf = detect_snapshot(radar["flight_id"].to_numpy(), radar["lat_deg"].to_numpy(), radar["lon_deg"].to_numpy(),
                               radar["alt_ft"].to_numpy(), radar["gs_kt"].to_numpy(), radar["trk_deg"].to_numpy(),
                               radar["vs_fpm"].to_numpy(), cfg.conflicts) if len(radar) > 1 else pd.DataFrame()
        self.n_decisions += 1
        return Observation(now, t, radar, conf, self.plans, self.cleared)

    def apply(self, clearances: list[Clearance]) -> list[dict]:
        """Issue clearances now; returns the action rows of those BlueSky accepted (rejections go to ``errors``)."""
        done = []
        for c in clearances:
            try:
                row = self.sim.clear(c.flight_id, c.action_type,
                                     None if c.action_type in ("direct_to", "resume") else c.value,
                                     waypoint=c.waypoint, relative=True)
            except SimulatorError as exc:
                self.errors.append(f"{self.now.isoformat()} {c}: {exc}")
                continue
            row = {**row, "against_flight_id": c.against}
            self.actions.append(row)
            done.append(row)
        if clearances:
            self.cleared = pd.DataFrame(self.actions, columns=ACTION_SCHEMA.names)
        return done

    def advance(self) -> None:
        """Step the simulation to the next decision time."""
        self.sim.step(self.steps)
        self.t += self.cfg.decision_dt_s

    def result(self, controller: str, style: str | None = None, truth: list[dict] | None = None) -> RolloutResult:
        """What happened so far: tracks, clearances (action contract), the controller's truth rows, meta."""
        sim, scenario = self.sim, self.scenario
        empty = TRACK_SCHEMA.empty_table().to_pandas()
        tr = pd.concat(self.tracks, ignore_index=True) if self.tracks else empty
        radar = pd.concat(self.radar, ignore_index=True) if self.radar else empty.copy()
        ac = pd.DataFrame(self.actions, columns=ACTION_SCHEMA.names)
        meta = {"scenario": scenario.name, "seed": self.seed, "t0": sim.time_of(0.0), "controller": controller,
                "style": style, "sim_s": scenario.duration_s,
                "wall_s": round(_time.perf_counter() - self.wall, 3), "decision_steps": self.n_decisions,
                "max_aircraft": self.max_ac, "flights": len(self.spawned), "clearances": len(ac),
                "rejected_clearances": self.errors, "bluesky_conflict_pairs": sorted(self.bs_pairs)}
        return RolloutResult(scenario.name, controller, tr, ac, pd.DataFrame(truth or []), meta, radar)


def rollout(scenario: Scenario, controller: Controller, sim: BlueSkySim, cfg: RolloutConfig = RolloutConfig(),
            seed: int | None = None) -> RolloutResult:
    """Run one scenario under one controller on an open simulator (reset here); returns what happened."""
    loop = ClosedLoop(scenario, sim, cfg, seed, controller.sim_resolution, controller.spawn_commands)
    loop.reset()
    controller.reset(scenario.name, loop.seed)
    truth: list[dict] = []
    while not loop.done:
        dec = controller.decide(loop.observe())
        loop.apply(dec.clearances)
        truth.extend({**r, "scenario": scenario.name} for r in dec.truth)
        loop.advance()
    return loop.result(controller.name, getattr(controller, "style", None), truth)
