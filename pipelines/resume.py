"""Resume decisions: the steps after a clearance at which a controller may tell the aircraft to resume its own
navigation, built the same way for the data set and for the closed loop.

A controller that vectors, climbs or slows an aircraft to resolve a conflict later sends it back on its route
(``resume``). Those decisions fall after the conflict: past its closest approach, when the conflict's own decision
steps (``pipelines.dataset.select_samples``: while the conflict is shown) have ended. Without steps there, a
model never sees the situation and never resumes (the models issued a few resumes where the synthetic expert gave a
third of its clearances as resumes). Resume steps: for each clearance (not a resume) given to an aircraft against
another (``against_flight_id`` known), every grid step after it, up to the aircraft's next clearance (inclusive: that
is when a resume is given) and at most ``window_s`` after it, at which both aircraft are tracked and diverge
(their time to closest approach, from the current positions and ground velocities, is not positive). The pair is
ordered as conflict pairs are (``flight_id_1 < flight_id_2``); its ``first_detection`` is the clearance's time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from atc_il.geometry import cpa, kwik_qdr_dist_nm, velocity_kt
from atc_il.schemas import to_ns

NEVER = np.iinfo(np.int64).max


def outstanding(actions: pd.DataFrame) -> pd.DataFrame:
    """Clearances that a resume may follow: ``flight_id``, ``other``, ``t_clear`` and ``t_end`` (UTC ns; the time of
    the aircraft's next action, or :data:`NEVER`), for each action that is not a resume and names the other
    aircraft of its conflict."""
    cols = ["flight_id", "other", "t_clear", "t_end"]
    if actions is None or len(actions) == 0 or "against_flight_id" not in actions:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("flight_id", "other") else np.int64) for c in cols})
    a = pd.DataFrame({"flight_id": actions["flight_id"].astype(str).to_numpy(),
                      "type": actions["action_type"].astype(str).to_numpy(),
                      "other": actions["against_flight_id"].to_numpy(dtype=object),
                      "t": to_ns(actions["time"])}).sort_values(["flight_id", "t"], kind="stable")
    f, t = a["flight_id"].to_numpy(dtype=object), a["t"].to_numpy(np.int64)
    t_end = np.full(len(a), NEVER, dtype=np.int64)
    same = f[1:] == f[:-1]
    t_end[:-1][same] = t[1:][same]
    a["t_end"] = t_end
    keep = (a["type"] != "resume") & pd.notna(a["other"]) & (a["other"].astype(str) != "")
    a = a[keep]
    return pd.DataFrame({"flight_id": a["flight_id"].to_numpy(dtype=object), "other": a["other"].astype(str).to_numpy(
        dtype=object), "t_clear": a["t"].to_numpy(np.int64), "t_end": a["t_end"].to_numpy(np.int64)})


def diverging(lat1, lon1, gs1, trk1, lat2, lon2, gs2, trk2) -> np.ndarray:
    """Whether each pair's time to closest approach (flat earth, straight lines) is not positive."""
    qdr, dist = kwik_qdr_dist_nm(lat1, lon1, lat2, lon2)
    q = np.radians(qdr)
    u1, v1 = velocity_kt(gs1, trk1)
    u2, v2 = velocity_kt(gs2, trk2)
    tcpa, _ = cpa(dist * np.sin(q), dist * np.cos(q), u2 - u1, v2 - v1)
    return np.asarray(tcpa <= 0.0)


def ordered(fid: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flight_id_1, flight_id_2, index of ``fid`` in the pair: 0 or 1), conflict-pair order."""
    fid, other = np.asarray(fid, dtype=object), np.asarray(other, dtype=object)
    first = fid < other
    return np.where(first, fid, other), np.where(first, other, fid), np.where(first, 0, 1).astype(np.int8)


def resume_steps(outs: pd.DataFrame, idx, window_s: float) -> pd.DataFrame:
    """The resume steps of ``outs`` (:func:`outstanding`) on the grid of ``idx`` (a ``pipelines.features.TrackIndex``):
    time, flight_id_1, flight_id_2, first_detection, resumer (0/1: which of the pair was cleared). A pair with
    steps from both aircraft's clearances keeps one step per grid time."""
    empty = pd.DataFrame({"time": pd.Series(dtype="datetime64[ns, UTC]"), "flight_id_1": pd.Series(dtype=object),
                          "flight_id_2": pd.Series(dtype=object),
                          "first_detection": pd.Series(dtype="datetime64[ns, UTC]"),
                          "resumer": pd.Series(dtype=np.int8)})
    if outs.empty:
        return empty
    start = (outs["t_clear"].to_numpy(np.int64) - idx.t0) // idx.step_ns + 1
    end_t = np.minimum(outs["t_end"].to_numpy(np.int64), outs["t_clear"].to_numpy(np.int64) + int(window_s * 1e9))
    end = np.minimum((end_t - idx.t0) // idx.step_ns, idx.n_t - 1)
    n = np.maximum(end - start + 1, 0)
    if n.sum() == 0:
        return empty
    row = np.repeat(np.arange(len(outs)), n)
    tidx = np.repeat(start, n) + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
    fid = outs["flight_id"].to_numpy(dtype=object)[row]
    oth = outs["other"].to_numpy(dtype=object)[row]
    a = idx.gather(idx.lookup(idx.codes_of(fid), tidx))
    b = idx.gather(idx.lookup(idx.codes_of(oth), tidx))
    ok = a["valid"] & b["valid"]
    ok[ok] = diverging(a["lat_deg"][ok], a["lon_deg"][ok], a["gs_kt"][ok], a["trk_deg"][ok],
                       b["lat_deg"][ok], b["lon_deg"][ok], b["gs_kt"][ok], b["trk_deg"][ok])
    f1, f2, k = ordered(fid[ok], oth[ok])
    t_ns = idx.t0 + tidx[ok] * idx.step_ns
    out = pd.DataFrame({"time": pd.to_datetime(t_ns, unit="ns", utc=True), "flight_id_1": f1, "flight_id_2": f2,
                        "first_detection": pd.to_datetime(outs["t_clear"].to_numpy(np.int64)[row[ok]], unit="ns",
                                                          utc=True), "resumer": k})
    return out.drop_duplicates(["flight_id_1", "flight_id_2", "time"], keep="first").reset_index(drop=True)
