"""Conflict episodes: per-step conflict records of a pair grouped into episodes, with what happened.

An episode is a run of detections of one pair whose consecutive times are at most
``cfg.max_episode_gap_s`` apart. Its prediction (CPA time, tcpa, dcpa) is the one at first detection; its
outcome is measured in the tracks: the smallest horizontal separation of the pair (equirectangular
distance, as the detection uses) at the grid times from first detection to the later of last detection
and predicted CPA, with its time and the altitude difference then.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from atc_il.config import ConflictConfig
from atc_il.errors import DataError
from atc_il.geometry import kwik_qdr_dist_nm
from atc_il.schemas import CONFLICT_SCHEMA, EPISODE_SCHEMA, conform, empty

__all__ = ["build_episodes", "episode_ids"]


def _ns(times) -> np.ndarray:
    idx = pd.DatetimeIndex(times)
    if idx.tz is None:
        idx = idx.tz_localize("UTC")
    return np.asarray(idx.as_unit("ns").asi8, dtype=np.int64)


def episode_ids(flight_id_1, flight_id_2, first_detection) -> np.ndarray:
    """``f"{flight_id_1}|{flight_id_2}|{first_detection:%Y%m%dT%H%M%S}"``, vectorised."""
    stamp = pd.DatetimeIndex(pd.to_datetime(first_detection, utc=True)).strftime("%Y%m%dT%H%M%S")
    return (pd.Series(np.asarray(flight_id_1, dtype=object)) + "|" + np.asarray(flight_id_2, dtype=object)
            + "|" + np.asarray(stamp, dtype=object)).to_numpy(dtype=object)


def _expand(start, count):
    """Concatenated ranges [start, start + count) and the range number of each element."""
    total = int(count.sum())
    owner = np.repeat(np.arange(len(count)), count)
    pos = np.arange(total) - np.repeat(np.cumsum(count) - count, count) + np.repeat(start, count)
    return pos, owner


def _closest(tracks: pd.DataFrame, f1, f2, t_from, t_to):
    """Per episode: min horizontal distance (NM) of flights f1/f2 at shared times in [t_from, t_to] (ns),
    its time (ns) and alt1 - alt2 then. NaN (time -1) where the two flights share no time in the window."""
    n = len(f1)
    best = np.full(n, np.nan), np.full(n, -1, dtype=np.int64), np.full(n, np.nan)
    if n == 0 or tracks.empty:
        return best
    tns = _ns(tracks["time"])
    codes, flights = pd.factorize(tracks["flight_id"].astype(str))
    ut, tidx = np.unique(tns, return_inverse=True)
    NT = len(ut)
    key = codes.astype(np.int64) * NT + tidx
    order = np.argsort(key, kind="stable")
    keys = key[order]
    lat, lon, alt = (tracks[c].to_numpy(dtype=float, na_value=np.nan)[order] for c in ("lat_deg", "lon_deg", "alt_ft"))
    a = pd.Index(flights).get_indexer(np.asarray(f1, dtype=object))
    b = pd.Index(flights).get_indexer(np.asarray(f2, dtype=object))
    ok = (a >= 0) & (b >= 0)
    lo = np.searchsorted(ut, t_from, side="left")
    hi = np.searchsorted(ut, t_to, side="right")            # exclusive
    start = np.searchsorted(keys, a * NT + lo, side="left")
    stop = np.searchsorted(keys, a * NT + hi, side="left")
    count = np.where(ok & (hi > lo), stop - start, 0)
    p, ep = _expand(start, count)
    want = b[ep] * NT + (keys[p] - a[ep] * NT)
    q = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
    found = keys[q] == want
    p, q, ep = p[found], q[found], ep[found]
    _, dist = kwik_qdr_dist_nm(lat[p], lon[p], lat[q], lon[q])
    good = np.isfinite(dist)
    p, q, ep, dist = p[good], q[good], ep[good], dist[good]
    if len(ep) == 0:
        return best
    o = np.lexsort((dist, ep))
    firsts = o[np.concatenate([[True], ep[o][1:] != ep[o][:-1]])]
    e = ep[firsts]
    best[0][e] = dist[firsts]
    best[1][e] = ut[keys[p[firsts]] - a[e] * NT]
    best[2][e] = alt[p[firsts]] - alt[q[firsts]]
    return best


def _grid_step_s(tracks: pd.DataFrame) -> float:
    ut = np.unique(_ns(tracks["time"])) if len(tracks) else np.zeros(0)
    return float(np.median(np.diff(ut))) / 1e9 if len(ut) > 1 else 0.0


def build_episodes(conflicts: pd.DataFrame, tracks: pd.DataFrame,
                   cfg: ConflictConfig = ConflictConfig()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Group conflict records into episodes.

    Returns ``(episodes, conflicts)``: episodes in EPISODE_SCHEMA (``n_actions`` = 0, one row per episode,
    sorted by first detection then pair) and the conflict records with ``episode_id`` filled (input order).
    ``los_duration_s`` = steps with LoS x the tracks' grid step.
    """
    missing = [c for c in ("time", "flight_id_1", "flight_id_2", "tcpa_s", "dcpa_nm", "los") if c not in conflicts]
    if missing:
        raise DataError(f"build_episodes: conflicts lack column(s) {missing}")
    if conflicts.empty:
        out = conflicts.copy()
        out["episode_id"] = pd.Series([], dtype=object)
        return empty(EPISODE_SCHEMA), conform(out, CONFLICT_SCHEMA, "conflicts")
    tns = _ns(conflicts["time"])
    f1 = conflicts["flight_id_1"].astype(str).to_numpy(dtype=object)
    f2 = conflicts["flight_id_2"].astype(str).to_numpy(dtype=object)
    pair, _ = pd.factorize(pd.Series(f1) + "\x00" + f2)
    order = np.lexsort((tns, pair))
    p, t = pair[order], tns[order]
    gap_ns = int(round(cfg.max_episode_gap_s * 1e9))
    new = np.ones(len(order), dtype=bool)
    new[1:] = (p[1:] != p[:-1]) | (t[1:] - t[:-1] > gap_ns)
    first = np.flatnonzero(new)
    last = np.append(first[1:], len(order)) - 1
    epnum = np.cumsum(new) - 1
    rf, rl = order[first], order[last]
    tcpa = conflicts["tcpa_s"].to_numpy(dtype=float, na_value=np.nan)
    dcpa = conflicts["dcpa_nm"].to_numpy(dtype=float, na_value=np.nan)
    los = conflicts["los"].to_numpy(dtype=bool, na_value=False)
    t_first, t_last = tns[rf], tns[rl]
    cpa_ns = t_first + np.round(np.nan_to_num(tcpa[rf]) * 1e9).astype(np.int64)
    ids = episode_ids(f1[rf], f2[rf], t_first)
    dmin, tmin, dalt = _closest(tracks, f1[rf], f2[rf], t_first, np.maximum(t_last, cpa_ns))
    los_steps = np.add.reduceat(los[order].astype(np.int64), first)
    episodes = pd.DataFrame({
        "episode_id": ids,
        "flight_id_1": f1[rf], "flight_id_2": f2[rf],
        "first_detection": pd.to_datetime(t_first, utc=True),
        "last_detection": pd.to_datetime(t_last, utc=True),
        "predicted_cpa_time": pd.to_datetime(np.where(np.isfinite(tcpa[rf]), cpa_ns, np.iinfo(np.int64).min), utc=True),
        "predicted_tcpa_s": tcpa[rf],
        "predicted_dcpa_nm": dcpa[rf],
        "min_dist_nm": dmin,
        "min_dist_time": pd.to_datetime(np.where(tmin >= 0, tmin, np.iinfo(np.int64).min), utc=True),
        "dalt_at_min_ft": dalt,
        "los": los_steps > 0,
        "los_duration_s": los_steps * _grid_step_s(tracks),
        "n_steps": (last - first + 1).astype(np.int64),
        "n_actions": np.zeros(len(first), dtype=np.int64),
    })
    episodes = episodes.sort_values(["first_detection", "flight_id_1", "flight_id_2"], kind="stable")
    out = conflicts.copy()
    ep_of_row = np.empty(len(order), dtype=np.int64)
    ep_of_row[order] = epnum
    out["episode_id"] = ids[ep_of_row]
    return conform(episodes.reset_index(drop=True), EPISODE_SCHEMA, "episodes"), conform(out, CONFLICT_SCHEMA, "conflicts")
