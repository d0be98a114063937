"""Infer controller-like manoeuvres (heading, level, speed, direct-to) from resampled tracks.

Per flight (a loop over flights, numpy over each flight's arrays) and per signal (unwrapped track,
altitude, ground speed):

1. rate: centred least-squares slope over a short window (10 s track, 30 s altitude and speed),
   which averages out radar noise;
2. runs: samples whose |rate| exceeds the threshold, grouped in runs of one sign; runs of one sign
   closer than ``sustain_s`` are merged, and runs whose quick net change (median of 3 samples after
   minus 3 before) is under half the minimum change are noise and treated as steady flight;
3. acceptance: steady flight before the run (``level_hold_s`` for altitude, ``sustain_s`` otherwise),
   steady flight after it for ``sustain_s``, and |median after - median before| >= the minimum change;
4. start: the last sample still within ``tol`` of the level before (tol = max(20 % of the minimum
   change, 3 robust standard deviations of the steady window before)); end: the first sample within
   tol of the new level.

Confidence = c_mag * c_mono * c_quiet, each in 0..1:
  c_mag   = min(1, |change| / (2 * minimum change))     0.5 at the threshold, 1 from twice it
  c_mono  = min(1, |change| / total variation start..end)  1 for a clean monotonic ramp
  c_quiet = 1 / (1 + (sd_before + sd_after) / |change|)  robust sds (1.4826 MAD) of the steady windows
and for direct-to / resume additionally (1 - 0.5 * angular error / direct_to_tol_deg).

With flight plans, a turn is classified against the plan's waypoints (as seen from the turn start):
a turn within ROUTE_TURN_NM of a waypoint onto the next leg is the route itself and is dropped
(counted); a new track pointing at a waypoint beyond the next one is ``direct_to``; at the next one
(after a vector) ``resume``. Speed changes overlapping an accepted turn or level change are dropped
(counted): ground speed changes with wind there. Counts of rejected candidates are in
``result.attrs["rejected"]``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from atc_il.config import ActionConfig
from atc_il.geometry import bearing_deg, haversine_nm, to_local_nm, wrap180
from atc_il.progress import track as progress_track
from atc_il.schemas import ACTION_SCHEMA, ACTION_UNITS, action_id, conform, empty

HEADING_RATE_WINDOW_S = 10.0
LEVEL_RATE_WINDOW_S = 30.0
SPEED_RATE_WINDOW_S = 30.0
SPEED_RATE_MIN_KTPS = 0.2      # ground speed change rate that starts a speed change (12 kt/min)
ROUTE_TURN_NM = 3.0            # turn anticipation distance at a plan waypoint
GAP_FACTOR = 1.5               # a time step longer than this x the grid step splits the flight
LEVEL_ROUND_FT = 100.0         # levels are reported to the nearest 100 ft
QUICK_N = 3                    # samples each side for the quick noise test
MIN_AIRBORNE_GS_KT = 50.0      # slower samples (taxi, take-off roll) split the flight and are not searched


@dataclass(frozen=True)
class _Spec:
    kind: str
    rate_thr: float      # per second
    window_s: float
    min_change: float
    before_s: float
    after_s: float


@dataclass
class _Manoeuvre:
    kind: str
    start: int
    end: int
    before: float
    after: float
    conf: float


def _specs(cfg: ActionConfig) -> list[_Spec]:
    return [
        _Spec("heading", cfg.heading_rate_min_dps, HEADING_RATE_WINDOW_S, cfg.heading_min_deg, cfg.sustain_s, cfg.sustain_s),
        _Spec("altitude", cfg.vs_level_fpm / 60.0, LEVEL_RATE_WINDOW_S, cfg.level_min_ft, cfg.level_hold_s, cfg.sustain_s),
        _Spec("speed", SPEED_RATE_MIN_KTPS, SPEED_RATE_WINDOW_S, cfg.speed_min_kt, cfg.sustain_s, cfg.sustain_s),
    ]


def slope(x: np.ndarray, dt: float, window_s: float) -> np.ndarray:
    """Centred least-squares slope (units per second) over ``window_s``; edges padded with edge values."""
    h = max(1, int(round(window_s / dt / 2.0)))
    k = np.arange(-h, h + 1) * dt
    w = k / np.sum(k * k)
    return np.convolve(np.pad(x, h, mode="edge"), w[::-1], mode="valid")


def _runs(sign: np.ndarray):
    idx = np.flatnonzero(np.diff(sign)) + 1
    st = np.r_[0, idx]
    en = np.r_[idx, len(sign)] - 1
    s = sign[st]
    keep = s != 0
    return st[keep], en[keep], s[keep]


def _merge(st, en, s, gap_n: int):
    if len(st) < 2:
        return st, en, s
    join = (s[1:] == s[:-1]) & (st[1:] - en[:-1] - 1 <= gap_n)
    first = np.flatnonzero(np.r_[True, ~join])
    last = np.r_[first[1:] - 1, len(st) - 1]
    return st[first], en[last], s[first]


def _rsd(v: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(v - np.median(v)))) if len(v) else 0.0


def detect(x: np.ndarray, dt: float, spec: _Spec, rejected: Counter) -> list[_Manoeuvre]:
    """Sustained changes of ``x`` (regular grid, step ``dt`` s) according to ``spec``."""
    n = len(x)
    rate = slope(x, dt, spec.window_s)
    sign = np.where(rate >= spec.rate_thr, 1, np.where(rate <= -spec.rate_thr, -1, 0))
    merge_n = int(np.ceil(spec.after_s / dt))
    st, en, s = _merge(*_runs(sign), merge_n)
    if len(st) == 0:
        return []
    # quick noise test: runs with a small net change are steady flight
    quick = np.array([np.median(x[b + 1:b + 1 + QUICK_N]) - np.median(x[max(0, a - QUICK_N):a])
                      if 0 < a and b + 1 < n else np.inf for a, b in zip(st, en)])
    keep = np.abs(quick) >= 0.5 * spec.min_change
    st, en, s = _merge(st[keep], en[keep], s[keep], merge_n)
    nb = int(round(spec.before_s / dt)) + 1
    na = int(round(spec.after_s / dt)) + 1
    nb_use, na_use = max(nb, 4), max(na, 4)
    base_tol = 0.2 * spec.min_change
    out: list[_Manoeuvre] = []
    for i, (a, b, sg) in enumerate(zip(st, en, s)):
        lo = en[i - 1] + 1 if i else 0
        hi = st[i + 1] if i + 1 < len(st) else n
        before = x[max(lo, a - nb_use):a]
        after = x[b + 1:min(hi, b + 1 + na_use)]
        if len(before) < nb:
            rejected[f"{spec.kind}_no_steady_before"] += 1
            continue
        if len(after) < na:
            rejected[f"{spec.kind}_not_sustained"] += 1
            continue
        l0, l1 = float(np.median(before)), float(np.median(after))
        change = l1 - l0
        if abs(change) < spec.min_change or np.sign(change) != sg:
            rejected[f"{spec.kind}_below_min"] += 1
            continue
        sd0, sd1 = _rsd(before), _rsd(after)
        r = np.arange(a - 1, b + 1)
        ok = np.abs(x[r] - l0) <= max(base_tol, 3 * sd0)
        start = int(r[ok][-1]) if ok.any() else a - 1
        r2 = np.arange(start, b + 2)
        ok2 = np.abs(x[r2] - l1) <= max(base_tol, 3 * sd1)
        end = int(r2[ok2][0]) if ok2.any() else b + 1
        tv = float(np.sum(np.abs(np.diff(x[start:end + 1]))))
        c_mag = min(1.0, abs(change) / (2 * spec.min_change))
        c_mono = min(1.0, abs(change) / tv) if tv > 0 else 1.0
        c_quiet = 1.0 / (1.0 + (sd0 + sd1) / abs(change))
        out.append(_Manoeuvre(spec.kind, start, end, l0, l1, c_mag * c_mono * c_quiet))
    return out


# ---------------------------------------------------------------- flight plans
def flight_arrays(tracks: pd.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Tracks sorted by flight and time as arrays: times (ns), the kinematic columns (NaN where absent), flight
    ids, and the bounds of each flight's rows (flight i is rows bounds[i]:bounds[i + 1])."""
    df = tracks.sort_values(["flight_id", "time"], kind="stable")
    t_all = pd.DatetimeIndex(df["time"]).as_unit("ns").asi8
    cols = {c: (df[c].to_numpy(float, na_value=np.nan) if c in df else np.full(len(df), np.nan))
            for c in ("lat_deg", "lon_deg", "alt_ft", "trk_deg", "gs_kt")}
    fids = df["flight_id"].to_numpy(object)
    bounds = np.r_[0, np.flatnonzero(fids[1:] != fids[:-1]) + 1, len(df)]
    return t_all, cols, fids, bounds


def _plans_by_flight(flight_plans: pd.DataFrame | None) -> dict:
    if flight_plans is None or flight_plans.empty:
        return {}
    fp = flight_plans.sort_values(["flight_id", "seq"])
    out = {}
    for fid, g in fp.groupby("flight_id", sort=False):
        names = g["waypoint"].astype(object).where(g["waypoint"].notna(), "#" + g["seq"].astype(str))
        out[fid] = (g["lat_deg"].to_numpy(float), g["lon_deg"].to_numpy(float), names.to_numpy(object))
    return out


def classify_turn(plan, lat_s, lon_s, lat_e, lon_e, new_trk, tol) -> tuple[str, str | None, float]:
    """('route' | 'direct_to' | 'resume' | 'heading', waypoint, angular error) of a turn against a plan.

    Positions: turn start (s) and end (e); ``new_trk`` the steady track after the turn.
    """
    wlat, wlon, names = plan
    m = len(wlat)
    if m < 2:
        return "heading", None, 0.0
    x, y = to_local_nm(wlat, wlon, lat_s, lon_s)          # aircraft at the origin
    dx, dy = np.diff(x), np.diff(y)
    l2 = np.maximum(dx * dx + dy * dy, 1e-12)
    t = -(x[:-1] * dx + y[:-1] * dy) / l2
    tc = np.clip(t, 0.0, 1.0)
    k = int(np.argmin(np.hypot(x[:-1] + tc * dx, y[:-1] + tc * dy)))
    nxt = 0 if (k == 0 and t[0] < 0) else (k + 2 if t[k] > 1 else k + 1)
    err = np.abs(wrap180(new_trk - bearing_deg(lat_e, lon_e, wlat, wlon)))
    leg_brg = bearing_deg(wlat[:-1], wlon[:-1], wlat[1:], wlon[1:])
    dist_wp = np.hypot(x, y)
    for j in (nxt - 1, nxt):
        if 0 <= j < m - 1 and dist_wp[j] <= ROUTE_TURN_NM and (
                err[j + 1] <= tol or abs(wrap180(new_trk - leg_brg[j])) <= tol):
            return "route", names[j + 1], float(err[j + 1])
    cand = np.arange(nxt + 1, m)
    if cand.size:
        j = int(cand[np.argmin(err[cand])])
        if err[j] <= tol:
            return "direct_to", names[j], float(err[j])
    if 0 <= nxt < m and err[nxt] <= tol:
        return "resume", names[nxt], float(err[nxt])
    return "heading", None, 0.0


# ---------------------------------------------------------------- per flight
def _pieces(t_ns: np.ndarray, gs: np.ndarray) -> list[tuple[int, int, float]]:
    """Contiguous regular-grid airborne pieces (start, stop, step_s) of a sorted time array."""
    if len(t_ns) < 3:
        return []
    d = np.diff(t_ns) / 1e9
    step = float(np.median(d[d > 0])) if np.any(d > 0) else 0.0
    if step <= 0:
        return []
    slow = gs < MIN_AIRBORNE_GS_KT              # NaN compares False: unknown speed counts as airborne
    brk = np.flatnonzero((d > GAP_FACTOR * step) | (d <= 0) | slow[1:] | slow[:-1]) + 1
    bounds = np.r_[0, brk, len(t_ns)]
    return [(int(a), int(b), step) for a, b in zip(bounds[:-1], bounds[1:])
            if b - a >= 3 and not slow[a:b].any()]


def _interp_nan(x: np.ndarray) -> np.ndarray:
    bad = np.isnan(x)
    if not bad.any() or bad.all():
        return x
    i = np.arange(len(x))
    return np.where(bad, np.interp(i, i[~bad], x[~bad]), x)


def _fill_kinematics(lat, lon, trk, gs, dt):
    """Fill missing track / ground speed from positions."""
    if np.isnan(trk).any() or np.isnan(gs).any():
        b = bearing_deg(lat[:-1], lon[:-1], lat[1:], lon[1:])
        v = haversine_nm(lat[:-1], lon[:-1], lat[1:], lon[1:]) / dt * 3600.0
        trk = np.where(np.isnan(trk), np.r_[b, b[-1]], trk)
        gs = np.where(np.isnan(gs), np.r_[v, v[-1]], gs)
    return trk, gs


def _overlaps(m: _Manoeuvre, others: list[_Manoeuvre], pad: int) -> bool:
    return any(m.start - pad <= o.end and o.start <= m.end + pad for o in others)


def _infer_piece(fid, t_ns, lat, lon, alt, trk, gs, dt, cfg, plan, rejected) -> list[dict]:
    trk, gs = _fill_kinematics(lat, lon, trk, gs, dt)
    ok = ~np.isnan(trk)
    unwrapped = np.full(len(trk), np.nan)
    unwrapped[ok] = np.unwrap(trk[ok], period=360.0)
    trk, alt, gs = _interp_nan(unwrapped), _interp_nan(alt), _interp_nan(gs)
    heading_spec, level_spec, speed_spec = _specs(cfg)
    turns = detect(trk, dt, heading_spec, rejected)
    levels = detect(alt, dt, level_spec, rejected)
    speeds = detect(gs, dt, speed_spec, rejected)
    pad = int(round(SPEED_RATE_WINDOW_S / dt / 2))
    kept_speeds = []
    for m in speeds:
        if _overlaps(m, turns + levels, pad):
            rejected["speed_during_turn_or_level_change"] += 1
        else:
            kept_speeds.append(m)
    rows = []
    for m in turns + levels + kept_speeds:
        kind, waypoint, value, conf = m.kind, None, m.after - m.before, m.conf
        target = m.after
        if kind == "heading":
            target = m.after % 360.0
            if plan is not None:
                kind, waypoint, err = classify_turn(plan, lat[m.start], lon[m.start], lat[m.end], lon[m.end],
                                                    target, cfg.direct_to_tol_deg)
                if kind == "route":
                    rejected["route_turns"] += 1
                    continue
                conf *= 1.0 - 0.5 * err / cfg.direct_to_tol_deg
                if kind == "resume":
                    value = 0.0
        elif kind == "altitude":
            target = round(m.after / LEVEL_ROUND_FT) * LEVEL_ROUND_FT
            value = target - round(m.before / LEVEL_ROUND_FT) * LEVEL_ROUND_FT
        time = pd.Timestamp(int(t_ns[m.start]), unit="ns", tz="UTC")
        rows.append({"action_id": action_id(fid, time, kind), "time": time, "flight_id": fid,
                     "action_type": kind, "value": float(value), "unit": ACTION_UNITS[kind],
                     "target_value": float(target), "waypoint": waypoint, "source": "track_inferred",
                     "confidence": float(np.clip(conf, 0.0, 1.0))})
    return rows


def infer_actions(tracks: pd.DataFrame, cfg: ActionConfig = ActionConfig(),
                  flight_plans: pd.DataFrame | None = None, *, progress: bool | None = None) -> pd.DataFrame:
    """Actions (ACTION_SCHEMA, source 'track_inferred') inferred from resampled canonical tracks."""
    rejected: Counter = Counter()
    result = empty(ACTION_SCHEMA)
    if tracks is None or tracks.empty:
        result.attrs["rejected"] = {}
        return result
    plans = _plans_by_flight(flight_plans)
    t_all, cols, fids, bounds = flight_arrays(tracks)
    rows: list[dict] = []
    for a, b in progress_track(list(zip(bounds[:-1], bounds[1:])), "inferring actions", show=progress):
        fid = fids[a]
        for p0, p1, dt in _pieces(t_all[a:b], cols["gs_kt"][a:b]):
            sl = slice(a + p0, a + p1)
            rows += _infer_piece(fid, t_all[sl], cols["lat_deg"][sl], cols["lon_deg"][sl], cols["alt_ft"][sl],
                                 cols["trk_deg"][sl], cols["gs_kt"][sl], dt, cfg, plans.get(fid), rejected)
    if rows:
        result = conform(pd.DataFrame(rows).sort_values(["time", "flight_id"], ignore_index=True),
                         ACTION_SCHEMA, "inferred actions")
    result.attrs["rejected"] = dict(rejected)
    return result
