"""Cleaning and resampling of canonical track points (a pure DataFrame -> DataFrame step).

Cleaning removes, per flight, and quarantines with a reason and a detail string:

* duplicate: a second row with the same flight_id and time (the first one is kept);
* stale_position: the same latitude and longitude as the flight's previous report (a later time)
  while not slower than 50 kt (or speed unknown). Real ADS-B collections forward-fill positions
  through coverage holes (traffic's samples, OpenSky state vectors); the repeats would otherwise turn
  into a jump when the next fresh position arrives. Removing them leaves a gap where the position was
  unknown;
* impossible_jump: positions that cannot be reached from the rest of the track at ``max_gs_kt``
  (allowing 1 s of timestamp rounding and 0.05 NM of position noise). A flight is split into
  runs at every such jump; the longest run is trusted and the others are kept only when reachable
  from the trusted points. A run of more than 20 points is never discarded (real glitches are
  short; a long run is a track too), the jump is then left in place and counted in the stats;
* altitude_spike: altitudes further from the rolling median of their segment (7 points, centred)
  than ``max_vs_fpm`` allows over the time between the point and the median (plus one step),
  and at least 1,000 ft;
* too_short: segments left with fewer than ``min_segment_points`` points.

A segment is a run of points of one flight with no gap longer than ``max_gap_s``. Segments are
implicit: flights keep their flight_id and the resampled grid simply has no points in a gap.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from atc_il.config import CleanConfig, PipelineConfig
from atc_il.geometry import bearing_deg, haversine_nm, wrap180
from atc_il.schemas import QUARANTINE_REASONS, TRACK_SCHEMA

COLUMNS = [f.name for f in TRACK_SCHEMA]
JUMP_TOL_NM = 0.05
JUMP_SLACK_S = 1.0
JUMP_MAX_RUN = 20
STALE_MAX_GS_KT = 50.0
SPIKE_WINDOW = 7
SPIKE_MIN_FT = 1000.0


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["flight_id", "time"], kind="mergesort").reset_index(drop=True)


def _ns(times: pd.Series) -> np.ndarray:
    return times.dt.as_unit("ns").array.asi8


def _new_flight(df: pd.DataFrame) -> np.ndarray:
    fid = df["flight_id"].to_numpy(dtype=object)
    return np.r_[True, fid[1:] != fid[:-1]] if len(fid) else np.zeros(0, bool)


def segment_ids(df: pd.DataFrame, max_gap_s: float) -> np.ndarray:
    """Segment number of each row of ``df`` (sorted by flight_id, time)."""
    if df.empty:
        return np.zeros(0, dtype=np.int64)
    return segments(_new_flight(df), _ns(df["time"]), max_gap_s)


def segments(new_flight: np.ndarray, t_ns: np.ndarray, max_gap_s: float) -> np.ndarray:
    """Segment numbers from a new-flight flag and times (rows sorted by flight, time)."""
    if len(t_ns) == 0:
        return np.zeros(0, dtype=np.int64)
    gap = np.r_[True, np.diff(t_ns) > max_gap_s * 1e9]
    return np.cumsum(new_flight | gap) - 1


def _quarantine(df: pd.DataFrame, mask: np.ndarray, reason: str, detail) -> pd.DataFrame:
    assert reason in QUARANTINE_REASONS
    q = df.loc[mask].copy()
    q["reason"] = reason
    q["detail"] = detail[mask] if isinstance(detail, np.ndarray) else detail
    return q


def _duplicates(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    dup = df.duplicated(["flight_id", "time"], keep="first").to_numpy().copy()
    same = df.duplicated([c for c in COLUMNS if c in df.columns], keep="first").to_numpy()
    detail = np.where(same, "identical to an earlier row",
                      "same flight_id and time as an earlier row, other values differ").astype(object)
    return dup, detail


def _stale(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Stale positions, compared with the flight's previous row (time duplicates are already removed)."""
    if df.empty:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=object)
    lat, lon = df["lat_deg"].to_numpy(float), df["lon_deg"].to_numpy(float)
    slow = (df["gs_kt"].to_numpy(float) < STALE_MAX_GS_KT) if "gs_kt" in df else np.zeros(len(df), bool)
    new = _new_flight(df)
    stale = np.r_[False, ~new[1:] & (lat[1:] == lat[:-1]) & (lon[1:] == lon[:-1])] & ~slow
    detail = np.full(len(df), "same lat/lon as the flight's previous report at a later time (a forward-filled "
                     "position)", dtype=object)
    return stale, detail


def _reachable(lat, lon, t, i, j, max_gs_kt) -> bool:
    d = haversine_nm(lat[i], lon[i], lat[j], lon[j])
    return bool(d <= max_gs_kt * (abs(t[j] - t[i]) + JUMP_SLACK_S) / 3600.0 + JUMP_TOL_NM)


def _jumps(df: pd.DataFrame, max_gs_kt: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows to reject, their details, and the number of jumps left in place (long runs)."""
    n = len(df)
    reject = np.zeros(n, dtype=bool)
    detail = np.full(n, None, dtype=object)
    kept_jumps = 0
    if n < 2:
        return reject, detail, kept_jumps
    lat, lon = df["lat_deg"].to_numpy(float), df["lon_deg"].to_numpy(float)
    t = _ns(df["time"]) / 1e9
    new = _new_flight(df)
    d = haversine_nm(lat[:-1], lon[:-1], lat[1:], lon[1:])
    dt = np.diff(t)
    jump = np.r_[False, ~new[1:] & (d > max_gs_kt * (dt + JUMP_SLACK_S) / 3600.0 + JUMP_TOL_NM)]
    if not jump.any():
        return reject, detail, kept_jumps
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], n]
    flight_of = np.cumsum(new) - 1
    for f in np.unique(flight_of[jump]):                     # only flights with a jump
        a, b = starts[f], ends[f]
        run = np.cumsum(jump[a:b])
        bounds = np.r_[0, np.flatnonzero(np.diff(run)) + 1, b - a] + a
        anchor = int(np.argmax(np.diff(bounds)))
        last, first = bounds[anchor + 1] - 1, bounds[anchor]
        for r in range(anchor + 1, len(bounds) - 1):          # forward from the trusted run
            s, e = bounds[r], bounds[r + 1]
            if _reachable(lat, lon, t, last, s, max_gs_kt) or e - s > JUMP_MAX_RUN:
                kept_jumps += not _reachable(lat, lon, t, last, s, max_gs_kt)
                last = e - 1
            else:
                reject[s:e], detail[s:e] = True, _jump_detail(lat, lon, t, last, s, e - s)
        for r in range(anchor - 1, -1, -1):                   # backward
            s, e = bounds[r], bounds[r + 1]
            if _reachable(lat, lon, t, e - 1, first, max_gs_kt) or e - s > JUMP_MAX_RUN:
                kept_jumps += not _reachable(lat, lon, t, e - 1, first, max_gs_kt)
                first = s
            else:
                reject[s:e], detail[s:e] = True, _jump_detail(lat, lon, t, e - 1, first, e - s)
    return reject, detail, kept_jumps


def _jump_detail(lat, lon, t, i, j, n) -> str:
    d = float(haversine_nm(lat[i], lon[i], lat[j], lon[j]))
    dt = abs(t[j] - t[i])
    v = d / dt * 3600.0 if dt > 0 else float("inf")
    return f"position jump of {d:.1f} NM in {dt:.1f} s ({v:.0f} kt); run of {n} point(s) off the track"


def rolling_median(values: np.ndarray, seg: np.ndarray, window: int = SPIKE_WINDOW) -> np.ndarray:
    """Centred rolling median within each segment (shorter windows at the segment ends)."""
    n, half = len(values), window // 2
    idx = np.arange(n)[:, None] + np.arange(-half, half + 1)[None, :]
    inside = (idx >= 0) & (idx < n)
    idx = np.clip(idx, 0, n - 1)
    inside &= seg[idx] == seg[:, None]
    m = np.sort(np.where(inside, values[idx], np.inf), axis=1)
    c = inside.sum(axis=1)
    rows = np.arange(n)
    return (m[rows, (c - 1) // 2] + m[rows, c // 2]) / 2.0


def _spikes(df: pd.DataFrame, max_vs_fpm: float, max_gap_s: float) -> tuple[np.ndarray, np.ndarray]:
    n = len(df)
    if n == 0:
        return np.zeros(0, bool), np.zeros(0, object)
    seg = segment_ids(df, max_gap_s)
    tv = _ns(df["time"]) / 1e9
    alt = df["alt_ft"].to_numpy(float)
    med_alt, med_t = rolling_median(alt, seg), rolling_median(tv - tv[0], seg) + tv[0]
    same_prev = np.r_[False, seg[1:] == seg[:-1]]
    same_next = np.r_[seg[1:] == seg[:-1], False]
    step_prev = np.where(same_prev, np.r_[0.0, np.diff(tv)], 0.0)
    step_next = np.where(same_next, np.r_[np.diff(tv), 0.0], 0.0)
    allowed = np.maximum(SPIKE_MIN_FT, max_vs_fpm / 60.0 * (np.abs(tv - med_t) + np.maximum(step_prev, step_next)))
    dev = alt - med_alt
    spike = np.abs(dev) > allowed
    detail = np.full(n, None, dtype=object)
    if spike.any():
        idx = np.flatnonzero(spike)
        detail[idx] = [f"altitude {a:.0f} ft is {d:+.0f} ft off the local median (allowed {w:.0f} ft)"
                       for a, d, w in zip(alt[idx], dev[idx], allowed[idx])]
    return spike, detail


def clean_tracks(df: pd.DataFrame, cfg: CleanConfig = CleanConfig()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Remove duplicates, position jumps, altitude spikes and too-short segments, per flight.

    Returns ``(clean, quarantined)``; ``clean`` keeps the input's columns (extra ones such as
    ``file`` included) sorted by flight_id and time; ``quarantined`` has them plus ``reason`` and
    ``detail``. Every input row ends up in exactly one of the two. ``clean.attrs["jumps_kept"]``
    counts the jumps left in place between long runs.
    """
    df = _sorted(df)
    out: list[pd.DataFrame] = []
    jumps_kept = 0
    for reason, step in (("duplicate", _duplicates), ("stale_position", _stale),
                         ("impossible_jump", lambda d: _jumps(d, cfg.max_gs_kt)),
                         ("altitude_spike", lambda d: _spikes(d, cfg.max_vs_fpm, cfg.max_gap_s))):
        bad, detail, *more = step(df)
        jumps_kept += sum(more)
        if bad.any():
            out.append(_quarantine(df, bad, reason, detail))
            df = df.loc[~bad].reset_index(drop=True)
    seg = segment_ids(df, cfg.max_gap_s)
    sizes = np.bincount(seg)[seg] if len(seg) else np.zeros(0, int)
    short = sizes < cfg.min_segment_points
    if short.any():
        out.append(_quarantine(df, short, "too_short", np.array(
            [f"segment of {k} point(s) < {cfg.min_segment_points}" for k in sizes], dtype=object)))
        df = df.loc[~short].reset_index(drop=True)
    quarantined = pd.concat(out, ignore_index=True) if out else df.iloc[:0].assign(reason=[], detail=[])
    df.attrs["jumps_kept"] = jumps_kept
    return df, quarantined


def derive_kinematics(df: pd.DataFrame, max_gap_s: float = 60.0) -> pd.DataFrame:
    """Fill missing gs_kt, trk_deg, vs_fpm from positions and altitudes (central differences
    inside a segment, one-sided at its ends; single-point segments stay NaN). Returns the rows
    sorted by flight_id and time."""
    df = _sorted(df)
    if len(df) == 0:
        return df
    cur = {c: df[c].to_numpy(float) if c in df else np.full(len(df), np.nan) for c in ("gs_kt", "trk_deg", "vs_fpm")}
    derived = kinematics(segment_ids(df, max_gap_s), _ns(df["time"]),
                         *(df[c].to_numpy(float) for c in ("lat_deg", "lon_deg", "alt_ft")), **cur)
    for col, v in derived.items():
        df[col] = v
    return df


def kinematics(seg: np.ndarray, t_ns: np.ndarray, lat, lon, alt, gs_kt, trk_deg, vs_fpm) -> dict:
    """The array core of :func:`derive_kinematics`: missing (NaN) gs_kt, trk_deg, vs_fpm filled."""
    n = len(seg)
    idx = np.arange(n)
    i0 = np.where(np.r_[False, seg[1:] == seg[:-1]], idx - 1, idx)
    i1 = np.where(np.r_[seg[1:] == seg[:-1], False], idx + 1, idx)
    t = t_ns / 1e9
    dt = t[i1] - t[i0]
    ok = dt > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = haversine_nm(lat[i0], lon[i0], lat[i1], lon[i1])
        gs = np.where(ok, dist / dt * 3600.0, np.nan)
        trk = np.where(ok & (dist > 0), bearing_deg(lat[i0], lon[i0], lat[i1], lon[i1]), np.nan)
        vs = np.where(ok, (alt[i1] - alt[i0]) / dt * 60.0, np.nan)
    return {col: np.where(np.isnan(cur), derived, cur)
            for col, cur, derived in (("gs_kt", gs_kt, gs), ("trk_deg", trk_deg, trk), ("vs_fpm", vs_fpm, vs))}


def resample_tracks(df: pd.DataFrame, step_s: float = 5.0, max_gap_s: float = 60.0) -> pd.DataFrame:
    """Resample every segment onto the grid of multiples of ``step_s`` since the Unix epoch.

    Linear interpolation between the raw points on either side (longitude and track on the
    circle); cfl_ft, callsign and source come from the last raw point at or before the grid time
    (carried forward within the flight). No grid point falls in a gap longer than ``max_gap_s``
    or outside a segment's first and last raw points. Returns TRACK_SCHEMA columns.
    """
    df = _sorted(df)
    if df.empty:
        return df.reindex(columns=COLUMNS).iloc[:0]
    t = _ns(df["time"])
    grid, i, j, w = resample_plan(segment_ids(df, max_gap_s), t, int(round(step_s * 1e9)))

    def lerp(col: str, circular=False) -> np.ndarray:
        return interpolate(df[col].to_numpy(float), i, j, w, circular)

    out = pd.DataFrame({"time": pd.to_datetime(grid, unit="ns", utc=True),
                        "flight_id": df["flight_id"].to_numpy(dtype=object)[i]})
    carried = df.groupby("flight_id", sort=False)[["callsign", "cfl_ft", "source"]].ffill() \
        if {"callsign", "cfl_ft", "source"} <= set(df.columns) else df.reindex(columns=["callsign", "cfl_ft", "source"])
    out["callsign"] = carried["callsign"].to_numpy(dtype=object)[i]
    out["lat_deg"] = lerp("lat_deg")
    out["lon_deg"] = lerp("lon_deg", circular="lon")
    out["alt_ft"] = lerp("alt_ft")
    out["gs_kt"] = lerp("gs_kt")
    out["trk_deg"] = lerp("trk_deg", circular="track")
    out["vs_fpm"] = lerp("vs_fpm")
    out["cfl_ft"] = carried["cfl_ft"].to_numpy(dtype=float)[i]
    out["source"] = carried["source"].to_numpy(dtype=object)[i]
    return out[COLUMNS]


def resample_plan(seg: np.ndarray, t: np.ndarray, step: int) -> tuple[np.ndarray, ...]:
    """The array core of :func:`resample_tracks`: grid times (ns) of every segment, and for each the raw
    row at or before it (``i``), the next raw row of its segment (``j``) and the weight of ``j``."""
    starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
    ends = np.r_[starts[1:], len(seg)] - 1
    g0 = -(-t[starts] // step) * step                       # first grid time >= segment start
    g1 = t[ends] // step * step                             # last grid time <= segment end
    counts = np.maximum((g1 - g0) // step + 1, 0)
    total = int(counts.sum())
    gseg = np.repeat(np.arange(len(starts)), counts)
    offset = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    grid = g0[gseg] + offset * step
    # last raw point at or before each grid time: merge raw and grid events sorted by (segment, time)
    n = len(seg)
    order = np.lexsort((np.r_[np.zeros(n), np.ones(total)], np.r_[t, grid], np.r_[seg, gseg]))
    last_raw = np.maximum.accumulate(np.where(order < n, order, -1))
    i = np.empty(total, dtype=np.int64)
    i[order[order >= n] - n] = last_raw[order >= n]
    j = np.minimum(i + 1, ends[gseg])
    span = (t[j] - t[i]).astype(float)
    w = np.divide((grid - t[i]).astype(float), span, out=np.zeros(total), where=span > 0)
    return grid, i, j, w


def interpolate(v: np.ndarray, i: np.ndarray, j: np.ndarray, w: np.ndarray, circular=False) -> np.ndarray:
    """Linear interpolation along a :func:`resample_plan`; ``circular`` ("lon" or "track") values are degrees
    on the circle: longitudes are returned in [-180, 180), tracks in [0, 360)."""
    if not circular:
        return v[i] + w * (v[j] - v[i])
    x = v[i] + w * wrap180(v[j] - v[i])
    return x % 360.0 if circular == "track" else (x + 180.0) % 360.0 - 180.0


def clean_and_resample(df: pd.DataFrame, config: PipelineConfig = PipelineConfig(),
                       resample: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Clean, derive missing kinematics and (optionally) resample. Returns (tracks, quarantined, stats)."""
    df = df.reindex(columns=list(dict.fromkeys(COLUMNS + list(df.columns))))
    clean, quarantined = clean_tracks(df, config.clean)
    jumps_kept = clean.attrs.get("jumps_kept", 0)
    clean = derive_kinematics(clean, config.clean.max_gap_s)
    tracks = resample_tracks(clean, config.resample.step_s, config.clean.max_gap_s) if resample else clean
    stats = {
        "rows_in": len(df),
        "rows_kept": len(clean),
        "rows_quarantined": len(quarantined),
        "quarantined_by_reason": quarantined["reason"].value_counts().to_dict() if len(quarantined) else {},
        "flights": int(clean["flight_id"].nunique()),
        "segments": int(segment_ids(clean, config.clean.max_gap_s).max() + 1) if len(clean) else 0,
        "points_out": len(tracks),
        "jumps_kept": jumps_kept,
    }
    return tracks, quarantined, stats
