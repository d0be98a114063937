"""A small radar picture held in arrays: the request path of the prediction function, without DataFrames.

A REST request or a closed-loop step carries a few aircraft with a few minutes of points each. Pushing
them through the pandas stages costs ~20 ms of fixed overhead per call; a :class:`Picture` runs the very
same array cores instead (:func:`pipelines.clean.kinematics`, :func:`pipelines.clean.resample_plan`,
:func:`pipelines.conflicts.detect_arrays`, :meth:`pipelines.features.TrackIndex.from_arrays`), so its grid,
conflicts and features are those of the batch path for the same points (``tests/test_picture.py``).

Semantics, as in the batch path: points are put on the grid of multiples of ``step_s`` (missing ground
speed, track and vertical speed derived from positions first; no grid point in a gap longer than
``max_gap_s``); the conflicts at a decision time are those of atc-il's state-based detection on the grid
picture at that time, and a pair's ``first_detection`` is the start of its current run of detections
(runs broken by gaps longer than ``max_episode_gap_s``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from atc_il.config import ConflictConfig
from atc_il.errors import DataError
from pipelines.clean import interpolate, kinematics, resample_plan, segments
from pipelines.conflicts import PAIR_COLUMNS, detect_arrays
from pipelines.features import INDEX_COLUMNS, Samples, TrackIndex

STATE = ("lat_deg", "lon_deg", "alt_ft", "gs_kt", "trk_deg", "vs_fpm")


@dataclass
class Picture:
    """Grid points of a handful of flights: ``ns`` (grid times), ``codes`` into ``flights`` (sorted ids),
    ``cols`` (the :data:`~pipelines.features.INDEX_COLUMNS`), and the :class:`TrackIndex` over them."""
    flights: pd.Index
    ns: np.ndarray
    codes: np.ndarray
    cols: dict
    index: TrackIndex

    @classmethod
    def from_points(cls, flight_id, t_ns, cols: dict, step_s: float, max_gap_s: float = 60.0) -> Picture:
        """Raw points (any sampling) -> the grid. ``cols`` holds lat_deg, lon_deg, alt_ft and optionally
        gs_kt, trk_deg, vs_fpm, cfl_ft (NaN = unknown)."""
        t_ns = np.asarray(t_ns, dtype=np.int64)
        n = len(t_ns)
        names, codes = np.unique(np.asarray(flight_id, dtype=str), return_inverse=True)
        order = np.lexsort((t_ns, codes))
        codes, t = codes[order], t_ns[order]
        raw = {c: np.asarray(cols[c], dtype=float)[order] if c in cols and cols[c] is not None
               else np.full(n, np.nan) for c in INDEX_COLUMNS}
        for c in ("lat_deg", "lon_deg", "alt_ft"):
            if not np.isfinite(raw[c]).all():
                raise DataError(f"tracks: {c} must be a finite number at every point")
        new_flight = np.r_[True, codes[1:] != codes[:-1]] if n else np.zeros(0, bool)
        seg = segments(new_flight, t, max_gap_s)
        raw.update(kinematics(seg, t, raw["lat_deg"], raw["lon_deg"], raw["alt_ft"],
                              raw["gs_kt"], raw["trk_deg"], raw["vs_fpm"]))
        grid, i, j, w = resample_plan(seg, t, int(round(step_s * 1e9)))
        if len(grid) == 0:
            raise DataError("tracks: no flight has two points close enough in time to resample onto the grid")
        out = {c: interpolate(raw[c], i, j, w, {"lon_deg": "lon", "trk_deg": "track"}.get(c, False))
               for c in STATE}
        # cfl_ft: the last known value at or before the grid time, within the flight (carried forward)
        known = np.where(np.isfinite(raw["cfl_ft"]), np.arange(n), -1)
        last = np.maximum.accumulate(known) if n else known
        first_of_flight = np.maximum.accumulate(np.where(new_flight, np.arange(n), 0)) if n else known
        carried = np.where(last >= first_of_flight, raw["cfl_ft"][np.maximum(last, 0)], np.nan)
        out["cfl_ft"] = carried[i]
        gcodes = codes[i]
        flights = pd.Index(names.astype(object), dtype=object)
        return cls(flights, grid, gcodes, out, TrackIndex.from_arrays(grid, gcodes, flights, out, step_s))

    @classmethod
    def from_frame(cls, tracks: pd.DataFrame, step_s: float, max_gap_s: float = 60.0) -> Picture:
        """From canonical track points (a DataFrame with time, flight_id and the state columns)."""
        for c in ("time", "flight_id", "lat_deg", "lon_deg", "alt_ft"):
            if c not in tracks.columns:
                raise DataError(f"tracks: column {c!r} is missing; have {list(tracks.columns)}")
        times = pd.DatetimeIndex(tracks["time"])
        times = times.tz_localize("UTC") if times.tz is None else times
        cols = {c: tracks[c].to_numpy(dtype=float, na_value=np.nan) for c in INDEX_COLUMNS if c in tracks}
        return cls.from_points(tracks["flight_id"].to_numpy(), times.as_unit("ns").asi8, cols, step_s, max_gap_s)

    @property
    def last_ns(self) -> int:
        return int(self.ns.max())

    def frame(self) -> pd.DataFrame:
        """The grid as canonical track columns (for callers that want a table)."""
        return pd.DataFrame({"time": pd.to_datetime(self.ns, utc=True),
                             "flight_id": np.asarray(self.flights, dtype=object)[self.codes], **self.cols})

    def present(self, at_ns: int) -> np.ndarray:
        """Flight ids with a grid point at ``at_ns``."""
        return np.asarray(self.flights, dtype=object)[np.unique(self.codes[self.ns == at_ns])]

    def conflicts(self, at_ns: int, cfg: ConflictConfig = ConflictConfig()) -> dict:
        """Pairs in conflict or LoS at ``at_ns`` (arrays ``c1 < c2`` and :data:`PAIR_COLUMNS`) with the ns time
        their current run of detections began (``first_ns``)."""
        use = self.ns <= at_ns
        cat, _ = detect_arrays(self.ns[use], self.codes[use], *(self.cols[c][use] for c in STATE), cfg=cfg)
        if use.all():                   # the whole picture: what dataset.other_conflicts' features count
            self.index.remember_conflicts(cfg, cat)
        order = np.lexsort((cat["time"], cat["c2"], cat["c1"]))
        t, c1, c2 = cat["time"][order], cat["c1"][order], cat["c2"][order]
        k = len(t)
        new_pair = np.r_[True, (c1[1:] != c1[:-1]) | (c2[1:] != c2[:-1])] if k else np.zeros(0, bool)
        gap = np.r_[True, np.diff(t) > cfg.max_episode_gap_s * 1e9] if k else np.zeros(0, bool)
        start = np.maximum.accumulate(np.where(new_pair | gap, np.arange(k), 0)) if k else np.zeros(0, np.int64)
        now = t == at_ns
        out = {c: cat[c][order][now] for c in PAIR_COLUMNS}
        out.update(c1=c1[now], c2=c2[now], first_ns=t[start][now])
        return out

    def samples(self, at_ns: int, cfg: ConflictConfig = ConflictConfig(),
                pairs: list[tuple[str, str]] | None = None) -> Samples:
        """Decision samples at ``at_ns``: the pairs in conflict (or ``pairs``, in conflict or not, in their
        order), with flight_id_1 < flight_id_2, the start of their current run of detections and the
        detection's columns (NaN for a requested pair that is neither in conflict nor in LoS) as ``extra``."""
        if not (self.ns == at_ns).any():
            raise DataError(f"tracks: no aircraft has a position at the decision time "
                            f"{pd.Timestamp(at_ns, tz='UTC').isoformat()}")
        c = self.conflicts(at_ns, cfg)
        names = np.asarray(self.flights, dtype=object)
        if pairs is None:
            keep = c["conflict"].astype(bool)
            f1, f2 = names[c["c1"][keep]], names[c["c2"][keep]]
            cols = {k: c[k][keep] for k in PAIR_COLUMNS}
            first = c["first_ns"][keep]
        else:
            want = [tuple(sorted(p)) for p in pairs]
            missing = sorted({f for p in want for f in p} - set(self.present(at_ns)))
            if missing:
                raise DataError(f"tracks: no position at {pd.Timestamp(at_ns, tz='UTC').isoformat()} "
                                f"for aircraft {missing}")
            key = {(a, b): r for r, (a, b) in enumerate(zip(names[c["c1"]], names[c["c2"]]))}
            rows = np.array([key.get(p, -1) for p in want], dtype=np.int64)
            hit = rows >= 0
            f1 = np.array([p[0] for p in want], dtype=object)
            f2 = np.array([p[1] for p in want], dtype=object)
            cols = {}
            for k in PAIR_COLUMNS:
                v = c[k][np.maximum(rows, 0)] if len(c[k]) else np.zeros(len(rows))
                cols[k] = np.where(hit, v, np.nan) if k not in ("conflict", "los") else \
                    np.where(hit, v, None).astype(object)
            first = np.where(hit, c["first_ns"][np.maximum(rows, 0)] if len(c["first_ns"]) else at_ns, at_ns)
        return Samples(np.full(len(f1), at_ns, dtype=np.int64), f1, f2, np.asarray(first, dtype=np.int64), cols)
