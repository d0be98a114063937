"""Compiled candidate search for conflict detection (numba): a sweep in altitude, then a coarse test.

:func:`candidates` returns the row pairs (i < j, same snapshot) that *may* be in conflict or in loss of
separation under BlueSky's state-based test (:func:`pipelines.conflicts._evaluate`); the exact test then
runs on these few pairs only, in numpy, so the decisions and every pair column are those of the reference
(``tests/test_conflicts.py`` checks the kernel against brute force and against the numpy pre-filter).

1. Sweep (:func:`_sweep`, float32): per snapshot, rows sorted by the low end of the altitude interval they
   sweep over the look-ahead (padded by hpz/2, BlueSky's 1e-6 m/s "level" threshold and a margin); each
   row is paired with the following rows whose interval starts within its own (a necessary condition for a
   vertical conflict or LoS), and each such pair gets the horizontal test (``d < rpz``, or converging with
   ``cpa < rpz`` and ``tcpa - dth <= T``, multiplied out by |dv|^2: no division, no root) and the vertical one
   (the altitude difference within hpz at some time of the look-ahead) in a branch-free loop the compiler
   vectorises. Coordinates are taken relative to the snapshots' middle and the margins
   are wide (rpz * 1.05 + 0.05 NM, T * 1.01 + 1 s, hpz * 1.01 + 1 ft), far above float32 rounding for
   any pair that can conflict (closer than rpz + |dv| T: checked per call, else the sweep runs in float64
   with relative margins of 1e-7).
2. Refinement (:func:`_refine`, float64, scalar, on the sweep's few thousand pairs): the reference's whole
   test (horizontal and vertical intrusion windows intersecting within the look-ahead, or LoS now) with
   relative margins of 1e-7 and the level threshold taken both ways near it. What remains is the hits and
   the pairs within rounding of a threshold.

Cost: O(n log n) plus the pairs overlapping in altitude. At 1000 en-route aircraft in a 230 x 140 NM box
and a 600 s look-ahead about half the pairs overlap in altitude (climbers sweep thousands of feet); sweeps
in time slices and y strips were tried and did not pay at this size (bench/RESULTS.md).

``AVAILABLE`` is False when numba cannot be imported; callers then use the numpy pre-filter.
"""

from __future__ import annotations

import numpy as np

from atc_il.units import EARTH_RADIUS_M, NM_M

try:
    import numba
    AVAILABLE = True
except ImportError:          # pragma: no cover - numba is a dependency; kept for a broken install
    numba = None
    AVAILABLE = False

INFLATE = 1e-7               # relative inflation of rpz and the look-ahead in the horizontal pre-test


def _sweep(starts, z_lo, z_hi, y, ch, sh, lonr, u, v, alt, w, ri, t_max, hi_z, vrel2_min, tol_vd, pi, two_pi,
           wrap):
    """Position pairs (a < b) within each snapshot segment [starts[g], starts[g+1]) (arrays in sweep order:
    by snapshot, then z_lo) that overlap in altitude and pass the coarse test. The state arrays and the
    constants are float32 (see :func:`candidates` for the margins that make this safe); the test over one
    row's partners is branch-free (a loop the compiler vectorises); the hits are collected after it."""
    n = len(z_lo)
    cap = max(1024, 4 * n)
    out_i = np.empty(cap, dtype=np.int64)
    out_j = np.empty(cap, dtype=np.int64)
    keep = np.empty(n, dtype=np.bool_)
    n_out = 0
    ri2 = ri * ri
    zero = ri - ri
    for g in range(len(starts) - 1):
        s0, s1 = starts[g], starts[g + 1]
        for i in range(s0, s1):
            # partners: the later rows of the segment whose swept altitude interval starts within row i's
            lo, hi = i + 1, s1
            zh = z_hi[i]
            while lo < hi:                                    # binary search: first row with z_lo > zh
                mid = (lo + hi) // 2
                if z_lo[mid] > zh:
                    hi = mid
                else:
                    lo = mid + 1
            end = lo
            yi, chi, shi, li, ui, vi, zi, wi = y[i], ch[i], sh[i], lonr[i], u[i], v[i], alt[i], w[i]
            for j in range(i + 1, end):
                # position of j relative to i (NM), velocity of i relative to j (NM/s)
                dlon = lonr[j] - li
                if wrap:                                          # loop-invariant: traffic spanning > 180 deg
                    dlon = dlon - two_pi * (dlon > pi) + two_pi * (dlon < -pi)
                dx = dlon * (chi * ch[j] - shi * sh[j])           # lon already in NM at the equator
                dy = y[j] - yi
                du = ui - u[j]
                dv = vi - v[j]
                d2 = dx * dx + dy * dy
                vd = du * dx + dv * dy
                v2 = max(du * du + dv * dv, vrel2_min)
                # the reference's cpa2 < rpz^2 and tcpa - dth <= T, multiplied out by v2 (no division, no root)
                room = (ri2 - d2) * v2 + vd * vd                  # (rpz^2 - cpa2) * v2
                late = vd - t_max * v2                            # (tcpa - T) * v2
                converging = vd >= -tol_vd * (d2 + v2)            # >= |rounding of vd| (|vd| <= (d2 + v2) / 2)
                # vertical: the altitude difference must come within hpz during the look-ahead
                dz = zi - alt[j]
                ez = dz + (wi - w[j]) * t_max
                vert = ((dz <= hi_z) | (ez <= hi_z)) & ((dz >= -hi_z) | (ez >= -hi_z))
                keep[j] = vert & ((d2 < ri2) | (converging & (room > zero) & ((late <= zero) | (late * late <= room))))
            if n_out + (end - i) > cap:
                cap = 2 * (n_out + (end - i))
                ni = np.empty(cap, dtype=np.int64)
                nj = np.empty(cap, dtype=np.int64)
                ni[:n_out] = out_i[:n_out]
                nj[:n_out] = out_j[:n_out]
                out_i, out_j = ni, nj
            for j in range(i + 1, end):
                if keep[j]:
                    out_i[n_out] = i
                    out_j[n_out] = j
                    n_out += 1
    return out_i[:n_out], out_j[:n_out]


def _refine(ci, cj, y, ch, sh, lonr, alt, u, v, w, r_nm, h_ft, t_s, re_nm, vrel2_min, dvs_min):
    """The pairs of (ci, cj) that pass the reference's whole test (horizontal and vertical intrusion windows
    intersecting within the look-ahead, or LoS now) with rpz, hpz and the look-ahead inflated and BlueSky's
    "level" threshold taken both ways near it: a superset of the reference's hits, a few times smaller than
    the sweep's output."""
    ri = r_nm * (1.0 + INFLATE) + 1e-9
    ri2 = ri * ri
    t_max = t_s * (1.0 + INFLATE) + 1e-6
    hi_z = h_ft * (1.0 + INFLATE) + 1e-6
    eps_t = 1e-6
    two_pi = 2.0 * np.pi
    keep = np.zeros(len(ci), dtype=np.bool_)
    for k in range(len(ci)):
        i, j = ci[k], cj[k]
        dlon = lonr[j] - lonr[i]
        if dlon > np.pi:
            dlon -= two_pi
        elif dlon < -np.pi:
            dlon += two_pi
        dx = dlon * (ch[i] * ch[j] - sh[i] * sh[j]) * re_nm
        dy = y[j] - y[i]
        du = u[i] - u[j]
        dv = v[i] - v[j]
        d2 = dx * dx + dy * dy
        vd = du * dx + dv * dy
        v2 = max(du * du + dv * dv, vrel2_min)
        tcpa = vd / v2
        cpa2 = d2 - vd * tcpa
        dth = np.sqrt(max(ri2 - cpa2, 0.0) / v2)
        tin_h, tout_h = tcpa - dth, tcpa + dth
        los_h = d2 < ri2
        hor = los_h or (vd >= -1e-9 * (abs(du * dx) + abs(dv * dy)) - 1e-300 and tin_h <= t_max)
        dalt = alt[i] - alt[j]
        los_v = abs(dalt) < hi_z
        if los_h and los_v:
            keep[k] = True
            continue
        if not hor:
            continue
        dvs = w[i] - w[j]
        ok = False
        if abs(dvs) <= dvs_min * (1.0 + 1e-6) and los_v:          # treated as level: [0, inf)
            ok = tin_h <= t_max and tout_h > -eps_t and max(tin_h, 0.0) < tout_h + eps_t
        if not ok and abs(dvs) > dvs_min * (1.0 - 1e-6):         # moving vertically
            a, b = (dalt + hi_z) / -dvs, (dalt - hi_z) / -dvs
            tin_v, tout_v = max(0.0, min(a, b)), max(a, b)
            tin, tout = max(tin_h, tin_v), min(tout_h, tout_v)
            ok = tin_v <= t_max and tout_v > -eps_t and tin <= t_max and tin < tout + eps_t and tout > -eps_t
        keep[k] = ok
    return keep


if AVAILABLE:
    _sweep_jit = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=True)(_sweep)
    _refine_jit = numba.njit(cache=True, nogil=True, error_model="numpy")(_refine)


def candidates(latr, lonr, alt, u, v, w, group, r_nm: float, h_ft: float, t_s: float, dvs_min: float,
               vrel2_min: float, tol_ft: float = 1e-3):
    """Candidate row pairs (i < j, same ``group``; ``group`` sorted) for the exact test; see the module doc.
    Units: radians, ft, NM/s, ft/s (those of ``pipelines.conflicts._State``)."""
    n = len(latr)
    if n < 2:
        e = np.zeros(0, dtype=np.int64)
        return e, e
    consts = (float(r_nm), float(h_ft), float(t_s), _RE_NM, float(vrel2_min))
    # float32 sweep: coordinates relative to the snapshots' middle, lon scaled to NM at the equator; margins
    # (5 % + 0.05 NM on rpz, 1 % + 1 s on the look-ahead, 1 % + 1 ft on hpz) far above float32 rounding for
    # every pair that can be in conflict (closer than rpz + |dv| T); checked per call, else float64
    gs_max = float(np.hypot(u, v).max())
    reach = r_nm + 2.0 * gs_max * t_s
    ri = 1.05 * r_nm + 0.05
    f32 = reach * reach * 1e-5 < (ri * ri - r_nm * r_nm)
    ft = np.float32 if f32 else np.float64
    if not f32:
        ri = r_nm * (1.0 + INFLATE) + 1e-9
    t_max = 1.01 * t_s + 1.0 if f32 else t_s * (1.0 + INFLATE) + 1e-6
    hi_z = 1.01 * h_ft + 1.0 if f32 else h_ft * (1.0 + INFLATE) + 1e-6
    pad = (hi_z if f32 else h_ft) / 2.0 + dvs_min * t_s + tol_ft
    z_lo = np.minimum(alt, alt + w * t_s)
    if group[0] == group[-1]:                          # one snapshot (the per-call API): a plain sort
        order = np.argsort(z_lo, kind="stable")
        starts = np.array([0, n], dtype=np.int64)
    else:                                              # by snapshot, then by the swept interval's low end
        order = np.lexsort((z_lo, group))
        g = group[order]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True]).astype(np.int64)
    rows = np.empty((8, n))                            # float64, for the refinement
    coarse = np.empty((10, n), dtype=ft)               # for the sweep
    prepare = _prepare_jit if AVAILABLE else _prepare
    wrap = prepare(order, latr, lonr, alt, u, v, w, float(t_s), float(pad), _RE_NM, rows, coarse)
    c = [ft(x) for x in (ri, t_max, hi_z, vrel2_min, 1e-4 if f32 else 1e-9, np.pi * _RE_NM, 2 * np.pi * _RE_NM)]
    f, refine = (_sweep_jit, _refine_jit) if AVAILABLE else (_sweep, _refine)
    a, b = f(starts, *coarse, *c, wrap)
    keep = refine(a, b, *rows, *consts, float(dvs_min))
    i, j = order[a[keep]], order[b[keep]]
    return np.minimum(i, j), np.maximum(i, j)


def _prepare(order, latr, lonr, alt, u, v, w, t_s, pad, re_nm, rows, coarse):
    """Fill ``rows`` (float64: y NM, cos and sin of half the latitude, lon rad, alt, u, v, w) and ``coarse``
    (the sweep's dtype: altitude interval low and high ends, y, the two half-angle terms, lon in NM at the
    equator, all relative to the snapshots' middle, then u, v, altitude relative to the middle, w) in ``order``; returns whether longitudes must
    be wrapped (traffic spanning more than 180 degrees)."""
    n = len(order)
    lat_lo, lat_hi, lon_lo, lon_hi, z_lo, z_hi = np.inf, -np.inf, np.inf, -np.inf, np.inf, -np.inf
    for r in range(n):
        lat_lo, lat_hi = min(lat_lo, latr[r]), max(lat_hi, latr[r])
        lon_lo, lon_hi = min(lon_lo, lonr[r]), max(lon_hi, lonr[r])
        z_lo, z_hi = min(z_lo, alt[r]), max(z_hi, alt[r])
    lat_mid, lon_mid, z_mid = 0.5 * (lat_lo + lat_hi), 0.5 * (lon_lo + lon_hi), 0.5 * (z_lo + z_hi)
    wrap = lon_hi - lon_lo > np.pi
    for k in range(n):
        r = order[k]
        half = 0.5 * latr[r]
        rows[0, k] = latr[r] * re_nm
        rows[1, k] = np.cos(half)
        rows[2, k] = np.sin(half)
        rows[3, k] = lonr[r]
        rows[4, k] = alt[r]
        rows[5, k] = u[r]
        rows[6, k] = v[r]
        rows[7, k] = w[r]
        z_end = alt[r] + w[r] * t_s
        coarse[0, k] = min(alt[r], z_end) - pad - z_mid
        coarse[1, k] = max(alt[r], z_end) + pad - z_mid
        coarse[2, k] = (latr[r] - lat_mid) * re_nm
        coarse[3, k] = rows[1, k]
        coarse[4, k] = rows[2, k]
        dl = lonr[r] - lon_mid
        if wrap:
            dl = (dl + np.pi) % (2 * np.pi) - np.pi
        coarse[5, k] = dl * re_nm
        coarse[6, k] = u[r]
        coarse[7, k] = v[r]
        coarse[8, k] = alt[r] - z_mid
        coarse[9, k] = w[r]
    return wrap


if AVAILABLE:
    _prepare_jit = numba.njit(cache=True, nogil=True, error_model="numpy")(_prepare)

_RE_NM = EARTH_RADIUS_M / NM_M
