"""Feature building: observation histories for conflicts at decision times, shared by the data set stage
(:mod:`pipelines.dataset`), the prediction function (:mod:`models.serving`), the radar picture
(:mod:`pipelines.picture`) and the service, so that features are computed exactly as in training.

Features use only observations at or before the decision time:
- ``pair``       (H, 2, F_pose): the two aircraft's last H grid steps in a frame relative to the pair
                 (origin: the pair's midpoint at decision time; +y: aircraft 1's track at decision time);
- ``neighbours`` (H, K, F_pose): the K nearest other aircraft at decision time, over the same steps;
- ``geometry``   (H, F_geom): conflict geometry over the window (tcpa, dcpa, bearing, closure, vertical
                 separation and its trend, time since first detection; with ``dataset.nuisance``, for the
                 causal-confusion study only, whether each aircraft is manoeuvring: :func:`_nuisance`);
- ``clearances`` (M, F_clr): the last M clearances issued in the airspace strictly before decision time.
With ``dataset.other_conflicts``, ``geometry`` also holds, per step, how many predicted conflicts each aircraft of
the pair has with third aircraft (what a conflict display shows: :func:`_other_conflicts`).
Each tensor has a ``valid`` feature (1 = observed, 0 = padding). :func:`feature_spec` describes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from atc_il.config import ConflictConfig, DatasetConfig
from atc_il.errors import DataError
from atc_il.geometry import cpa, kwik_dist_nm, kwik_qdr_dist_nm, to_local_nm, velocity_kt
from atc_il.schemas import ACTION_TYPES, to_ns
from pipelines.goal import GOAL, goal_features
from pipelines.history import HISTORY, PAIR_HISTORY, history_features, last_before_pair, pair_history_features

POSE = [("x_nm", "NM", True), ("y_nm", "NM", True), ("dalt_ft", "ft", True), ("gs_kt", "kt", True),
        ("trk_sin", "1", False), ("trk_cos", "1", False), ("vs_fpm", "ft/min", True),
        ("cfl_dalt_ft", "ft", True), ("cfl_known", "1", False), ("valid", "1", False)]
GEOM = [("tcpa_s", "s", True), ("dcpa_nm", "NM", True), ("dist_nm", "NM", True), ("bearing_sin", "1", False),
        ("bearing_cos", "1", False), ("closure_kt", "kt", True), ("vsep_ft", "ft", True),
        ("vsep_rate_fpm", "ft/min", True), ("time_in_conflict_s", "s", True), ("valid", "1", False)]
CLEAR = ([("age_s", "s", True), ("on_ac1", "1", False), ("on_ac2", "1", False), ("on_other", "1", False)]
         + [(f"type_{t}", "1", False) for t in ACTION_TYPES]
         + [("value_deg", "deg", True), ("value_ft", "ft", True), ("value_kt", "kt", True), ("valid", "1", False)])
NUISANCE = [("manoeuvring_ac1", "1", False), ("manoeuvring_ac2", "1", False)]   # dataset.nuisance (study only)
OTHER_CONFLICTS = [("other_conflicts_ac1", "1", True), ("other_conflicts_ac2", "1", True)]   # dataset.other_conflicts
INDEX_COLUMNS = ("lat_deg", "lon_deg", "alt_ft", "gs_kt", "trk_deg", "vs_fpm", "cfl_ft")


@dataclass
class Samples:
    """Decision samples as arrays: what :func:`build_features` reads (decision time and first detection in
    UTC ns, the pair's flight ids) and any other columns (``extra``, e.g. the detection's tcpa_s and dcpa_nm).

    The request path builds these directly (:meth:`pipelines.picture.Picture.samples`): a DataFrame costs
    tens of microseconds per column read, several times a request. Table callers pass DataFrames
    (columns time, flight_id_1, flight_id_2, first_detection), converted by :meth:`of`."""
    t_ns: np.ndarray
    flight_id_1: np.ndarray
    flight_id_2: np.ndarray
    first_ns: np.ndarray
    extra: dict = field(default_factory=dict)

    @classmethod
    def of(cls, samples: Samples | pd.DataFrame, extra: tuple[str, ...] = ()) -> Samples:
        """``samples`` as arrays, with the ``extra`` columns the table has."""
        if isinstance(samples, Samples):
            return samples
        missing = [c for c in ("time", "flight_id_1", "flight_id_2", "first_detection") if c not in samples]
        if missing:
            raise DataError(f"samples: columns {missing} are missing; have {list(samples.columns)}")
        return cls(to_ns(samples["time"]), samples["flight_id_1"].to_numpy(dtype=object),
                   samples["flight_id_2"].to_numpy(dtype=object), to_ns(samples["first_detection"]),
                   {c: samples[c].to_numpy() for c in extra if c in samples})

    def __len__(self) -> int:
        return len(self.t_ns)

    def frame(self) -> pd.DataFrame:
        """As a table: time, flight_id_1, flight_id_2, the extra columns, first_detection (UTC datetimes)."""
        return pd.DataFrame({"time": pd.to_datetime(self.t_ns, unit="ns", utc=True),
                             "flight_id_1": self.flight_id_1, "flight_id_2": self.flight_id_2, **self.extra,
                             "first_detection": pd.to_datetime(self.first_ns, unit="ns", utc=True)})


@dataclass
class TrackIndex:
    """Vectorised (flight, grid step) -> row lookup over canonical tracks on a regular grid."""
    t0: int
    step_ns: int
    n_t: int
    keys: np.ndarray
    rows: np.ndarray
    codes: np.ndarray      # per track row
    tidx: np.ndarray       # per track row
    flights: pd.Index      # code -> flight_id, sorted
    cols: dict             # column -> numpy array
    by_time: np.ndarray    # rows sorted by tidx
    time_bounds: np.ndarray
    # per flight code, a dense table of its rows over [t_first, t_last] (-1 in gaps): an O(1) lookup;
    # None where flights span far more steps than they have points (then a binary search in ``keys``)
    dense: np.ndarray | None = None
    t_first: np.ndarray | None = None
    t_last: np.ndarray | None = None
    offset: np.ndarray | None = None
    _conflicts: dict = field(default_factory=dict, repr=False)    # conflict_counts' results per configuration

    def codes_of(self, ids) -> np.ndarray:
        """Codes of flight ids (-1 where absent). A binary search in the sorted ids for the few ids of a
        request (a hash lookup costs ~0.1 ms to set up), the index's hash table for many."""
        ids = np.asarray(ids, dtype=object)
        if len(ids) > 64 or len(self.flights) == 0:
            return self.flights.get_indexer(ids)
        names = np.asarray(self.flights, dtype=object)
        pos = np.minimum(np.searchsorted(names, ids), len(names) - 1)
        return np.where(names[pos] == ids, pos, -1)

    @classmethod
    def build(cls, tracks: pd.DataFrame, step_s: float) -> TrackIndex:
        if tracks.empty:
            raise DataError("dataset: the track table is empty")
        codes, flights = pd.factorize(tracks["flight_id"], sort=True)
        cols = {c: tracks[c].to_numpy(dtype=float, na_value=np.nan) for c in INDEX_COLUMNS}
        return cls.from_arrays(to_ns(tracks["time"]), codes, pd.Index(flights), cols, step_s)

    @classmethod
    def from_arrays(cls, ns: np.ndarray, codes: np.ndarray, flights: pd.Index, cols: dict,
                    step_s: float) -> TrackIndex:
        """From grid times (ns), flight codes into ``flights`` (sorted) and the :data:`INDEX_COLUMNS` arrays."""
        step_ns = int(round(step_s * 1e9))
        t0 = int(ns.min())
        if np.any((ns - t0) % step_ns):
            raise DataError(f"dataset: tracks are not on a regular {step_s:g} s grid; "
                            "ingest with resampling (atc-il ingest without --no-resample) or set dataset step")
        tidx = (ns - t0) // step_ns
        n_t = int(tidx.max()) + 1
        keys = codes.astype(np.int64) * n_t + tidx
        order = np.argsort(keys, kind="stable")
        if np.any(np.diff(keys[order]) == 0):
            raise DataError("dataset: duplicate (flight_id, time) rows in tracks")
        by_time = np.argsort(tidx, kind="stable")
        bounds = np.searchsorted(tidx[by_time], np.arange(n_t + 1))
        idx = cls(t0, step_ns, n_t, keys[order], order, codes, tidx, flights, cols, by_time, bounds)
        n_codes = len(flights)
        if len(codes) and codes.min() >= 0:
            t_first = np.full(n_codes, n_t, dtype=np.int64)
            t_last = np.full(n_codes, -1, dtype=np.int64)
            np.minimum.at(t_first, codes, tidx)
            np.maximum.at(t_last, codes, tidx)
            span = np.maximum(t_last - t_first + 1, 0)
            if span.sum() <= 4 * len(codes) + 1_000_000:          # not for ids that recur days apart
                offset = np.concatenate([[0], np.cumsum(span)[:-1]])
                dense = np.full(int(span.sum()), -1, dtype=np.int64)
                dense[offset[codes] + tidx - t_first[codes]] = np.arange(len(codes))
                idx.dense, idx.t_first, idx.t_last, idx.offset = dense, t_first, t_last, offset
        return idx

    def lookup(self, codes: np.ndarray, tidx: np.ndarray) -> np.ndarray:
        """Track rows for (flight code, grid step) arrays of any shape; -1 where absent."""
        if self.dense is not None and self.t_first is not None and self.t_last is not None \
                and self.offset is not None and len(self.dense):
            c = np.clip(codes, 0, len(self.t_first) - 1)
            ok = (codes >= 0) & (codes < len(self.t_first)) & (tidx >= self.t_first[c]) & (tidx <= self.t_last[c])
            return np.where(ok, self.dense[np.where(ok, self.offset[c] + tidx - self.t_first[c], 0)], -1)
        k = codes.astype(np.int64) * self.n_t + tidx
        pos = np.searchsorted(self.keys, k)
        pos = np.minimum(pos, len(self.keys) - 1)
        found = (self.keys[pos] == k) & (codes >= 0) & (tidx >= 0) & (tidx < self.n_t)
        return np.where(found, self.rows[pos], -1)

    def conflict_counts(self, cfg: ConflictConfig) -> tuple[np.ndarray, np.ndarray]:
        """Per track row, the number of predicted conflicts its aircraft is in at its grid step (atc-il's
        state-based detection on the grid, :func:`pipelines.conflicts.detect_arrays`: the pairs the conflicts
        stage and the radar picture find), and the sorted keys ``(tidx * n + c1) * n + c2`` (``n`` flights,
        ``c1 < c2``) of those pairs. Computed once per index and configuration."""
        key = cfg.model_dump_json()
        if key not in self._conflicts:
            from pipelines.conflicts import detect_arrays
            c = self.cols
            cat, _ = detect_arrays(self.t0 + self.tidx * self.step_ns, self.codes, c["lat_deg"], c["lon_deg"],
                                   c["alt_ft"], c["gs_kt"], c["trk_deg"], c["vs_fpm"], cfg=cfg)
            self.remember_conflicts(cfg, cat)
        return self._conflicts[key]

    def remember_conflicts(self, cfg: ConflictConfig, cat: dict) -> None:
        """Keep the detection catalogue of all this index's rows (``detect_arrays``' first result, codes of this
        index) for :meth:`conflict_counts`: the radar picture has just computed it and need not twice."""
        on = cat["conflict"].astype(bool)
        t = (cat["time"][on] - self.t0) // self.step_ns
        c1, c2 = cat["c1"][on].astype(np.int64), cat["c2"][on].astype(np.int64)
        counts = np.zeros(len(self.codes), dtype=np.int32)
        for code in (c1, c2):
            np.add.at(counts, self.lookup(code, t), 1)
        n = max(len(self.flights), 1)
        self._conflicts[cfg.model_dump_json()] = (counts, np.sort((t * n + c1) * n + c2))

    def to_tidx(self, times: pd.Series | np.ndarray) -> np.ndarray:
        ns = to_ns(times)
        return (ns - self.t0) // self.step_ns

    def gather(self, rows: np.ndarray) -> dict:
        ok = rows >= 0
        safe = np.where(ok, rows, 0)
        out = {c: np.where(ok, v[safe], np.nan) for c, v in self.cols.items()}
        out["valid"] = ok
        return out


def _fill(out: np.ndarray, feats: list, valid: np.ndarray) -> np.ndarray:
    """Write features into a preallocated float32 array; padding and missing values become 0."""
    for i, f in enumerate(feats):
        out[..., i] = f
    out[~valid] = 0.0
    bad = np.isnan(out)
    if bad.any():
        out[bad] = 0.0
    return out


def _pose(state: dict, lat0, lon0, alt0, theta) -> np.ndarray:
    """Pose features in the pair frame; ``lat0``..``theta`` broadcast against the state arrays."""
    x, y = to_local_nm(state["lat_deg"], state["lon_deg"], lat0, lon0)
    th = np.radians(theta)
    c, s = np.cos(th), np.sin(th)
    rel = np.radians(state["trk_deg"]) - th
    cfl_known = np.isfinite(state["cfl_ft"])
    feats = [x * c - y * s, x * s + y * c, state["alt_ft"] - alt0, state["gs_kt"], np.sin(rel), np.cos(rel),
             state["vs_fpm"], np.where(cfl_known, state["cfl_ft"] - state["alt_ft"], 0.0), cfl_known,
             state["valid"]]
    return _fill(np.empty(x.shape + (len(POSE),), dtype=np.float32), feats, state["valid"])


def _geometry(a: dict, b: dict, theta, tsec_since_first) -> np.ndarray:
    qdr, dist = kwik_qdr_dist_nm(a["lat_deg"], a["lon_deg"], b["lat_deg"], b["lon_deg"])
    dx, dy = dist * np.sin(np.radians(qdr)), dist * np.cos(np.radians(qdr))
    ua, va = velocity_kt(a["gs_kt"], a["trk_deg"])
    ub, vb = velocity_kt(b["gs_kt"], b["trk_deg"])
    du, dv = ub - ua, vb - va
    tcpa, dcpa = cpa(dx, dy, du, dv)
    closure = -(dx * du + dy * dv) / np.maximum(dist, 1e-6)
    dalt = a["alt_ft"] - b["alt_ft"]
    rel = np.radians(qdr - theta)
    valid = a["valid"] & b["valid"]
    feats = [tcpa, dcpa, dist, np.sin(rel), np.cos(rel), closure, np.abs(dalt),
             np.sign(dalt) * (a["vs_fpm"] - b["vs_fpm"]), np.maximum(tsec_since_first, 0.0), valid]
    return _fill(np.empty(dist.shape + (len(GEOM),), dtype=np.float32), feats, valid)


def _neighbours(idx: TrackIndex, s_tidx, lat_mid, lon_mid, c1, c2, k: int, range_nm: float) -> np.ndarray:
    """Codes (N, K) of the K nearest other aircraft at each sample's decision step (-1 = padding)."""
    out = np.full((len(s_tidx), k), -1, dtype=np.int64)
    if k == 0:
        return out
    order = np.argsort(s_tidx, kind="stable")
    uniq, starts = np.unique(s_tidx[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    lat, lon = idx.cols["lat_deg"], idx.cols["lon_deg"]
    for t, a, b in zip(uniq, starts, ends):
        rows = idx.by_time[idx.time_bounds[t]:idx.time_bounds[t + 1]]
        sel = order[a:b]
        d = kwik_dist_nm(lat_mid[sel, None], lon_mid[sel, None], lat[rows][None, :], lon[rows][None, :])
        codes = idx.codes[rows][None, :]
        d = np.where((codes == c1[sel, None]) | (codes == c2[sel, None]) | (d > range_nm), np.inf, d)
        kk = min(k, d.shape[1])
        nearest = np.argsort(d, axis=1, kind="stable")[:, :kk]
        dn = np.take_along_axis(d, nearest, axis=1)
        out[sel, :kk] = np.where(np.isfinite(dn), np.broadcast_to(codes, d.shape)[np.arange(len(sel))[:, None], nearest], -1)
    return out


def _clearances(actions: pd.DataFrame, t_ns: np.ndarray, f1: np.ndarray, f2: np.ndarray, m: int,
                horizon_s: float) -> np.ndarray:
    """(N, M, F_clr): the last M actions strictly before each decision time, within the horizon (oldest first)."""
    out = np.zeros((len(t_ns), m, len(CLEAR)), dtype=np.float32)
    if m == 0 or actions.empty:
        return out
    at = to_ns(actions["time"])
    end = np.searchsorted(at, t_ns, side="left")          # strictly before: the label's own action is excluded
    ix = end[:, None] - m + np.arange(m)[None, :]
    ok = ix >= 0
    ix = np.where(ok, ix, 0)
    age_s = (t_ns[:, None] - at[ix]) / 1e9
    ok &= age_s <= horizon_s
    afid = actions["flight_id"].to_numpy()[ix]
    atype = pd.Categorical(actions["action_type"], categories=ACTION_TYPES).codes[ix]
    val = actions["value"].to_numpy(dtype=float, na_value=0.0)[ix]
    unit = actions["unit"].fillna("").to_numpy()[ix]
    on1, on2 = afid == f1[:, None], afid == f2[:, None]
    cols = [age_s, on1, on2, ~(on1 | on2)]
    cols += [atype == j for j in range(len(ACTION_TYPES))]
    cols += [np.where(unit == u, val, 0.0) for u in ("deg", "ft", "kt")] + [ok]
    feats = np.stack([np.asarray(c, dtype=float) for c in cols], axis=-1)
    feats[~ok] = 0.0
    return feats.astype(np.float32)


def build_features(samples: Samples | pd.DataFrame, idx: TrackIndex, actions: pd.DataFrame, cfg: DatasetConfig,
                   flight_plans: pd.DataFrame | None = None, conflicts: ConflictConfig | None = None) -> dict:
    """Feature tensors for ``samples`` (:class:`Samples`, or a table with columns time, flight_id_1,
    flight_id_2, first_detection).

    ``flight_plans`` (flight-plan contract rows, optional) are read only by goal-conditioned
    configurations (``cfg.goal``: :data:`pipelines.goal.GOAL` features inserted into ``geometry`` before
    its ``valid`` column; a flight without a plan gets ``known`` = 0). ``conflicts``: the detection's configuration
    for ``cfg.other_conflicts`` (default: the default one).

    Pure in the past: only track rows at or before each sample's time and actions strictly before it
    are read (the leakage test perturbs everything later and checks these tensors do not change).
    """
    s = Samples.of(samples)
    h = cfg.history_steps
    t_ns, f1, f2 = s.t_ns, s.flight_id_1, s.flight_id_2
    t_tidx = (t_ns - idx.t0) // idx.step_ns
    c1, c2 = idx.codes_of(f1), idx.codes_of(f2)
    steps = t_tidx[:, None] - np.arange(h - 1, -1, -1)[None, :]          # (N, H), oldest first
    ra = idx.lookup(np.broadcast_to(c1[:, None], steps.shape), steps)
    rb = idx.lookup(np.broadcast_to(c2[:, None], steps.shape), steps)
    a, b = idx.gather(ra), idx.gather(rb)
    if not (a["valid"][:, -1].all() and b["valid"][:, -1].all()):
        raise DataError("dataset: a sample's aircraft has no track point at its decision time")
    lat0 = (a["lat_deg"][:, -1] + b["lat_deg"][:, -1]) / 2
    lon0 = (a["lon_deg"][:, -1] + b["lon_deg"][:, -1]) / 2   # fine away from the antimeridian
    alt0 = (a["alt_ft"][:, -1] + b["alt_ft"][:, -1]) / 2
    theta = a["trk_deg"][:, -1]
    pair = np.stack([_pose(a, lat0[:, None], lon0[:, None], alt0[:, None], theta[:, None]),
                     _pose(b, lat0[:, None], lon0[:, None], alt0[:, None], theta[:, None])], axis=2)
    first = s.first_ns
    t_steps = idx.t0 + steps * idx.step_ns
    geometry = _geometry(a, b, theta[:, None], (t_steps - first[:, None]) / 1e9)
    nb = _neighbours(idx, t_tidx, lat0, lon0, c1, c2, cfg.neighbours, cfg.neighbour_range_nm)
    nst = np.broadcast_to(steps[:, :, None], steps.shape + (cfg.neighbours,))
    n = idx.gather(idx.lookup(np.broadcast_to(nb[:, None, :], nst.shape), nst))
    neighbours = _pose(n, lat0[:, None, None], lon0[:, None, None], alt0[:, None, None], theta[:, None, None])
    clear = _clearances(actions, t_ns, f1, f2, cfg.recent_clearances, cfg.clearance_horizon_s)
    if cfg.goal:
        geometry = _goal(geometry, a, b, f1, f2, theta, flight_plans)
    if cfg.nuisance:
        geometry = _with_nuisance(geometry, actions, t_steps, f1, f2, cfg.nuisance_window_s)
    if cfg.controller_history:
        g = history_features(actions, t_steps, f1, f2, first, cfg.clearance_horizon_s, cfg.history_cap_s)
        geometry = _before_valid(geometry, g)
    if cfg.pair_history:
        g = pair_history_features(actions, t_steps, f1, f2, cfg.history_cap_s)
        geometry = _before_valid(geometry, g)
    if cfg.other_conflicts:
        g = _other_conflicts(idx, ra, rb, c1, c2, steps, conflicts or ConflictConfig())
        geometry = _before_valid(geometry, g)
    return {"pair": pair, "neighbours": neighbours, "geometry": geometry, "clearances": clear}


def _before_valid(geometry: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``geometry`` with the features ``g`` (0 where the step is not valid) inserted before its last (``valid``)
    column."""
    g[geometry[..., -1] < 0.5] = 0.0
    return np.concatenate([geometry[..., :-1], g, geometry[..., -1:]], axis=-1)


def _other_conflicts(idx: TrackIndex, ra: np.ndarray, rb: np.ndarray, c1: np.ndarray, c2: np.ndarray,
                     steps: np.ndarray, cfg: ConflictConfig) -> np.ndarray:
    """(N, H, 2): per step, the number of predicted conflicts each aircraft of the pair has with third aircraft
    (its conflicts at that step, less the pair's own when the pair is in conflict then)."""
    counts, keys = idx.conflict_counts(cfg)
    n = max(len(idx.flights), 1)
    lo, hi = np.minimum(c1, c2).astype(np.int64), np.maximum(c1, c2).astype(np.int64)
    k = (steps * n + lo[:, None]) * n + hi[:, None]
    pos = np.minimum(np.searchsorted(keys, k), max(len(keys) - 1, 0))
    own = (keys[pos] == k) if len(keys) else np.zeros(k.shape, bool)
    out = np.zeros(steps.shape + (2,), dtype=np.float32)
    for j, r in enumerate((ra, rb)):
        out[..., j] = np.where(r >= 0, counts[np.maximum(r, 0)], 0) - own
    return np.maximum(out, 0.0)


def _goal(geometry: np.ndarray, a: dict, b: dict, f1: np.ndarray, f2: np.ndarray, theta: np.ndarray,
          flight_plans: pd.DataFrame | None) -> np.ndarray:
    """``geometry`` with the goal features inserted before its last (``valid``) column."""
    g = goal_features(a, b, f1, f2, theta[:, None], flight_plans)
    return _before_valid(geometry, g)


def _nuisance(actions: pd.DataFrame, t_steps: np.ndarray, f1: np.ndarray, f2: np.ndarray,
              window_s: float) -> np.ndarray:
    """(N, H, 2) "manoeuvring" indicators for the causal-confusion study (``dataset.nuisance``): 1 where the
    aircraft's last clearance issued strictly before the step's time (``t_steps``, ns) is not a ``resume`` and
    at most ``window_s`` old. An effect of the controller's past decisions, not a cause of the next one."""
    n, h = t_steps.shape
    out = np.zeros((n, h, 2), dtype=np.float32)
    if n == 0 or actions.empty:
        return out
    at = to_ns(actions["time"])
    resume = actions["action_type"].to_numpy(dtype=object) == "resume"
    rows = last_before_pair(actions, f1, f2, t_steps)
    r = np.maximum(rows, 0)
    out[:] = np.moveaxis((rows >= 0) & ~resume[r] & ((t_steps - at[r]) <= window_s * 1e9), 0, -1)
    return out


def _with_nuisance(geometry: np.ndarray, actions: pd.DataFrame, t_steps: np.ndarray, f1: np.ndarray,
                   f2: np.ndarray, window_s: float) -> np.ndarray:
    """``geometry`` with the :data:`NUISANCE` features inserted before its last (``valid``) column."""
    g = _nuisance(actions, t_steps, f1, f2, window_s)
    return _before_valid(geometry, g)


def feature_spec(cfg: DatasetConfig, step_s: float) -> dict:
    def fl(feats):
        return [{"name": n, "unit": u, "normalise": z} for n, u, z in feats]
    h, k, m = cfg.history_steps, cfg.neighbours, cfg.recent_clearances
    geom = GEOM[:-1] + GOAL + GEOM[-1:] if cfg.goal else GEOM      # `valid` stays last
    if cfg.nuisance:
        geom = geom[:-1] + NUISANCE + geom[-1:]
    if cfg.controller_history:
        geom = geom[:-1] + HISTORY + geom[-1:]
    if cfg.pair_history:
        geom = geom[:-1] + PAIR_HISTORY + geom[-1:]
    if cfg.other_conflicts:
        geom = geom[:-1] + OTHER_CONFLICTS + geom[-1:]
    return {
        "version": 1,
        "step_s": step_s,
        "time_order": "oldest first; the last step is the decision time",
        "frame": "origin at the pair's midpoint at decision time, +y along aircraft 1's track, NM; dalt relative to the pair's mean altitude",
        "tensors": {
            "pair": {"shape": [h, 2, len(POSE)], "dims": ["time", "aircraft", "feature"], "features": fl(POSE)},
            "neighbours": {"shape": [h, k, len(POSE)], "dims": ["time", "neighbour", "feature"], "features": fl(POSE)},
            "geometry": {"shape": [h, len(geom)], "dims": ["time", "feature"], "features": fl(geom)},
            "clearances": {"shape": [m, len(CLEAR)], "dims": ["clearance", "feature"], "features": fl(CLEAR)},
        },
        "labels": {"label_act": "1 if an action was taken at this step, else 0",
                   "label_aircraft": "0 = aircraft 1, 1 = aircraft 2, -1 = none",
                   "label_type": {"coding": list(ACTION_TYPES), "none": -1},
                   "label_value": {"meaning": "signed change", "units": {"heading": "deg", "altitude": "ft",
                                   "speed": "kt", "direct_to": "deg", "resume": ""}},
                   "label_confidence": "0..1, from the action's source"},
        "config": cfg.model_dump(),
    }
