"""The learned manoeuvre detector: change candidates on every signal, scored by gradient-boosted trees.

``atc-il actions --detector learned`` (:func:`detect_actions`). Per flight piece on the regular grid (as in
``pipelines.manoeuvres``; missing ground speed and track derived from positions):

1. candidates: at every grid time ``t`` a change score per signal, at a short and a long scale ``W`` --
   altitude: vertical rate over ``[t, t+W]`` minus that over ``[t-W, t]`` (least squares); speed (calibrated
   airspeed from ground speed and altitude, ISA, no wind: an aircraft climbing at constant CAS gains ~9 kt of
   ground speed per 1000 ft) and (unwrapped) track: mean over ``[t, t+W]`` minus mean over ``[t-W, t]``; near
   the ends of a piece over the longest symmetric windows that fit (at least ``MIN_EDGE_S``). Candidates are
   the local maxima of the score's positive and of its negative part over a low threshold (the largest within
   the scale's reach: the flanks of a long window's score around one change are not candidates), then one per
   ``NMS_S`` and sign. Changes of opposite sign do not suppress each other: a vector and the turn back onto
   the route a minute later, a short climb's start and its level-off, are two. No level segment is needed
   before a level change: the start of a climb, a level-off, a reversal or a change of rate are all slope
   changes (a level-off right after the start of its own climb is merged into it).
2. features (:data:`FEATURES`): the scores of every signal at both scales at the candidate, the levels
   before and after, the noise of each signal (robust sd of its second differences between plots) and each
   step against it, the spacing of the plots behind the grid, the previous and next candidates of the signal;
   and against the flight plan (:data:`ROUTE_FEATURES`): the straight lines flown before and after the change
   (mean track over ``LINE_WINDOW_S``, clear of the turn, and no further than halfway to the neighbouring
   changes), as great circles, against every downstream waypoint -- how close each passes to the waypoint it
   aims at, that waypoint's rank (a direct-to skips the next one), whether the aim changed, the plan's own turn
   at a waypoint (both lines through it, the after line along the next leg), the cross-track error to the
   route, and the arrival at the aimed waypoint (closest approach, the share of the way flown on the line, the
   next leg followed after it); the altitude after against the planned level and against 1000 ft levels.
3. a classifier per signal (scikit-learn ``HistGradientBoostingClassifier``): altitude {none, altitude},
   speed {none, speed}, track {none, heading, direct_to}, its probability of "not none" calibrated by isotonic
   regression on held-out flights; a candidate whose calibrated ``confidence`` is at least the threshold
   becomes an action of the most probable type. The threshold is the model's own per signal (the one that
   maximised F1 on the held-out flights) unless one is given. Direct-to names the downstream waypoint the new track
   points at best. A candidate of a flight without a flight plan is scored by the model's plan-less
   classifier of its signal (trained with the plan withheld, the plan's own turns as negatives; no direct-to).

Onset: an altitude candidate is placed at the slope change, a level-off (climb or descent ending) at the
slope change minus ``LEVEL_OFF_LEAD_S`` (a clearance to stop a climb is given before the level is reached);
speed and track candidates at the score's peak minus half the change's duration at a typical rate.

The model file is ``.npz`` read with ``allow_pickle=False`` (:mod:`pipelines.detector_model`): tree arrays and
calibration tables only, never code. ``atc-il train-detector`` retrains it on a user's own tracks and clearance log.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from atc_il.geometry import haversine_nm, wrap180
from atc_il.progress import track as progress_track
from atc_il.schemas import ACTION_SCHEMA, ACTION_UNITS, action_id, conform, empty
from atc_il.units import tas_to_cas_kt
from pipelines.detector_route import ROUTE_FEATURES, route_geometry
from pipelines.manoeuvres import _fill_kinematics, _interp_nan, _pieces, _plans_by_flight, flight_arrays

SIGNALS = ("altitude", "speed", "track")
CLASSES = {"altitude": ("none", "altitude"), "speed": ("none", "speed"), "track": ("none", "heading", "direct_to")}
SCALES_S = {"altitude": (60.0, 180.0), "speed": (120.0, 300.0), "track": (60.0, 180.0)}
THRESHOLDS = {"altitude": 400.0 / 60.0, "speed": 2.5, "track": 1.5}       # ft/s (slope change), kt, deg
NMS_S = {"altitude": 90.0, "speed": 150.0, "track": 90.0}
RATES = {"speed": 0.55, "track": 1.2}          # kt/s, deg/s: typical rates, for the onset of a step
LEVEL_OFF_LEAD_S = 60.0
FEATURES = (
    "alt_dslope_s", "alt_dslope_l", "vs_before_s", "vs_after_s", "vs_before_l", "vs_after_l",
    "gs_step_s", "gs_step_l", "gs", "trk_step_s", "trk_step_l", "trk_change",
    "alt_noise", "gs_noise", "trk_noise", "plot_spacing_s", "kin_corr", "t_from_start_s", "t_to_end_s",
    *ROUTE_FEATURES,
    "alt_after_vs_1000", "alt",
    "z_step_s", "z_step_l",
    "dt_prev_s", "dt_next_s", "step_prev", "step_next",
)
GAP_CAP_S = 1800.0
MIN_EDGE_S = 60.0


@dataclass
class Candidate:
    signal: str
    index: int          # grid index of the change score's peak
    onset: int          # grid index of the estimated onset
    step: float         # the change (alt: fpm of slope change; speed kt; track deg) at the long scale
    features: np.ndarray
    waypoint: str | None
    after_value: float
    before_value: float


# ---------------------------------------------------------------- window statistics
class _Windows:
    """Means and least-squares slopes of a signal over index windows, from cumulative sums."""

    def __init__(self, x: np.ndarray, dt: float):
        self.n, self.dt = len(x), dt
        k = np.arange(self.n, dtype=float)
        self.c0 = np.r_[0.0, np.cumsum(np.ones(self.n))]
        self.c1 = np.r_[0.0, np.cumsum(x)]
        self.ck = np.r_[0.0, np.cumsum(k)]
        self.ckk = np.r_[0.0, np.cumsum(k * k)]
        self.ckx = np.r_[0.0, np.cumsum(k * x)]

    def _sums(self, a, b):
        a, b = np.clip(a, 0, self.n), np.clip(b, 0, self.n)
        return (self.c0[b] - self.c0[a], self.c1[b] - self.c1[a], self.ck[b] - self.ck[a],
                self.ckk[b] - self.ckk[a], self.ckx[b] - self.ckx[a])

    def mean(self, a, b):
        n, s1, *_ = self._sums(a, b)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n >= 1, s1 / n, np.nan)

    def slope(self, a, b):
        n, s1, sk, skk, skx = self._sums(a, b)
        with np.errstate(invalid="ignore", divide="ignore"):
            den = n * skk - sk * sk
            return np.where((n >= 2) & (den > 0), (n * skx - sk * s1) / den / self.dt, np.nan)


def _rsd(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(1.4826 * np.median(np.abs(v - np.median(v)))) if len(v) else np.nan


def plot_spacing_s(lat: np.ndarray, lon: np.ndarray, dt: float) -> float:
    """The spacing of the raw plots behind a linearly interpolated grid: the mean distance between knots
    (grid points where the second difference of position is not ~0); ``dt`` when every point is a knot."""
    if len(lat) < 5:
        return dt
    d2 = np.abs(np.diff(lat, 2)) + np.abs(np.diff(lon, 2))
    scale = np.median(np.abs(np.diff(lat))) + np.median(np.abs(np.diff(lon))) + 1e-12
    knots = int(np.sum(d2 > 1e-6 * scale))
    return float(dt * len(d2) / max(knots, 1))


# ---------------------------------------------------------------- per piece
def speed_position_correlation(lat: np.ndarray, lon: np.ndarray, gs: np.ndarray, dt: float, spacing: float) -> float:
    """Correlation between the fast fluctuations of the ground speed and of the speed between successive positions:
    ~1 when the feed's ground speed was itself derived from the positions, ~0 when a tracker measured it (its
    noise is its own). Tells the model which of the two kinds of speed (and track) noise it is looking at."""
    if len(gs) < 12:
        return np.nan
    v = haversine_nm(lat[:-1], lon[:-1], lat[1:], lon[1:]) / dt * 3600.0
    g = 0.5 * (gs[:-1] + gs[1:])
    k = max(3, int(round(4 * spacing / dt)) | 1)
    from scipy.ndimage import median_filter
    a, b = v - median_filter(v, size=k, mode="nearest"), g - median_filter(g, size=k, mode="nearest")
    sa, sb = float(np.std(a)), float(np.std(b))
    return float(np.mean((a - a.mean()) * (b - b.mean())) / (sa * sb)) if sa > 0 and sb > 0 else np.nan


@dataclass
class _Piece:
    t_ns: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    alt: np.ndarray
    gs: np.ndarray
    trk: np.ndarray     # unwrapped
    dt: float
    kin_corr: float = np.nan


def _scores(x: np.ndarray, w: _Windows, signal: str, scale_s: float, dt: float) -> np.ndarray:
    """The change score at every grid index; near the ends of the piece over the longest symmetric windows that fit
    (at least ``MIN_EDGE_S``), so that a change in the last minutes of a track is still seen."""
    n = len(x)
    i = np.arange(n)
    h = np.minimum(max(2, int(round(scale_s / dt))), np.minimum(i, n - 1 - i))
    if signal == "altitude":
        s = w.slope(i, i + h + 1) - w.slope(i - h, i + 1)
    else:
        s = w.mean(i + 1, i + h + 1) - w.mean(i - h, i)
    s[h < max(2, int(round(min(scale_s, MIN_EDGE_S) / dt)))] = np.nan
    return s


def _peaks(s: np.ndarray, thr: float, nms: int, reach: int, sign: int = 0) -> list[int]:
    """Local maxima of |s| (``sign`` 1 or -1: of the positive or negative part of s only) at least ``thr``: the largest within ``reach`` grid steps either side (the middle of a
    run of equal maxima), then at least ``nms`` steps apart (the stronger kept). Points on the flanks of a broad
    peak are not candidates: a long window's score stays over the threshold for the whole window around a change."""
    a = np.nan_to_num(s, nan=0.0)
    a = np.abs(a) if sign == 0 else np.maximum(sign * a, 0.0)
    if not len(a):
        return []
    from scipy.ndimage import maximum_filter1d
    top = (a >= thr) & (a >= maximum_filter1d(a, size=2 * reach + 1, mode="constant", cval=0.0))
    idx = np.flatnonzero(top)
    if not len(idx):
        return []
    runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)
    mids = np.array([r[len(r) // 2] for r in runs])
    out: list[int] = []
    for i in mids[np.argsort(-a[mids], kind="stable")]:
        if all(abs(i - j) > nms for j in out):
            out.append(int(i))
    return sorted(out)


def _z(step: float, noise: float, scale_s: float, spacing: float) -> float:
    """A step against the noise of the difference of two window means (plots ``spacing`` apart)."""
    sd = noise * np.sqrt(2.0 / max(1.0, scale_s / max(spacing, 1e-9)))
    return float(abs(step) / max(sd, 1e-6)) if np.isfinite(step) and np.isfinite(sd) else np.nan


def _signed(v: float, sign: int) -> float:
    v = float(np.nan_to_num(v, nan=0.0))
    return abs(v) if sign == 0 else max(sign * v, 0.0)


def _piece_candidates(p: _Piece, plan) -> list[Candidate]:
    n, dt = len(p.alt), p.dt
    if n < 8:
        return []
    # speed as calibrated airspeed (from ground speed and altitude, no wind known): what a controller clears and
    # an aircraft holds, while its ground speed changes by ~9 kt per 1000 ft of climb or descent at the same CAS
    sig = {"altitude": p.alt, "speed": tas_to_cas_kt(p.gs, p.alt), "track": p.trk}
    win = {k: _Windows(v, dt) for k, v in sig.items()}
    win["gs"] = _Windows(p.gs, dt)
    sc = {(k, j): _scores(sig[k], win[k], k, SCALES_S[k][j], dt) for k in SIGNALS for j in (0, 1)}
    spacing = plot_spacing_s(p.lat, p.lon, dt)
    p.kin_corr = speed_position_correlation(p.lat, p.lon, p.gs, dt, spacing)
    lag = max(1, int(round(spacing / dt)))      # second differences between plots (the grid interpolates them)
    noise = {k: _rsd(v[2 * lag:] - 2 * v[lag:-lag] + v[:-2 * lag]) if len(v) > 2 * lag else np.nan
             for k, v in sig.items()}
    found: list[tuple[str, int]] = []
    for k in SIGNALS:
        nms = int(round(NMS_S[k] / dt))
        # a turn one way and a turn back (a vector, then back onto the route a minute later) are two changes, and so
        # are the start of a climb and its level-off a minute later, or a speed step and the step back: peaks of
        # either sign do not suppress each other
        for sign in (1, -1):
            cand = sorted(set().union(*(_peaks(sc[(k, j)], THRESHOLDS[k], nms, max(2, int(round(SCALES_S[k][j] / dt))),
                                               sign) for j in (0, 1))))
            strength = {i: max(_signed(sc[(k, 0)][i], sign), _signed(sc[(k, 1)][i], sign)) for i in cand}
            kept: list[int] = []
            for i in sorted(cand, key=lambda i: -strength[i]):
                if all(abs(i - j) > nms for j in kept):
                    kept.append(i)
            found += [(k, i) for i in kept]
    found.sort(key=lambda c: (SIGNALS.index(c[0]), c[1]))
    # each candidate's lines reach no further than halfway to the next change of its signal either side
    bounds = []
    for j, (k, i) in enumerate(found):
        prev = found[j - 1][1] if j and found[j - 1][0] == k else None
        nxt = found[j + 1][1] if j + 1 < len(found) and found[j + 1][0] == k else None
        bounds.append((0 if prev is None else (prev + i + 1) // 2, n - 1 if nxt is None else (i + nxt) // 2))
    cands = [_candidate(p, plan, k, i, sc, win, noise, spacing, b) for (k, i), b in zip(found, bounds)]
    cands = _merge_level_changes(cands)
    for k in SIGNALS:
        same = [c for c in cands if c.signal == k]
        for j, c in enumerate(same):
            prev, nxt = (same[j - 1] if j else None), (same[j + 1] if j + 1 < len(same) else None)
            c.features[-4:] = [min(GAP_CAP_S, (c.index - prev.index) * dt) if prev else GAP_CAP_S,
                               min(GAP_CAP_S, (nxt.index - c.index) * dt) if nxt else GAP_CAP_S,
                               prev.step if prev else 0.0, nxt.step if nxt else 0.0]
    return cands


def _merge_level_changes(cands: list[Candidate]) -> list[Candidate]:
    """A level-off that ends the climb or descent whose start is the previous altitude candidate is the same
    level change: dropped (the start is the clearance's onset)."""
    out: list[Candidate] = []
    last_alt: Candidate | None = None
    for c in cands:
        if c.signal == "altitude":
            vb, va = c.features[FEATURES.index("vs_before_s")], c.features[FEATURES.index("vs_after_s")]
            if last_alt is not None and abs(vb) > 500 and abs(va) < 300:
                pb, pa = (last_alt.features[FEATURES.index("vs_before_s")],
                          last_alt.features[FEATURES.index("vs_after_s")])
                if abs(pb) < 300 and abs(pa) > 500 and np.sign(pa) == np.sign(vb):
                    last_alt = c
                    continue
            last_alt = c
        out.append(c)
    return out


def _candidate(p: _Piece, plan, k: str, i: int, sc, win, noise, spacing, bounds: tuple[int, int]) -> Candidate:
    n, dt = len(p.alt), p.dt
    hs = {s: max(2, int(round(SCALES_S[s][0] / dt))) for s in SIGNALS}
    hl = {s: max(2, int(round(SCALES_S[s][1] / dt))) for s in SIGNALS}
    ii = np.array([i])
    wa, wg = win["altitude"], win["gs"]
    vs_b_s = float(wa.slope(ii - hs["altitude"], ii + 1)[0]) * 60
    vs_a_s = float(wa.slope(ii, ii + hs["altitude"] + 1)[0]) * 60
    vs_b_l = float(wa.slope(ii - hl["altitude"], ii + 1)[0]) * 60
    vs_a_l = float(wa.slope(ii, ii + hl["altitude"] + 1)[0]) * 60

    def at(s, j):
        v = sc[(s, j)]
        r = max(1, hs[k] // 2)
        lo, hi = max(0, i - r), min(n, i + r + 1)
        seg = v[lo:hi]
        if not np.isfinite(seg).any():
            return np.nan
        return float(seg[np.nanargmax(np.abs(seg))])

    step_l = at(k, 1)
    step_s = at(k, 0)
    # onset
    if k == "altitude":
        onset = i - (int(round(LEVEL_OFF_LEAD_S / dt)) if abs(vs_b_s) > 500 and abs(vs_a_s) < 300 else 0)
    else:
        mag = abs(step_l if np.isfinite(step_l) else step_s)
        onset = i - int(round(mag / RATES[k] / 2 / dt))
    onset = int(np.clip(onset, 0, n - 1))
    # plan geometry: straight lines flown before and after the change, against the plan's waypoints
    turn = step_l if np.isfinite(step_l) else step_s
    geo, waypoint = route_geometry(p, plan, i, abs(turn) / RATES["track"] if k == "track" and np.isfinite(turn)
                                   else 0.0, spacing, bounds)
    trk_before, trk_after = geo.pop("_trk_before"), geo.pop("_trk_after")
    trk_change = float(wrap180(trk_after - trk_before))      # over lines that stop short of the neighbouring changes
    plan_level = np.nan
    if plan is not None and len(plan) > 3 and plan[3] is not None:
        plan_level = plan[3]
    alt_after = float(wa.mean(np.array([min(n - 1, i + hs["altitude"])]), np.array([min(n, i + hl["altitude"])]))[0])
    f = np.array([
        at("altitude", 0) * 60, at("altitude", 1) * 60, vs_b_s, vs_a_s, vs_b_l, vs_a_l,
        at("speed", 0), at("speed", 1), float(p.gs[i]), at("track", 0), at("track", 1), trk_change,
        noise["altitude"], noise["speed"], noise["track"], spacing, p.kin_corr, i * dt, (n - 1 - i) * dt,
        *(geo[f] for f in ROUTE_FEATURES[:-1]),
        alt_after - plan_level if np.isfinite(plan_level) else np.nan,
        abs(alt_after - round(alt_after / 1000.0) * 1000.0), float(p.alt[i]),
        *(_z(st, noise[k], min(SCALES_S[k][j], i * dt, (n - 1 - i) * dt), spacing)
          for j, st in enumerate((step_s, step_l))),
        GAP_CAP_S, GAP_CAP_S, 0.0, 0.0,
    ], float)
    before = float(np.median(p.alt[max(0, i - hs[k]):i + 1])) if k == "altitude" else \
        float(wg.mean(np.array([max(0, i - hl[k])]), np.array([i]))[0]) if k == "speed" else trk_before
    after = alt_after if k == "altitude" else \
        float(wg.mean(np.array([i + 1]), np.array([i + 1 + hl[k]]))[0]) if k == "speed" else trk_after
    step = (vs_a_l - vs_b_l) if k == "altitude" else trk_change if k == "track" and np.isfinite(trk_change) else \
        (step_l if np.isfinite(step_l) else step_s)
    return Candidate(k, i, onset, float(step), f, waypoint, after, before)


def _plans(flight_plans: pd.DataFrame | None) -> dict:
    base = _plans_by_flight(flight_plans)
    if not base:
        return {}
    levels = {}
    if "alt_ft" in flight_plans:
        fp = flight_plans.sort_values(["flight_id", "seq"])
        levels = fp.groupby("flight_id")["alt_ft"].agg(lambda s: s.iloc[0] if len(s) else np.nan).to_dict()
    return {fid: (*v, levels.get(fid, np.nan)) for fid, v in base.items()}


def flight_candidates(tracks: pd.DataFrame, flight_plans: pd.DataFrame | None = None,
                      progress: bool | None = None) -> list[tuple[str, np.ndarray, Candidate]]:
    """Every candidate of every flight: (flight_id, the piece's times in ns, candidate)."""
    if tracks is None or tracks.empty:
        return []
    plans = _plans(flight_plans)
    t_all, cols, fids, bounds = flight_arrays(tracks)
    out = []
    for a, b in progress_track(list(zip(bounds[:-1], bounds[1:])), "detecting manoeuvres", show=progress):
        fid = fids[a]
        for p0, p1, dt in _pieces(t_all[a:b], cols["gs_kt"][a:b]):
            sl = slice(a + p0, a + p1)
            lat, lon = cols["lat_deg"][sl], cols["lon_deg"][sl]
            trk, gs = _fill_kinematics(lat, lon, cols["trk_deg"][sl].copy(), cols["gs_kt"][sl].copy(), dt)
            ok = ~np.isnan(trk)
            unwrapped = np.full(len(trk), np.nan)
            if ok.any():
                unwrapped[ok] = np.unwrap(trk[ok], period=360.0)
            piece = _Piece(t_all[sl], lat, lon, _interp_nan(cols["alt_ft"][sl].copy()), _interp_nan(gs),
                           _interp_nan(unwrapped), dt)
            if np.isnan(piece.trk).any() or np.isnan(piece.gs).any() or np.isnan(piece.alt).any():
                continue
            out += [(fid, piece.t_ns, c) for c in _piece_candidates(piece, plans.get(fid))]
    return out


def candidate_table(cands) -> pd.DataFrame:
    """Candidates as a table: flight_id, signal, time (onset), peak_time, step, waypoint, before, after, features."""
    if not cands:
        return pd.DataFrame(columns=["flight_id", "signal", "time", "peak_time", "step", "waypoint", "before",
                                     "after", *FEATURES])
    rows = {"flight_id": [f for f, _, _ in cands], "signal": [c.signal for _, _, c in cands],
            "time": pd.to_datetime([int(t[c.onset]) for _, t, c in cands], unit="ns", utc=True),
            "peak_time": pd.to_datetime([int(t[c.index]) for _, t, c in cands], unit="ns", utc=True),
            "step": [c.step for _, _, c in cands], "waypoint": [c.waypoint for _, _, c in cands],
            "before": [c.before_value for _, _, c in cands], "after": [c.after_value for _, _, c in cands]}
    feats = np.vstack([c.features for _, _, c in cands])
    df = pd.DataFrame(rows)
    for j, name in enumerate(FEATURES):
        df[name] = feats[:, j]
    return df


def detect_actions(tracks: pd.DataFrame, flight_plans: pd.DataFrame | None, model,
                   threshold: float | None = None, progress: bool | None = None) -> pd.DataFrame:
    """Actions (ACTION_SCHEMA, source ``track_inferred``) found by the learned detector; ``model`` a
    :class:`pipelines.detector_model.DetectorModel` (the one shipped with the package:
    ``pipelines.detector_model.load_default()``; that module builds on this one, so the caller loads it).
    ``result.attrs["candidates"]`` counts the candidates per signal, ``attrs["rejected"]`` those under threshold."""
    return actions_from_candidates(candidate_table(flight_candidates(tracks, flight_plans, progress)), model, threshold)


def actions_from_candidates(cand: pd.DataFrame, model, threshold: float | None = None) -> pd.DataFrame:
    """The actions of :func:`detect_actions` from an already computed :func:`candidate_table`."""
    result = empty(ACTION_SCHEMA)
    result.attrs["candidates"] = {k: int(v) for k, v in cand["signal"].value_counts().items()} if len(cand) else {}
    if cand.empty:
        result.attrs["rejected"] = {}
        return result
    kind, conf = model.classify(cand)
    thr = np.nan_to_num(model.thresholds_for(cand), nan=0.5) if threshold is None \
        else np.full(len(cand), float(threshold))
    keep = (kind != "none") & (conf >= thr)
    result.attrs["rejected"] = {f"{s}_below_threshold": int(v)
                                for s, v in cand.loc[~keep, "signal"].value_counts().items()}
    rows = []
    for r, k, c in zip(cand[keep].itertuples(index=False), kind[keep], conf[keep]):
        if k == "altitude":
            target = round(r.after / 100.0) * 100.0
            value = target - round(r.before / 100.0) * 100.0
        elif k == "speed":
            target, value = r.after, r.after - r.before
        else:
            target, value = r.after % 360.0 if np.isfinite(r.after) else np.nan, float(wrap180(r.after - r.before))
        rows.append({"action_id": action_id(r.flight_id, r.time, k), "time": r.time, "flight_id": r.flight_id,
                     "action_type": k, "value": float(value), "unit": ACTION_UNITS[k], "target_value": float(target),
                     "waypoint": r.waypoint if k == "direct_to" else None, "source": "track_inferred",
                     "confidence": float(np.clip(c, 0.0, 1.0))})
    if rows:
        df = pd.DataFrame(rows).drop_duplicates("action_id")
        result = conform(df.sort_values(["time", "flight_id"], ignore_index=True), ACTION_SCHEMA, "detected actions")
    result.attrs["candidates"] = {k: int(v) for k, v in cand["signal"].value_counts().items()}
    result.attrs["rejected"] = {f"{s}_below_threshold": int(v) for s, v in cand.loc[~keep, "signal"].value_counts().items()}
    return result

