"""Merging ADS-B messages that carry position, altitude and velocity separately, before validation.

Raw ADS-B decodes (traffic's quickstart sample among them) hold one row per message: an airborne position
message gives latitude, longitude and barometric altitude, a velocity message ground speed, track and vertical
rate, a surveillance reply the altitude alone. Validation needs a position and an altitude in every row, so
without merging every velocity-only or altitude-only row is quarantined as ``missing_required``.

:func:`merge_messages` works per aircraft (``flight_id``) within a window of ``window_s`` seconds:

* a row **with** a position keeps its own values; each of its missing fields among ``alt_ft, gs_kt, trk_deg,
  vs_fpm, cfl_ft, callsign`` is filled from the nearest row of the same aircraft (before or after) within the
  window that has that field (``fields_filled`` counts them per field);
* a row **without** a position is *merged* (removed from the stream and counted in ``rows_merged``) when a row
  of the same aircraft with a position lies within the window: what it carried is now in those rows;
* a row without a position and no position within the window stays, and validation quarantines it as
  ``missing_required`` as before. Positions are never invented, never interpolated. A row that failed to
  parse (the readers' ``_unparseable``) takes no part: it is quarantined as ``unparseable``.

So ``rows in = rows kept + rows quarantined + rows merged`` (the ingest reconciliation).

:class:`MessageMerger` streams chunks: it keeps the last ``2 * window_s`` seconds of each chunk, so a message
whose partner arrives in the next chunk is merged all the same (for input in time order, as feeds are; rows
whose partners lie in a far-away chunk stay unmerged and are quarantined, never lost).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from atc_il.schemas import to_ns
from pipelines.readers import UNPARSEABLE

FILL_FIELDS = ("alt_ft", "gs_kt", "trk_deg", "vs_fpm", "cfl_ft", "callsign")
_EMIT = "_merge_emit"


@dataclass
class MergeStats:
    rows_merged: int = 0
    rows_with_position_filled: int = 0
    fields_filled: dict = field(default_factory=lambda: {f: 0 for f in FILL_FIELDS})

    def add(self, other: MergeStats) -> None:
        self.rows_merged += other.rows_merged
        self.rows_with_position_filled += other.rows_with_position_filled
        for k, v in other.fields_filled.items():
            self.fields_filled[k] = self.fields_filled.get(k, 0) + v


def _nearest(tns: np.ndarray, grp: np.ndarray, has: np.ndarray, window_ns: int) -> np.ndarray:
    """For every row (sorted by group then time): the index of the nearest row of the same group with ``has``
    within the window (the earlier one on a tie), or -1."""
    n = len(tns)
    idx = np.arange(n)
    donors = np.where(has, idx, -1)
    # previous donor: running maximum of donor indices, reset at group starts
    prev = np.maximum.accumulate(donors)
    start = np.r_[0, np.flatnonzero(grp[1:] != grp[:-1]) + 1]
    gstart = np.repeat(start, np.diff(np.r_[start, n]))
    prev = np.where(prev >= gstart, prev, -1)
    # next donor: the same from the end
    rdon = np.where(has, idx, n)[::-1]
    nxt = np.minimum.accumulate(rdon)[::-1]
    gend = np.repeat(np.r_[start[1:], n], np.diff(np.r_[start, n]))
    nxt = np.where(nxt < gend, nxt, -1)
    dp = np.where(prev >= 0, tns - tns[np.maximum(prev, 0)], np.iinfo(np.int64).max)
    dn = np.where(nxt >= 0, tns[np.maximum(nxt, 0)] - tns, np.iinfo(np.int64).max)
    best = np.where(dp <= dn, prev, nxt)
    dist = np.minimum(dp, dn)
    return np.where(dist <= window_ns, best, -1)


def merge_messages(df: pd.DataFrame, window_s: float) -> tuple[pd.DataFrame, MergeStats, np.ndarray]:
    """Merge the rows of a canonical chunk (see the module doc). Returns the rows that remain (original order,
    index reset), the statistics, and for every input row whether it was merged away (bool array)."""
    stats = MergeStats()
    n = len(df)
    merged = np.zeros(n, dtype=bool)
    if n == 0 or window_s <= 0 or "flight_id" not in df or "time" not in df:
        return df.reset_index(drop=True), stats, merged
    has_pos = (df["lat_deg"].notna() & df["lon_deg"].notna()).to_numpy()
    usable = np.array(df["flight_id"].notna() & df["time"].notna(), dtype=bool)
    if UNPARSEABLE in df:                      # a row that failed to parse is quarantined as such, never merged
        usable &= df[UNPARSEABLE].isna().to_numpy()
    if has_pos[usable].all() and not any(df[f].isna().to_numpy()[usable].any() for f in FILL_FIELDS if f in df):
        return df.reset_index(drop=True), stats, merged
    rows = np.flatnonzero(usable)
    tns = to_ns(df["time"].to_numpy()[rows]) if len(rows) else np.zeros(0, np.int64)
    grp = pd.factorize(df["flight_id"].to_numpy()[rows])[0]
    order = np.lexsort((tns, grp))
    rows, tns, grp = rows[order], tns[order], grp[order]
    pos = has_pos[rows]
    window_ns = int(round(window_s * 1e9))
    out = df.copy()
    filled_any = np.zeros(len(rows), dtype=bool)
    for f in FILL_FIELDS:
        if f not in df:
            continue
        vals = df[f].to_numpy()
        present = pd.notna(vals[rows])
        need = pos & ~present
        if not need.any() or not present.any():       # nothing to fill, or no message carries the field
            continue
        donor = _nearest(tns, grp, present, window_ns)
        take = need & (donor >= 0)
        if take.any():
            col = out[f].to_numpy(copy=True)
            col[rows[take]] = vals[rows[donor[take]]]
            out[f] = pd.Series(col, index=out.index).astype(df[f].dtype)
            stats.fields_filled[f] += int(take.sum())
            filled_any |= take
    stats.rows_with_position_filled = int(filled_any.sum())
    near_pos = _nearest(tns, grp, pos, window_ns) >= 0
    merged[rows[~pos & near_pos]] = True
    stats.rows_merged = int(merged.sum())
    return out.loc[~merged].reset_index(drop=True), stats, merged


class MessageMerger:
    """Streams chunks through :func:`merge_messages`, carrying the last ``2 * window_s`` seconds of each chunk
    into the next (module doc). ``push`` returns the rows ready for validation; ``flush`` the rest."""

    def __init__(self, window_s: float):
        self.window_s = float(window_s)
        self.stats = MergeStats()
        self.carry: pd.DataFrame | None = None

    def _run(self, frame: pd.DataFrame, final: bool) -> pd.DataFrame:
        emit = frame[_EMIT].to_numpy(dtype=bool)
        if final or not frame["time"].notna().any():
            hold = np.zeros(len(frame), dtype=bool)
            keep = hold
        else:
            t = pd.to_datetime(frame["time"], utc=True)
            t_max = t.max()
            w = pd.Timedelta(seconds=self.window_s)
            hold = (t > t_max - w).to_numpy() & emit          # decided next time, with the next chunk's rows
            keep = (t > t_max - 2 * w).to_numpy()             # context for them (emitted now or already)
        rest, stats, merged = merge_messages(frame.drop(columns=[_EMIT]), self.window_s)
        decided = emit & ~hold
        # statistics only for the rows decided now: merged rows among them, and fills of emitted rows
        now = MergeStats(rows_merged=int((merged & decided).sum()))
        if stats.rows_merged or any(stats.fields_filled.values()):
            before = frame.drop(columns=[_EMIT]).loc[~merged].reset_index(drop=True)
            dec = decided[~merged]
            filled_any = np.zeros(len(rest), dtype=bool)
            for f in FILL_FIELDS:
                if f in rest:
                    got = (before[f].isna() & rest[f].notna()).to_numpy() & dec
                    now.fields_filled[f] = int(got.sum())
                    filled_any |= got
            now.rows_with_position_filled = int(filled_any.sum())
        self.stats.add(now)
        self.carry = None
        if keep.any():
            self.carry = frame.loc[keep].assign(**{_EMIT: hold[keep]}).reset_index(drop=True)
        return rest.loc[decided[~merged]].reset_index(drop=True)

    def push(self, chunk: pd.DataFrame) -> pd.DataFrame:
        frame = chunk.assign(**{_EMIT: True})
        if self.carry is not None and len(self.carry):
            frame = pd.concat([self.carry, frame], ignore_index=True)
        return self._run(frame, final=False)

    def flush(self) -> pd.DataFrame | None:
        if self.carry is None or not self.carry[_EMIT].any():
            self.carry = None
            return None
        return self._run(self.carry, final=True)
