"""Conflict detection with BlueSky's state-based semantics, at close to N log N cost.

Semantics (those of BlueSky 1.1.1 ``CSTATEBASED``, ``traffic/asas/src_cpp/cstatebased.hpp``), per pair:
straight-line extrapolation of the current state (ground speed and track, vertical speed), relative
position from the equirectangular ("kwik") formula; the horizontal intrusion interval
``[tcpa - dt, tcpa + dt]`` (when ``dcpa < rpz``) intersected with the vertical one (the times the
altitude difference is inside ``(-hpz, hpz)``; ``[0, inf)`` when level and already inside); a conflict when
``tin <= lookahead``, ``tin < tout`` and ``tout > 0`` (BlueSky's early exits for diverging pairs and its
1e-6 m/s thresholds included). LoS: ``dist < rpz`` and ``|dalt| < hpz`` now. ``tin_s`` is at least 0.
Deviations, only in degenerate cases: a level pair in LoS ends at ``inf`` instead of 1e4 s, identical
velocities are clamped as in BlueSky's Python ``STATEBASED`` (the C code divides by zero), longitude
differences are wrapped at the date line.

Speed: a conservative pre-filter keeps only pairs whose swept boxes overlap. The look-ahead is cut in
``K`` time slices; in each slice an aircraft sweeps a box in a local frame (x east, y north in NM, altitude
in ft) padded by rpz/2 and hpz/2. Boxes go into a uniform x/y grid (one entry per covered cell); entries
are sorted by (cell, altitude) and each entry is paired with the following entries of its cell whose
altitude interval starts within its own (a sweep in altitude); a pair is kept in the one cell that holds
the corner of the boxes' intersection, and only if the boxes overlap. Then the exact test runs on the
candidates, vectorised. Many snapshots are processed in one pass (the snapshot is part of the cell key).

Frame and proof of conservativeness: x = dlon * cos(lat_lo) * R, with lat_lo the latitude of smallest
cosine in the band. For a pair with mean-latitude cosine cm in [c_lo, c_hi], the frame's x separation at
time t is ``(c_lo/cm) * dx_pair(t) + du * t * (1 - c_lo/cm)``, so it is at most
``rpz + (|u1| + |u2|) * t * eps`` when the pair is within rpz, with ``eps = 1 - c_lo/c_hi``: each box is
also padded by ``|u| * t_end * eps`` in x. Large latitude ranges are cut in bands (each with a halo of
the rows that can still conflict with it), and rows near the date line get a copy shifted by 360 deg.
``tests/test_conflicts.py`` checks against brute force that nothing is missed.
"""

from __future__ import annotations

import time as _time
from pathlib import Path

import numpy as np
import pandas as pd

from atc_il.config import ConflictConfig, EnRouteConfig
from atc_il.errors import DataError
from atc_il.io import read_table, write_partitioned
from atc_il.progress import track
from atc_il.runs import StagedRun, checkpoint, require_complete
from atc_il.schemas import CONFLICT_SCHEMA, EPISODE_SCHEMA, TRACK_SCHEMA, conform, empty
from atc_il.units import EARTH_RADIUS_M, FT_M, NM_M
from pipelines import cd_kernel
from pipelines.enroute import EnRouteFilter, filter_episodes
from pipelines.episodes import build_episodes

__all__ = ["detect_snapshot", "detect", "build_episodes", "run", "PAIR_COLUMNS"]

PAIR_COLUMNS = ["dist_nm", "dalt_ft", "tcpa_s", "dcpa_nm", "tin_s", "qdr_deg", "conflict", "los"]
RE_NM = EARTH_RADIUS_M / NM_M
VREL2_MIN = 1e-6 / NM_M ** 2          # BlueSky's clamp of |dv|^2 (1e-6 m2/s2), in (NM/s)^2
DVS_MIN = 1e-6 / FT_M                 # BlueSky's "level" threshold on the vertical speed difference (1e-6 m/s), ft/s
_TOL_NM = 1e-6                        # extra padding against rounding in the pre-filter
_TOL_FT = 1e-3
CHUNK_ROWS = 4_000                    # rows (aircraft-snapshots) per vectorised pass in detect() (cache-sized)
SMALL_PAIRS_PER_ROW = 32              # below this many pairs per row, every pair is tested (no pre-filter)


# ----------------------------------------------------------------------------------------- kernel
class _State:
    """Per-row state in internal units: radians, ft, NM/s, ft/s; ``group`` = snapshot number."""

    def __init__(self, lat, lon, alt, gs, trk, vs, group):
        self.lat = np.asarray(lat, dtype=float)
        self.lon = np.asarray(lon, dtype=float)
        self.alt = np.asarray(alt, dtype=float)
        t = np.radians(np.asarray(trk, dtype=float))
        gs = np.asarray(gs, dtype=float) / 3600.0
        self.u, self.v = gs * np.sin(t), gs * np.cos(t)
        self.w = np.asarray(vs, dtype=float) / 60.0
        self.group = np.asarray(group, dtype=np.int64)
        self.latr = np.radians(self.lat)
        self.lonr = np.radians(self.lon)


def _occupied_arc(lon):
    """Centre of the arc holding every longitude (opposite the largest empty gap) and that gap (deg)."""
    lo, hi = float(lon.min()), float(lon.max())
    if hi - lo <= 180.0:                                      # the usual case: no sort needed
        return (lo + hi) / 2.0, 360.0 - (hi - lo)
    s = np.sort(lon % 360.0)
    gaps = np.diff(np.concatenate([s, [s[0] + 360.0]]))
    k = int(np.argmax(gaps))
    return (s[k] + gaps[k] + (360.0 - gaps[k]) / 2.0 + 180.0) % 360.0 - 180.0, float(gaps[k])


def _copies(st: _State, reach_nm: float):
    """Rows as placed in the pre-filter frame: (source row, band, x, y, eps) per copy."""
    lat = st.lat
    lo, hi = float(lat.min()), float(lat.max())
    reach_lat = np.degrees(reach_nm / RE_NM)
    cos_range = lambda a, b: (min(np.cos(np.radians(a)), np.cos(np.radians(b))),
                              1.0 if a <= 0.0 <= b else max(np.cos(np.radians(a)), np.cos(np.radians(b))))
    c_lo, c_hi = cos_range(lo, hi)
    rows = np.arange(len(lat))
    if 1.0 - c_lo / c_hi <= 0.1 or hi - lo <= 3 * reach_lat:
        src, band, nb, edges = rows, np.zeros(len(lat), dtype=np.int64), 1, [(lo, hi)]
    else:                                              # latitude bands, each with a halo above it
        width = 2.0 * reach_lat
        nb = int((hi - lo) // width) + 1
        core = np.minimum(((lat - lo) // width).astype(np.int64), nb - 1)
        halo = (core > 0) & (lat < lo + core * width + reach_lat)
        src = np.concatenate([rows, rows[halo]])
        band = np.concatenate([core, core[halo] - 1])
        edges = [(lo + b * width, min(lo + (b + 1) * width + reach_lat, hi)) for b in range(nb)]
    cs = np.array([cos_range(a, b) for a, b in edges])
    c_band, eps_band = cs[:, 0], 1.0 - cs[:, 0] / cs[:, 1]
    lon0, gap = _occupied_arc(st.lon)
    dlon = (st.lon[src] - lon0 + 180.0) % 360.0 - 180.0
    if np.radians(gap) * c_lo * RE_NM <= reach_nm:     # traffic all round the globe: copies across the cut
        near = dlon > 180.0 - np.degrees(reach_nm / (RE_NM * max(c_lo, 1e-12)))
        src, band = np.concatenate([src, src[near]]), np.concatenate([band, band[near]])
        dlon = np.concatenate([dlon, dlon[near] - 360.0])
    x = np.radians(dlon) * c_band[band] * RE_NM
    y = np.radians(lat[src] - lo) * RE_NM
    return src, band, nb, x, y, eps_band[band]


def _slices(cfg: ConflictConfig, gs_max_nmps: float) -> int:
    """Number of time slices: each slice's sweep about five protected radii long (measured best), 1..8."""
    return min(8, max(1, round(gs_max_nmps * cfg.lookahead_s / (5.0 * cfg.rpz_nm))))


def _candidates(st: _State, cfg: ConflictConfig, n_slices: int | None = None, stats: dict | None = None):
    """Row pairs (i < j, same group) whose swept boxes overlap in some time slice (duplicates possible)."""
    R, H, T = cfg.rpz_nm, cfg.hpz_ft, cfg.lookahead_s
    gs_max = float(np.sqrt(st.u ** 2 + st.v ** 2).max())
    reach = 2.0 * gs_max * T + R + 1e-6
    K = n_slices or _slices(cfg, gs_max)
    src, band, nb, x, y, eps = _copies(st, reach)
    m = len(src)
    u, v, w, z = st.u[src], st.v[src], st.w[src], st.alt[src]
    ts = np.arange(K + 1) * (T / K)
    t0, t1 = ts[:-1, None], ts[1:, None]                       # (K, 1) against (m,): boxes are (K, m)
    pad_x = R / 2 + np.abs(u) * t1 * eps + _TOL_NM
    pad_y = R / 2 + _TOL_NM
    pad_z = H / 2 + DVS_MIN * T + _TOL_FT                    # BlueSky treats |dvs| <= 1e-6 m/s as level
    xa, xb, ya, yb, za, zb = x + u * t0, x + u * t1, y + v * t0, y + v * t1, z + w * t0, z + w * t1
    X0, X1 = (np.minimum(xa, xb) - pad_x).ravel(), (np.maximum(xa, xb) + pad_x).ravel()
    Y0, Y1 = (np.minimum(ya, yb) - pad_y).ravel(), (np.maximum(ya, yb) + pad_y).ravel()
    Z0, Z1 = (np.minimum(za, zb) - pad_z).ravel(), (np.maximum(za, zb) + pad_z).ravel()
    # uniform x/y grid, cell about the mean box size
    cell_nm = max(float(np.maximum(X1 - X0, Y1 - Y0).mean()), R)
    ix0, ix1 = ((X0 - X0.min()) // cell_nm).astype(np.int64), ((X1 - X0.min()) // cell_nm).astype(np.int64)
    iy0, iy1 = ((Y0 - Y0.min()) // cell_nm).astype(np.int64), ((Y1 - Y0.min()) // cell_nm).astype(np.int64)
    NX, NY = int(ix1.max()) + 1, int(iy1.max()) + 1
    ny = iy1 - iy0 + 1
    cnt = (ix1 - ix0 + 1) * ny
    E = int(cnt.sum())
    box = np.repeat(np.arange(K * m), cnt)                   # box = slice * m + copy
    off = np.arange(E) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    nyb = ny[box]
    cx, cy = ix0[box] + off // nyb, iy0[box] + off % nyb
    copy = box % m
    cell = (((st.group[src[copy]] * nb + band[copy]) * K + box // m) * NX + cx) * NY + cy
    zlo = Z0.min()
    zres = max(1.0, (Z1.max() - zlo) / 65000.0)
    qz0, qz1 = ((Z0 - zlo) / zres).astype(np.int64), ((Z1 - zlo) / zres).astype(np.int64)
    qzb = qz0[box]
    if int(cell.max()) < 65536:                               # two stable radix passes
        o = np.argsort(qzb.astype(np.uint16), kind="stable")
        order = o[np.argsort(cell[o].astype(np.uint16), kind="stable")]
    else:
        order = np.argsort((cell << 16) | qzb)
    cs, bs = cell[order], box[order]
    comp = (cs << 16) | qzb[order]
    end = np.searchsorted(comp, (cs << 16) | qz1[bs], side="right")
    pos = np.arange(E, dtype=np.int64)
    k = end - pos - 1                                         # later entries of the same cell, altitude overlapping
    C = int(k.sum())
    cum = np.cumsum(k)
    b = np.arange(C, dtype=np.int64) + np.repeat(pos + 1 - (cum - k), k)
    # keep a pair only in the cell holding the corner of the boxes' intersection
    f = ((ix0[bs] == cx[order]) | ((iy0[bs] == cy[order]) << 1)).astype(np.uint8)
    ref = (np.repeat(f, k) | f[b]) == 3
    bi, bj = bs[np.repeat(pos, k)[ref]], bs[b[ref]]
    ok = (X0[bi] <= X1[bj]) & (X0[bj] <= X1[bi]) & (Y0[bi] <= Y1[bj]) & (Y0[bj] <= Y1[bi])
    i, j = bi[ok] % m, bj[ok] % m
    if m > len(st.lat):
        i, j = src[i], src[j]
    if stats is not None:
        stats.update(slices=K, bands=nb, copies=m, entries=E, cell_pairs=C, candidates=int(ok.sum()))
    keep = i != j
    return np.minimum(i, j)[keep], np.maximum(i, j)[keep]


def _all_pairs(group: np.ndarray):
    """Every pair of rows (i < j) within each group; ``group`` is sorted."""
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    sizes = np.diff(np.r_[starts, len(group)])
    pos = np.arange(len(group))
    k = np.repeat(starts + sizes, sizes) - pos - 1          # later rows of the same group
    cum = np.cumsum(k)
    return np.repeat(pos, k), np.arange(int(cum[-1]) if len(k) else 0) + np.repeat(pos + 1 - (cum - k), k)


def _evaluate(st: _State, i, j, cfg: ConflictConfig) -> dict:
    """BlueSky CSTATEBASED test on row pairs (vectorised); aircraft i is the ownship."""
    R, H, T = cfg.rpz_nm, cfg.hpz_ft, cfg.lookahead_s
    la_i, la_j = st.latr[i], st.latr[j]
    dlon = st.lonr[j] - st.lonr[i]
    dlon = (dlon + np.pi) % (2 * np.pi) - np.pi
    dx = dlon * np.cos(0.5 * (la_i + la_j)) * RE_NM            # position of j relative to i, NM
    dy = (la_j - la_i) * RE_NM
    du, dv = st.u[i] - st.u[j], st.v[i] - st.v[j]             # velocity of i relative to j, NM/s
    vd = du * dx + dv * dy
    v2 = np.maximum(du * du + dv * dv, VREL2_MIN)
    d = np.sqrt(dx * dx + dy * dy)
    tcpa = vd / v2
    cpa2 = d * d - vd * tcpa
    dth = np.sqrt(np.maximum(R * R - cpa2, 0.0) / v2)
    tin_h, tout_h = tcpa - dth, tcpa + dth
    los_h = d < R
    hor = los_h | ((vd >= 0.0) & (tin_h <= T))
    dalt = st.alt[i] - st.alt[j]
    dvs = st.w[i] - st.w[j]
    los_v = np.abs(dalt) < H
    moving = np.abs(dvs) > DVS_MIN
    neg = -np.where(moving, dvs, 1.0)
    c_hi, c_lo = (dalt + H) / neg, (dalt - H) / neg
    tin_v = np.where(moving, np.maximum(0.0, np.minimum(c_hi, c_lo)), 0.0)
    tout_v = np.where(moving, np.maximum(c_hi, c_lo), np.inf)
    ver = np.where(moving, (tin_v <= T) & (tout_v > 0.0), los_v)
    tin, tout = np.maximum(tin_h, tin_v), np.minimum(tout_h, tout_v)
    conflict = hor & ver & (tin <= T) & (tin < tout) & (tout > 0.0)
    return {"dist_nm": d, "dalt_ft": dalt, "tcpa_s": tcpa, "dcpa_nm": np.sqrt(np.maximum(cpa2, 0.0)),
            "tin_s": tin, "dx": dx, "dy": dy, "conflict": conflict, "los": los_h & los_v}


def _detect_rows(st: _State, cfg: ConflictConfig, n_slices: int | None = None, stats: dict | None = None,
                 method: str = "auto"):
    """Pairs of rows (i < j, same group) in conflict or LoS, sorted, with their PAIR_COLUMNS.

    ``method``: how candidate pairs are found before the exact test: ``kernel`` (the compiled sweep,
    :mod:`pipelines.cd_kernel`; the default where numba is installed), ``numpy`` (the swept-box grid,
    :func:`_candidates`, or every pair for small snapshots; with ``n_slices`` always this one). The exact
    test and so the result are the same whichever finds the candidates."""
    if len(st.lat) < 2:
        i = np.zeros(0, dtype=np.int64)
        return i, i, {c: np.zeros(0, dtype=bool if c in ("conflict", "los") else float) for c in PAIR_COLUMNS}
    g = st.group
    ordered = bool((g[1:] >= g[:-1]).all())
    if method == "auto":
        method = "kernel" if cd_kernel.AVAILABLE and ordered and n_slices is None else "numpy"
    if method == "kernel":                                    # compiled sweep: altitude, then horizontal
        i, j = cd_kernel.candidates(st.latr, st.lonr, st.alt, st.u, st.v, st.w, g, cfg.rpz_nm, cfg.hpz_ft,
                                    cfg.lookahead_s, DVS_MIN, VREL2_MIN, _TOL_FT)
        if stats is not None:
            stats.update(kernel=True, candidates=len(i))
    elif (sizes := np.bincount(g - g[0]) if ordered else None) is not None and n_slices is None \
            and (sizes * (sizes - 1)).sum() <= 2 * SMALL_PAIRS_PER_ROW * len(g):
        i, j = _all_pairs(g)                                  # small snapshots: testing every pair is cheaper
        if stats is not None:
            stats.update(all_pairs=True, candidates=len(i))
    else:
        i, j = _candidates(st, cfg, n_slices, stats)
    ev = _evaluate(st, i, j, cfg)
    sel = np.flatnonzero(ev["conflict"] | ev["los"])
    key = i[sel] * len(st.lat) + j[sel]
    if method == "kernel":                                    # unique pairs: sort them by (i, j)
        sel = sel[np.argsort(key, kind="stable")]
    else:                                                     # sorted by (i, j), duplicates dropped
        sel = sel[np.unique(key, return_index=True)[1]]
    i, j = i[sel], j[sel]
    out = {c: ev[c][sel] for c in ("dist_nm", "dalt_ft", "tcpa_s", "dcpa_nm", "tin_s", "conflict", "los")}
    out["qdr_deg"] = np.degrees(np.arctan2(ev["dx"][sel], ev["dy"][sel])) % 360.0
    if stats is not None:
        stats["pairs"] = len(i)
    return i, j, out


# ----------------------------------------------------------------------------------------- API
def _usable(lat, lon, alt, gs, trk, vs, cfg: ConflictConfig):
    """Rows that can be tested: finite state (vs may be missing: level) at or above cfg.min_alt_ft."""
    finite = np.isfinite(lat) & np.isfinite(lon) & np.isfinite(alt) & np.isfinite(gs) & np.isfinite(trk)
    return finite & (alt >= cfg.min_alt_ft), int((~finite).sum()), int((finite & (alt < cfg.min_alt_ft)).sum())


def _frame(ids1, ids2, cols: dict) -> pd.DataFrame:
    out = {"flight_id_1": ids1, "flight_id_2": ids2}
    out.update({c: cols[c] for c in PAIR_COLUMNS})
    return pd.DataFrame(out, copy=False)


def detect_snapshot(flight_id, lat_deg, lon_deg, alt_ft, gs_kt, trk_deg, vs_fpm,
                    cfg: ConflictConfig = ConflictConfig()) -> pd.DataFrame:
    """Conflicts and losses of separation among aircraft at one time.

    Arrays are aligned, one element per aircraft. Returns one row per unordered pair in conflict or LoS,
    ``flight_id_1 < flight_id_2``, columns ``flight_id_1, flight_id_2`` + :data:`PAIR_COLUMNS`
    (``dalt_ft`` = alt1 - alt2, ``qdr_deg`` bearing from 1 to 2). Aircraft below ``cfg.min_alt_ft`` or with
    a missing position, altitude, ground speed or track are ignored (counted in ``df.attrs``); a missing
    vertical speed counts as level.
    """
    ids = np.asarray(flight_id).astype(str)
    arrs = [np.asarray(a, dtype=float).reshape(-1) for a in (lat_deg, lon_deg, alt_ft, gs_kt, trk_deg, vs_fpm)]
    if any(len(a) != len(ids) for a in arrs):
        raise DataError(f"detect_snapshot: arrays of different lengths {[len(ids)] + [len(a) for a in arrs]}")
    arrs[5] = np.nan_to_num(arrs[5], nan=0.0)
    use, n_missing, n_low = _usable(*arrs, cfg)
    order = np.flatnonzero(use)
    order = order[np.argsort(ids[order], kind="stable")]
    ids = ids[order]
    if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
        raise DataError(f"detect_snapshot: duplicate flight ids {sorted(set(ids[1:][ids[1:] == ids[:-1]]))[:5]}")
    st = _State(*(a[order] for a in arrs), np.zeros(len(order), dtype=np.int64))
    i, j, cols = _detect_rows(st, cfg)
    if 2 * len(i) < len(ids):                          # few pairs: convert only their ids
        pair_ids = pd.array(np.concatenate([ids[i], ids[j]]).astype(object), dtype="str")
        df = _frame(pair_ids[:len(i)], pair_ids[len(i):], cols)
    else:                                              # many: convert every id once, take the pairs' from it
        names = pd.array(ids.astype(object), dtype="str")
        df = _frame(names.take(i), names.take(j), cols)
    df.attrs.update(skipped_missing_state=n_missing, skipped_below_min_alt=n_low)
    return df


def detect(tracks: pd.DataFrame, cfg: ConflictConfig = ConflictConfig(), progress: bool | None = None) -> pd.DataFrame:
    """Run the detection at every distinct time of ``tracks`` (TRACK_SCHEMA); CONFLICT_SCHEMA rows.

    Rows sorted by (time, flight_id_1, flight_id_2); ``episode_id`` is null (see :func:`build_episodes`).
    Many snapshots are processed in one vectorised pass (about CHUNK_ROWS aircraft-snapshots at a time).
    ``df.attrs`` counts the rows skipped (missing state, below cfg.min_alt_ft) and the snapshots.
    """
    for c in ("time", "flight_id", "lat_deg", "lon_deg", "alt_ft", "gs_kt", "trk_deg"):
        if c not in tracks.columns:
            raise DataError(f"detect: tracks lack column {c!r}; have {list(tracks.columns)}")
    col = lambda c: tracks[c].to_numpy(dtype=float, na_value=np.nan) if c in tracks else np.zeros(len(tracks))
    times = pd.DatetimeIndex(tracks["time"])
    if times.tz is None:
        times = times.tz_localize("UTC")
    tns = np.asarray(times.as_unit("ns").asi8, dtype=np.int64)
    codes, flights = pd.factorize(tracks["flight_id"].astype(str), sort=True)
    cat, counts = detect_arrays(tns, codes, *(col(c) for c in ("lat_deg", "lon_deg", "alt_ft", "gs_kt", "trk_deg",
                                                               "vs_fpm")), cfg=cfg, progress=progress)
    if not len(cat["time"]):
        out = empty(CONFLICT_SCHEMA)
    else:
        names = pd.array(np.asarray(flights, dtype=object), dtype="str")
        out = _frame(names.take(cat["c1"]), names.take(cat["c2"]), cat)
        out.insert(0, "time", pd.to_datetime(cat["time"], utc=True))
        out["episode_id"] = None
        out = conform(out, CONFLICT_SCHEMA, "conflicts")
    out.attrs.update(counts)
    return out


def detect_arrays(tns, codes, lat, lon, alt, gs, trk, vs, *, cfg: ConflictConfig = ConflictConfig(),
                  progress: bool | None = False) -> tuple[dict, dict]:
    """The array core of :func:`detect`: one row per (time, c1 < c2 flight codes) pair in conflict or LoS,
    sorted by (time, c1, c2), as a dict of arrays ``time`` (ns), ``c1``, ``c2`` and :data:`PAIR_COLUMNS`;
    and the counts of skipped rows and snapshots."""
    vs = np.nan_to_num(vs, nan=0.0)
    use, n_missing, n_low = _usable(lat, lon, alt, gs, trk, vs, cfg)
    rows = np.flatnonzero(use)
    rows = rows[np.lexsort((codes[rows], tns[rows]))]
    t_sorted, c_sorted = tns[rows], codes[rows]
    same = (t_sorted[1:] == t_sorted[:-1])
    if (same & (c_sorted[1:] == c_sorted[:-1])).any():
        n = int((same & (c_sorted[1:] == c_sorted[:-1])).sum())
        raise DataError(f"detect: {n} duplicate (time, flight_id) rows; resample the tracks onto a grid first")
    starts = np.concatenate([[0], np.flatnonzero(~same) + 1]) if len(rows) else np.zeros(0, dtype=np.int64)
    bounds = np.append(starts, len(rows))
    # chunks of whole snapshots, about CHUNK_ROWS rows each
    cuts = [0]
    for g in range(1, len(starts)):
        if bounds[g] - bounds[cuts[-1]] >= CHUNK_ROWS:
            cuts.append(g)
    cuts.append(len(starts))
    parts = []
    chunks = list(zip(cuts[:-1], cuts[1:])) if len(rows) else []
    for g0, g1 in track(chunks, "conflict detection", show=progress):
        r = rows[bounds[g0]:bounds[g1]]
        group = np.repeat(np.arange(g1 - g0), np.diff(bounds[g0:g1 + 1]))
        st = _State(lat[r], lon[r], alt[r], gs[r], trk[r], vs[r], group)
        i, j, cols = _detect_rows(st, cfg)
        if len(i):
            cols.update(time=tns[r[i]], c1=c_sorted[bounds[g0] + i], c2=c_sorted[bounds[g0] + j])
            parts.append(cols)
    if parts:
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    else:
        e = np.zeros(0, dtype=np.int64)
        cat = {"time": e, "c1": e, "c2": e, **_detect_rows(_State(*([np.zeros(0)] * 6), e), cfg)[2]}
    counts = dict(skipped_missing_state=n_missing, skipped_below_min_alt=n_low, snapshots=len(starts),
                  aircraft_snapshots=len(rows))
    return cat, counts


def run(tracks_dir, out_dir, cfg: ConflictConfig = ConflictConfig(), progress: bool | None = None,
        enroute: EnRouteConfig = EnRouteConfig()) -> dict:
    """Canonical tracks -> ``out_dir/conflicts/`` and ``out_dir/episodes/`` (parquet, by day); a summary.

    ``enroute`` (default: keep everything) leaves out the episodes whose aircraft are not both at or above its
    floor and inside its airspace at first detection, with their conflict records (``pipelines.enroute``);
    the summary and the completion record count them by reason."""
    t0 = _time.perf_counter()
    out_dir = Path(out_dir)
    require_complete(tracks_dir, "ingest")
    flt = EnRouteFilter(enroute)
    staged = StagedRun(out_dir, "conflicts", ["conflicts", "episodes"])
    try:
        tracks = read_table(tracks_dir, TRACK_SCHEMA)
        conflicts = detect(tracks, cfg, progress)
        t_detect = _time.perf_counter() - t0
        counts = dict(conflicts.attrs)
        episodes, conflicts = build_episodes(conflicts, tracks, cfg)
        n_steps = len(conflicts)
        episodes, left = filter_episodes(episodes, tracks, flt)
        if left["episodes_left_out"]:
            conflicts = conflicts[conflicts["episode_id"].isin(episodes["episode_id"])].reset_index(drop=True)
        left = {"enroute": flt.describe(), **left, "conflict_steps_left_out": n_steps - len(conflicts)}
        for name, df, schema in (("conflicts", conflicts, CONFLICT_SCHEMA), ("episodes", episodes, EPISODE_SCHEMA)):
            if name == "episodes":
                df = df.assign(time=df["first_detection"])
            write_partitioned(df, schema, staged.path(name), what=name)
            checkpoint("conflicts")
        staged.commit({"tracks": str(tracks_dir), "track_points": int(len(tracks)),
                       "conflict_steps": int(len(conflicts)), "episodes": int(len(episodes)), **left})
    except BaseException:
        staged.abort()
        raise
    seconds = _time.perf_counter() - t0
    snapshots = counts.get("snapshots", 0)
    return {
        "grid_times": int(snapshots),
        "aircraft_snapshots": int(counts.get("aircraft_snapshots", 0)),
        "skipped_missing_state": int(counts.get("skipped_missing_state", 0)),
        "skipped_below_min_alt": int(counts.get("skipped_below_min_alt", 0)),
        "conflict_steps": int(len(conflicts)),
        "los_steps": int(conflicts["los"].sum()) if len(conflicts) else 0,
        "episodes": int(len(episodes)),
        "los_episodes": int(episodes["los"].sum()) if len(episodes) else 0,
        "seconds": round(seconds, 3),
        "detect_seconds": round(t_detect, 3),
        "snapshots_per_s": round(snapshots / t_detect, 1) if t_detect > 0 else float("nan"),
        **left,
    }
