"""The embedded sample: a few days of synthetic en-route traffic with conflicts and a scripted controller.

It is not the simulator (that is ``simulator_adapters``, on BlueSky): it is a small, fast, seeded fixture
that exercises every stage of the data chain the way real data does. Tracks are written in the OpenSky
state-vector schema (SI units, epoch seconds) with the glitches real feeds have (altitude spikes,
duplicates, out-of-range rows), the controller's clearances as a clearance log in the action contract,
and each flight's route as a flight-plan waypoint table.

The scripted controller resolves most injected conflicts with a heading change (left or right, 20-40
degrees) or a level change (up or down 1000-2000 ft) on one of the two aircraft, 150-330 s before CPA,
and resumes its own navigation once clear.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from atc_il.geometry import bearing_deg, from_local_nm, to_local_nm
from atc_il.schemas import action_id
from atc_il.units import FPM_MPS, FT_M, KT_MPS

CENTER = (50.0, 5.0)          # sector centre (lat, lon)
SECTOR_NM = 60.0              # half-width of the square sector
TURN_RATE_DPS = 1.5           # en-route turn rate
CLIMB_FPM = 1500.0


@dataclass
class SampleSpec:
    days: int = 3
    hours_per_day: float = 1.0
    background_per_hour: int = 24
    conflicts_per_hour: int = 14
    act_probability: float = 0.85
    raw_step_s: float = 5.0
    seed: int = 0
    start: str = "2024-06-03T08:00:00Z"


def _flight_table(spec: SampleSpec, rng: np.random.Generator, day_start: float, day: int):
    """Flights as straight routes through the sector: background traffic plus injected conflict pairs."""
    duration = spec.hours_per_day * 3600.0
    rows = []   # (fid, t0, x0, y0, hdg, gs, alt, vs_target_alt)
    n_bg = int(spec.background_per_hour * spec.hours_per_day)
    for i in range(n_bg):
        hdg = rng.uniform(0, 360)
        gs = rng.uniform(400, 480)
        alt = float(rng.integers(25, 41)) * 1000.0
        t_mid = rng.uniform(600, duration - 600)
        off = rng.uniform(-SECTOR_NM * 0.7, SECTOR_NM * 0.7)
        rows.append((f"BG{day}{i:03d}", t_mid, off, hdg, gs, alt, None))
    conflicts = []
    n_conf = int(spec.conflicts_per_hour * spec.hours_per_day)
    kinds = ["crossing", "head_on", "overtaking", "level_crossing"]
    for j in range(n_conf):
        kind = kinds[rng.integers(len(kinds))]
        tc = rng.uniform(900, duration - 600)
        h1 = rng.uniform(0, 360)
        gs1 = rng.uniform(420, 470)
        gs2 = rng.uniform(420, 470)
        alt = float(rng.integers(26, 39)) * 1000.0
        alt2, climb_to = alt, None
        if kind == "crossing":
            h2 = h1 + rng.choice([-1, 1]) * rng.uniform(45, 135)
        elif kind == "head_on":
            h2 = h1 + 180 + rng.uniform(-8, 8)
        elif kind == "overtaking":
            h2 = h1 + rng.uniform(-12, 12)
            gs1, gs2 = 470.0 + rng.uniform(0, 20), 380.0 + rng.uniform(0, 20)
        else:   # aircraft 2 climbs through aircraft 1's level near the crossing
            h2 = h1 + rng.choice([-1, 1]) * rng.uniform(60, 120)
            alt2, climb_to = alt - 4000.0, alt + 4000.0
        a, b = f"C{day}{j:03d}A", f"C{day}{j:03d}B"
        rows.append((a, tc, None, h1 % 360, gs1, alt, None))
        rows.append((b, tc, None, h2 % 360, gs2, alt2, climb_to))
        conflicts.append((a, b, tc, kind))
    return rows, conflicts


def _simulate_day(spec: SampleSpec, rng: np.random.Generator, day: int, day_start: float):
    rows, conflicts = _flight_table(spec, rng, day_start, day)
    duration = spec.hours_per_day * 3600.0
    n = len(rows)
    fid = np.array([r[0] for r in rows])
    hdg = np.array([r[3] for r in rows], dtype=float)
    gs = np.array([r[4] for r in rows], dtype=float)
    alt = np.array([r[5] for r in rows], dtype=float)
    tc = np.array([r[1] for r in rows], dtype=float)
    # conflict pairs pass near a point of the inner sector at tc; background flights pass the line `off`
    cx = rng.uniform(-SECTOR_NM * 0.4, SECTOR_NM * 0.4, n)
    cy = rng.uniform(-SECTOR_NM * 0.4, SECTOR_NM * 0.4, n)
    for k in range(0, len(conflicts)):
        ia = np.flatnonzero(fid == conflicts[k][0])[0]
        cx[ia + 1], cy[ia + 1] = cx[ia], cy[ia]
    v_e, v_n = gs * np.sin(np.radians(hdg)), gs * np.cos(np.radians(hdg))
    half_path_s = 1.25 * SECTOR_NM / gs * 3600.0
    t_enter = tc - half_path_s
    x = cx - v_e / 3600.0 * tc          # position at t = 0 of the straight line through (cx, cy) at tc
    y = cy - v_n / 3600.0 * tc
    t_exit = tc + half_path_s
    target_alt = alt.copy()
    climb_to = np.array([np.nan if r[6] is None else r[6] for r in rows])
    climbing = ~np.isnan(climb_to)
    # the climber starts its climb so as to pass the other's level about at tc
    climb_start = tc - (np.abs(climb_to - alt) / 2) / CLIMB_FPM * 60.0
    route_hdg = hdg.copy()
    target_hdg = hdg.copy()

    # scripted controller: a decision per conflict
    events = []     # (time, index, kind, value)
    log = []
    for a, b, t_cpa, kind in conflicts:
        if rng.random() > spec.act_probability:
            continue
        i = int(np.flatnonzero(fid == (a if rng.random() < 0.5 else b))[0])
        lead = rng.uniform(150, 330)
        t_act = float(np.round((t_cpa - lead) / spec.raw_step_s) * spec.raw_step_s)
        if kind == "level_crossing" or rng.random() < 0.35:
            delta = float(rng.choice([-1, 1]) * rng.choice([1000.0, 2000.0]))
            events.append((t_act, i, "altitude", delta))
            log.append((t_act, fid[i], "altitude", delta, "ft"))
        else:
            delta = float(rng.choice([-1, 1]) * rng.uniform(20, 40))
            events.append((t_act, i, "heading", delta))
            log.append((t_act, fid[i], "heading", delta, "deg"))
            t_res = t_cpa + rng.uniform(90, 180)
            events.append((t_res, i, "resume", 0.0))
            log.append((t_res, fid[i], "resume", 0.0, ""))
    events.sort()

    out = []
    log_abs = []
    ev = 0
    steps = int(duration)
    vs = np.zeros(n)
    for t in range(steps):
        # the radar sees the state at t before the clearances issued at t take effect
        if t % int(spec.raw_step_s) == 0:
            live = (t >= t_enter) & (t <= t_exit) & (np.abs(x) < SECTOR_NM * 1.3) & (np.abs(y) < SECTOR_NM * 1.3)
            idx = np.flatnonzero(live)
            out.append(pd.DataFrame({"t": float(t), "i": idx, "x": x[idx], "y": y[idx], "alt": alt[idx],
                                     "hdg": hdg[idx], "gs": gs[idx], "vs": vs[idx]}))
        while ev < len(events) and events[ev][0] <= t:
            te, i, kind, val = events[ev]
            if kind == "heading":
                target_hdg[i] = (hdg[i] + val) % 360
                log_abs.append(target_hdg[i])
            elif kind == "altitude":
                target_alt[i] = alt[i] + val
                climbing[i] = False
                log_abs.append(target_alt[i])
            else:
                target_hdg[i] = route_hdg[i]
                log_abs.append(np.nan)
            ev += 1
        start_climb = climbing & (t >= climb_start)
        target_alt[start_climb] = climb_to[start_climb]
        climbing &= ~start_climb
        turn = ((target_hdg - hdg + 180) % 360) - 180
        hdg = (hdg + np.clip(turn, -TURN_RATE_DPS, TURN_RATE_DPS)) % 360
        dalt = target_alt - alt
        vs = np.clip(dalt, -CLIMB_FPM / 60.0, CLIMB_FPM / 60.0) * 60.0
        alt = alt + vs / 60.0
        x = x + gs * np.sin(np.radians(hdg)) / 3600.0
        y = y + gs * np.cos(np.radians(hdg)) / 3600.0
    frame = pd.concat(out, ignore_index=True)
    lat, lon = from_local_nm(frame["x"].to_numpy(), frame["y"].to_numpy(), *CENTER)
    tracks = pd.DataFrame({
        "time": day_start + frame["t"].to_numpy(),
        "icao24": [_icao24(f) for f in fid[frame["i"].to_numpy()]],
        "callsign": fid[frame["i"].to_numpy()],
        "lat": lat, "lon": lon,
        "velocity": frame["gs"].to_numpy() * KT_MPS,
        "heading": frame["hdg"].to_numpy(),
        "vertrate": frame["vs"].to_numpy() * FPM_MPS,
        "baroaltitude": frame["alt"].to_numpy() * FT_M,
    })
    clear = pd.DataFrame(log, columns=["t", "flight_id", "action_type", "value", "unit"])
    clear["flight_id"] = clear["flight_id"].map(_icao24)      # readers key OpenSky flights by icao24
    clear = clear.sort_values("t", kind="stable").reset_index(drop=True)
    return tracks, clear, fid, route_hdg, x, y, conflicts


def _icao24(callsign: str) -> str:
    """A stable 24-bit address per synthetic flight (OpenSky readers use icao24 as flight_id)."""
    return f"{zlib.crc32(str(callsign).encode()) & 0xFFFFFF:06x}"


def _inject_glitches(tracks: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    n = len(tracks)
    spikes = rng.choice(n, size=max(1, n // 2000), replace=False)
    tracks.loc[spikes, "baroaltitude"] = rng.uniform(30000, 40000, len(spikes))     # ~100,000+ ft spikes
    dups = tracks.iloc[rng.choice(n, size=max(1, n // 3000), replace=False)]
    bad = tracks.iloc[rng.choice(n, size=3, replace=False)].copy()
    bad["lat"] = 123.0                                                               # out of range
    return pd.concat([tracks, dups, bad], ignore_index=True).sort_values("time", kind="stable")


def make_sample(out_dir: str | Path, spec: SampleSpec = SampleSpec()) -> dict:
    """Write the embedded sample under ``out_dir``; returns what was written, with counts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    t0 = pd.Timestamp(spec.start).timestamp()
    track_files, logs, plans, n_conf = [], [], [], 0
    for day in range(spec.days):
        day_start = t0 + day * 86400.0
        tracks, clear, fid, route_hdg, *_ , conflicts = _simulate_day(spec, rng, day, day_start)
        n_conf += len(conflicts)
        tracks = _inject_glitches(tracks, rng)
        path = out / f"opensky_day{day}.csv"
        tracks.to_csv(path, index=False, float_format="%.6f")
        track_files.append(path)
        clear["time"] = pd.to_datetime(day_start + clear["t"], unit="s", utc=True)
        logs.append(clear.drop(columns="t"))
        plans.append(_flight_plans(tracks, route_hdg, fid))
    log = pd.concat(logs, ignore_index=True)
    log["action_id"] = [action_id(f, t, a) for f, t, a in zip(log["flight_id"], log["time"], log["action_type"])]
    log["source"] = "clearance_log"
    log["confidence"] = 1.0
    log.to_csv(out / "clearances.csv", index=False)
    pd.concat(plans, ignore_index=True).to_csv(out / "flight_plans.csv", index=False)
    return {"track_files": [str(p) for p in track_files], "clearance_log": str(out / "clearances.csv"),
            "flight_plans": str(out / "flight_plans.csv"), "raw_rows": int(sum(len(pd.read_csv(p, usecols=[0])) for p in track_files)),
            "injected_conflicts": n_conf, "clearances": len(log)}


def _flight_plans(tracks: pd.DataFrame, route_hdg: np.ndarray, fid: np.ndarray) -> pd.DataFrame:
    """Entry, mid and exit waypoints of each flight's straight route (from its first point and route heading)."""
    first = tracks.sort_values("time").groupby("callsign", sort=True).first()
    hdg = pd.Series(route_hdg, index=fid).reindex(first.index).to_numpy()
    x0, y0 = to_local_nm(first["lat"].to_numpy(), first["lon"].to_numpy(), *CENTER)
    rows = []
    for k, leg in enumerate([0.0, 60.0, 120.0, 180.0]):
        lat, lon = from_local_nm(x0 + leg * np.sin(np.radians(hdg)), y0 + leg * np.cos(np.radians(hdg)), *CENTER)
        rows.append(pd.DataFrame({"flight_id": [_icao24(c) for c in first.index], "seq": k, "waypoint": [f"W{k}{c[-4:]}" for c in first.index],
                                  "lat_deg": lat, "lon_deg": lon}))
    _ = bearing_deg  # routes are straight: bearings between consecutive waypoints equal the route heading
    return pd.concat(rows, ignore_index=True).sort_values(["flight_id", "seq"]).reset_index(drop=True)


def radar_chain(work: str | Path, days: int = 3, seed: int = 0, config=None, progress: bool | None = None) -> dict:
    """The embedded sample through the whole data chain into ``work``: ingest -> conflicts -> actions
    (clearance log and flight plans) -> observation histories. Returns each stage's summary."""
    from atc_il.config import PipelineConfig
    from pipelines import actions, conflicts
    from pipelines.dataset import build
    from pipelines.ingest import ingest

    work = Path(work)
    cfg = config or PipelineConfig()
    info = make_sample(work / "raw", SampleSpec(days=days, seed=seed))
    rep = ingest([Path(p) for p in info["track_files"]], work, fmt="opensky", config=cfg, progress=progress)
    c = conflicts.run(work / "tracks", work, cfg.conflicts, progress=progress)
    a = actions.run(work / "tracks", work, cfg.actions, log=Path(info["clearance_log"]),
                    flight_plans=Path(info["flight_plans"]), episodes_dir=work / "episodes")
    d = build(work, None, cfg, progress=progress)
    return {"sample": info, "ingest": rep, "conflicts": c, "actions": a, "dataset": d}
