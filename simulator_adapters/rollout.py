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
from simulator_adapters.controllers import Controller, Observation
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


def rollout(scenario: Scenario, controller: Controller, sim: BlueSkySim, cfg: RolloutConfig = RolloutConfig(),
            seed: int | None = None) -> RolloutResult:
    """Run one scenario under one controller on an open simulator (reset here); returns what happened."""
    from pipelines.conflicts import detect_snapshot

    seed = scenario.seed if seed is None else seed
    wall = _time.perf_counter()
    sim.reset(seed=seed, scenario=scenario.name)
    if controller.sim_resolution != sim.config.resolution:
        sim.stack(f"RESO {controller.sim_resolution}")
    controller.reset(scenario.name, seed)
    rng = np.random.default_rng([seed, 7])
    steps = max(1, int(round(cfg.decision_dt_s / sim.config.dt_s)))
    pending = sorted(scenario.flights, key=lambda f: (f.spawn_s, f.flight_id))
    spawned: dict[str, float] = {}
    plans = _plans(scenario)
    tracks, actions, truth, errors = [], [], [], []
    mvp = _MvpRecorder(cfg.mvp_probe_s) if controller.sim_resolution == "MVP" else None
    cleared = pd.DataFrame(columns=ACTION_SCHEMA.names)
    t, n_decisions, max_ac = 0.0, 0, 0
    bs_pairs: set = set()
    while t <= scenario.duration_s:
        due = [f for f in pending if f.spawn_s <= t and f.flight_id not in spawned]
        if due:
            sim.create([aircraft_init(f) for f in due])
            for f in due:
                for cmd in controller.spawn_commands:
                    sim.stack(cmd.format(fid=f.flight_id))
            for f in due:       # the planned climb or descent (flight plan, not a controller clearance)
                if abs(f.cleared_alt_ft - f.alt_ft) >= 100:
                    sim.stack(f"ALT {f.flight_id} {f.cleared_alt_ft:.0f}")
            spawned.update({f.flight_id: t for f in due})
        pending = [f for f in pending if f.flight_id not in spawned]
        st = sim.states()
        if len(st):
            gone = ~scenario.sector.contains(st["lat_deg"].to_numpy(), st["lon_deg"].to_numpy())
            gone &= np.array([t - spawned.get(f, t) >= cfg.exit_grace_s for f in st["flight_id"]])
            for fid in st.loc[gone, "flight_id"]:
                sim.delete(fid)
            st = st[~gone].reset_index(drop=True)
        max_ac = max(max_ac, len(st))
        tracks.append(st)
        now = sim.time_of(t)
        if mvp is not None:
            actions.extend(mvp.update(t, now, st, sim.resolution_active()))
        if cfg.record_bluesky_conflicts:
            bsc = sim.conflicts()
            bs_pairs.update(zip(bsc.loc[bsc["conflict"], "flight_id_1"], bsc.loc[bsc["conflict"], "flight_id_2"]))
        radar = noisy(st, cfg.noise, rng)
        conf = detect_snapshot(radar["flight_id"].to_numpy(), radar["lat_deg"].to_numpy(), radar["lon_deg"].to_numpy(),
                               radar["alt_ft"].to_numpy(), radar["gs_kt"].to_numpy(), radar["trk_deg"].to_numpy(),
                               radar["vs_fpm"].to_numpy(), cfg.conflicts) if len(radar) > 1 else pd.DataFrame()
        dec = controller.decide(Observation(now, t, radar, conf, plans, cleared))
        n_decisions += 1
        for c in dec.clearances:
            try:
                row = sim.clear(c.flight_id, c.action_type,
                                None if c.action_type in ("direct_to", "resume") else c.value,
                                waypoint=c.waypoint, relative=True)
            except SimulatorError as exc:
                errors.append(f"{now.isoformat()} {c}: {exc}")
                continue
            actions.append({**row, "against_flight_id": c.against})
        if dec.clearances:
            cleared = pd.DataFrame(actions, columns=ACTION_SCHEMA.names)
        for r in dec.truth:
            truth.append({**r, "scenario": scenario.name})
        sim.step(steps)
        t += cfg.decision_dt_s
    tr = pd.concat(tracks, ignore_index=True) if tracks else TRACK_SCHEMA.empty_table().to_pandas()
    ac = pd.DataFrame(actions, columns=ACTION_SCHEMA.names)
    meta = {"scenario": scenario.name, "seed": seed, "t0": sim.time_of(0.0), "controller": controller.name,
            "style": getattr(controller, "style", None), "sim_s": scenario.duration_s,
            "wall_s": round(_time.perf_counter() - wall, 3), "decision_steps": n_decisions, "max_aircraft": max_ac,
            "flights": len(spawned), "clearances": len(ac), "rejected_clearances": errors,
            "bluesky_conflict_pairs": sorted(bs_pairs)}
    return RolloutResult(scenario.name, controller.name, tr, ac, pd.DataFrame(truth), meta)
