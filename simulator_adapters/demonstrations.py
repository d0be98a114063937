"""Demonstration data sets: scenarios run under an expert, written in the canonical contracts.

Layout of ``out`` (ready for ``atc-il conflicts``, ``atc-il actions --log``, ``atc-il dataset``):
- ``tracks/``: track points (one scenario per day: scenario i starts at ``t0 + i days``; ``source`` is
  ``bluesky:<scenario>``; flight ids are ``<scenario>/<callsign>`` so they are unique in the data set): by
  default the controller's radar picture at each decision step (``surveillance="radar"``: the true states with
  the rollout's radar noise, what the expert decided on, as a surveillance recording holds what the controller's
  display showed), or the simulator's true states (``surveillance="truth"``);
- ``true_tracks/``: the simulator's true states, with ``surveillance="radar"`` (for safety figures: losses of
  separation are counted on the true states);
- ``clearances.parquet``: the expert's clearances (action contract, source ``simulator``);
- ``expert_truth.parquet``: ground truth apart from model inputs (true style, the exact decision
  distribution at every decision the expert considered, the decision and its log-probability);
- ``flight_plans.parquet``: every flight's plan (flight-plan contract, the same flight ids): its route, with
  the planned level along it and the exit level at its last waypoint (what ``dataset.goal`` reads);
- ``scenarios/<name>.json``: the scenarios, replayable; ``simulate_report.json``: counts and throughput.
"""

from __future__ import annotations

import json
import time as _time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from atc_il.io import atomic_write_table, reset_dir, write_json, write_partitioned
from atc_il.schemas import ACTION_SCHEMA, FLIGHT_PLAN_SCHEMA, TRACK_SCHEMA, action_id, to_table
from simulator_adapters.scenarios import Scenario, scenario_set

DAY = pd.Timedelta(days=1)


@dataclass(frozen=True)
class Job:
    scenario_json: str
    expert: str
    index: int
    seed: int
    #: keyword arguments of the controller's factory (``make_controller(expert, **controller_kwargs)``)
    controller_kwargs: tuple[tuple[str, object], ...] = ()


def run_job(job: Job) -> dict:
    """One scenario under one expert in its own BlueSky process (picklable for process pools and Dask)."""
    from simulator_adapters.bluesky_sim import BlueSkySim
    from simulator_adapters.controller_registry import make_controller
    from simulator_adapters.rollout import rollout

    sc = Scenario.from_json(job.scenario_json)
    with BlueSkySim() as sim:
        res = rollout(sc, make_controller(job.expert, **dict(job.controller_kwargs)), sim, seed=job.seed)
    return relabel(res, job.index)


def run_jobs_on(sim, jobs: list[Job]) -> list[dict]:
    """Several jobs on one open simulator (one BlueSky start for all of them)."""
    from simulator_adapters.controller_registry import make_controller
    from simulator_adapters.rollout import rollout
    out = []
    for job in jobs:
        res = rollout(Scenario.from_json(job.scenario_json), make_controller(job.expert, **dict(job.controller_kwargs)),
                      sim, seed=job.seed)
        out.append(relabel(res, job.index))
    return out


def _batch(jobs: list[Job]) -> list[dict]:
    from simulator_adapters.bluesky_sim import BlueSkySim
    with BlueSkySim() as sim:
        return run_jobs_on(sim, jobs)


def relabel(res, index: int) -> dict:
    """Shift a rollout to its own day and make flight ids unique in the data set."""
    name = res.scenario
    shift = index * DAY

    def fid(s):
        return name + "/" + s.astype(str)

    def shifted(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame.copy()
        out["time"] = out["time"] + shift
        out["flight_id"] = fid(out["flight_id"])
        return out

    tr = shifted(res.tracks)
    radar = shifted(res.radar) if res.radar is not None else None
    ac = res.actions.copy()
    if len(ac):
        ac["time"] = ac["time"] + shift
        ac["flight_id"] = fid(ac["flight_id"])
        if "against_flight_id" in ac:
            known = ac["against_flight_id"].notna()
            ac["against_flight_id"] = ac["against_flight_id"].where(~known, fid(ac["against_flight_id"]))
        ac["action_id"] = [action_id(f, t, a) for f, t, a in zip(ac["flight_id"], ac["time"], ac["action_type"])]
    truth = res.truth.copy()
    if len(truth):
        truth["time"] = pd.to_datetime(truth["time"], utc=True) + shift
        for c in ("flight_id_1", "flight_id_2"):
            truth[c] = fid(truth[c])
        truth["joint"] = truth["joint"].map(json.dumps)
        if "by_style" in truth:
            truth["by_style"] = truth["by_style"].map(json.dumps)
    return {"tracks": tr, "radar": radar, "actions": ac, "truth": truth, "meta": res.meta}


def flight_plans(scenarios: list[Scenario]) -> pd.DataFrame:
    """The scenarios' flight plans as contract rows, flight ids ``<scenario>/<callsign>`` as in the tracks."""
    from simulator_adapters.controllers import flight_plan_rows
    from simulator_adapters.rollout import _plans
    return pd.concat([flight_plan_rows(_plans(sc), prefix=sc.name + "/") for sc in scenarios], ignore_index=True)


def simulate(out: str | Path, n_scenarios: int, expert: str = "atco", seed: int = 0, workers: int = 1,
             client=None, scenario_kwargs: dict | None = None, progress: bool | None = None,
             dense_routes: bool = False, controller_kwargs: dict | None = None,
             surveillance: Literal["radar", "truth"] = "radar") -> dict:
    """Generate ``n_scenarios`` scenarios, run them under ``expert`` and write the demonstrations.

    ``dense_routes``: flight plans with waypoints 2-4 minutes apart, a few NM off the straight line
    (:func:`simulator_adapters.varied.dense_routes`), as real routes through beacons are.
    ``controller_kwargs``: passed to the controller's factory (``dagger:URI`` takes ``beta``).
    ``surveillance``: what ``tracks/`` holds: ``radar``, the picture the controller decided on (its radar noise
    included: the model then sees what the expert saw, in training as in the closed loop, where the model
    controller reads the same noisy picture, and the achievable ceiling is exactly achievable), or ``truth``, the
    simulator's true states (for benchmarks that add their own surveillance model, bench/extraction.py)."""
    if surveillance not in ("radar", "truth"):
        from atc_il.errors import ConfigError
        raise ConfigError(f"--surveillance must be radar or truth, not {surveillance!r}")
    from atc_il.progress import track
    from simulator_adapters.parallel import run_parallel

    out = reset_dir(out)
    wall = _time.perf_counter()
    scenarios = scenario_set(n_scenarios, seed, **(scenario_kwargs or {}))
    if dense_routes:
        from simulator_adapters.varied import dense_routes as densify
        scenarios = [densify(sc, sc.seed) for sc in scenarios]
    (out / "scenarios").mkdir()
    for sc in scenarios:
        sc.save(out / "scenarios" / f"{sc.name}.json")
    kw = tuple(sorted((controller_kwargs or {}).items()))
    jobs = [Job(sc.to_json(), expert, i, sc.seed, kw) for i, sc in enumerate(scenarios)]
    if workers <= 1 and client is None:
        from simulator_adapters.bluesky_sim import BlueSkySim
        with BlueSkySim() as sim:
            results = [run_jobs_on(sim, [j])[0] for j in track(jobs, f"simulate ({expert})", show=progress)]
    else:
        n = max(1, workers if client is None else len(client.scheduler_info().get("workers", {})) or workers)
        batches = [jobs[i::n] for i in range(n) if jobs[i::n]]
        results = sorted((r for b in run_parallel(_batch, batches, workers=n, client=client) for r in b),
                         key=lambda r: r["tracks"]["time"].min() if len(r["tracks"]) else pd.Timestamp.max.tz_localize("UTC"))
    tracks = pd.concat([r["radar"] if surveillance == "radar" else r["tracks"] for r in results], ignore_index=True)
    actions = pd.concat([r["actions"] for r in results if len(r["actions"])], ignore_index=True) \
        if any(len(r["actions"]) for r in results) else ACTION_SCHEMA.empty_table().to_pandas()
    write_partitioned(tracks, TRACK_SCHEMA, out / "tracks", what="simulated tracks")
    if surveillance == "radar":
        write_partitioned(pd.concat([r["tracks"] for r in results], ignore_index=True), TRACK_SCHEMA,
                          out / "true_tracks", what="simulated true states")
    atomic_write_table(to_table(actions, ACTION_SCHEMA, "simulated clearances"), out / "clearances.parquet")
    atomic_write_table(to_table(flight_plans(scenarios), FLIGHT_PLAN_SCHEMA, "simulated flight plans"),
                       out / "flight_plans.parquet")
    truths = [r["truth"] for r in results if len(r["truth"])]
    if truths:
        truth = pd.concat(truths, ignore_index=True)
        truth.to_parquet(out / "expert_truth.parquet", index=False)
    sim_s = sum(r["meta"]["sim_s"] for r in results)
    wall_s = _time.perf_counter() - wall
    report = {"scenarios": n_scenarios, "expert": expert, "seed": seed, "workers": workers, "dense_routes": dense_routes,
              "surveillance": surveillance,
              "track_points": len(tracks), "flights": int(tracks["flight_id"].nunique()), "clearances": len(actions),
              "expert_decisions": int(sum(len(t) for t in truths)),
              "styles": {r["meta"]["scenario"]: r["meta"]["style"] for r in results},
              "rejected_clearances": sum(len(r["meta"]["rejected_clearances"]) for r in results),
              "simulated_s": sim_s, "wall_s": round(wall_s, 2),
              "sim_seconds_per_wall_second": round(sim_s / wall_s, 1)}
    write_json(report, out / "simulate_report.json")
    return report


def build_dataset(work: str | Path, config=None, *, out: str | Path | None = None, labels_log: str | Path | None = None,
                  progress: bool | None = None, **dataset: object) -> dict:
    """The data chain on demonstrations written by :func:`simulate` in ``work``: conflicts -> actions (the
    executed clearance log, ``work/clearances.parquet``) -> observation histories (``out``, default
    ``work/dataset``), split by scenario. ``dataset``: overrides of the data set config (``test_fraction``,
    ``val_fraction``...). ``labels_log``: label the samples with this clearance log instead of the executed one
    (its actions stage goes to ``work/expert_labels``; the features' clearance history stays the executed one, as
    DAgger needs). Returns the data set stage's summary."""
    from atc_il.config import PipelineConfig
    from pipelines import actions as act
    from pipelines import conflicts as con
    from pipelines.dataset import build

    work = Path(work)
    cfg = config or PipelineConfig()
    cfg = cfg.model_copy(update={"dataset": cfg.dataset.model_validate(
        {**cfg.dataset.model_dump(), "split": "scenario", **dataset})})
    con.run(work / "tracks", work, cfg.conflicts, progress=progress)
    act.run(work / "tracks", work, cfg.actions, log=work / "clearances.parquet", infer=False,
            episodes_dir=work / "episodes", progress=progress)
    labels = None
    if labels_log is not None:
        labels = work / "expert_labels"
        act.run(work / "tracks", labels, cfg.actions, log=Path(labels_log), infer=False, episodes_dir=work / "episodes",
                progress=progress)
    return build(work, None if out is None else Path(out), cfg, progress=progress, labels=labels)
