"""Goal features: where each aircraft of a pair must go, from its flight plan (``DatasetConfig.goal``).

A flight's goal is its exit point (the last waypoint of its plan, highest ``seq``) and its exit level
(that waypoint's ``alt_ft``; where it has none, the last ``alt_ft`` given along the plan; else unknown).
Per history step and per aircraft of the pair, :func:`goal_features` gives (see :data:`GOAL`):
the exit point relative to the aircraft, rotated into the pair frame (+y along aircraft 1's track at
decision time), NM; the distance to it, NM; its bearing relative to the aircraft's own track at that
step (sin, cos; sin > 0: the exit is to the right); exit level minus the aircraft's altitude, ft (0 when
the level is unknown) with a ``level_known`` flag; and ``known`` (1 when the flight has a plan).
A flight without a plan, or a padded step, gets zeros (``known`` = 0): not an error.

Flight plans are filed before the flight and are not observations of the future, so the features stay
pure in the past: they read the plan and the track at or before each step only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from atc_il.errors import DataError
from atc_il.geometry import kwik_qdr_dist_nm

_PER_AC = [("x_nm", "NM", True), ("y_nm", "NM", True), ("dist_nm", "NM", True), ("brg_sin", "1", False),
           ("brg_cos", "1", False), ("dalt_ft", "ft", True), ("level_known", "1", False), ("known", "1", False)]
#: goal features inserted into ``geometry`` before its ``valid`` column: aircraft 1's, then aircraft 2's
GOAL = [(f"goal{k}_{n}", u, z) for k in (1, 2) for n, u, z in _PER_AC]
PLAN_COLUMNS = ("flight_id", "seq", "lat_deg", "lon_deg")


def exits(flight_plans: pd.DataFrame | None, what: str = "flight plans") -> pd.DataFrame:
    """Per flight: ``exit_lat_deg``, ``exit_lon_deg``, ``exit_alt_ft`` (NaN if unknown), indexed by flight_id."""
    cols = ["exit_lat_deg", "exit_lon_deg", "exit_alt_ft"]
    if flight_plans is None or len(flight_plans) == 0:
        return pd.DataFrame(columns=cols, index=pd.Index([], name="flight_id"), dtype=float)
    missing = [c for c in PLAN_COLUMNS if c not in flight_plans.columns]
    if missing:
        raise DataError(f"{what}: flight plan missing column(s) {missing}; it has {list(flight_plans.columns)} "
                        "(contract atc-il/flight-plan/1)")
    fp = flight_plans.sort_values(["flight_id", "seq"], kind="stable")
    for c in ("lat_deg", "lon_deg"):
        if fp[c].isna().any():
            bad = fp.loc[fp[c].isna(), "flight_id"].iloc[0]
            raise DataError(f"{what}: flight {bad!r} has a waypoint without {c}")
    alt = fp["alt_ft"] if "alt_ft" in fp else pd.Series(np.nan, index=fp.index)
    g = fp.assign(_alt=pd.to_numeric(alt, errors="coerce")).groupby("flight_id", sort=True)
    last = g.last()          # last non-null per column: lat/lon are never null, so those are the exit's
    tail = g.tail(1).set_index("flight_id")
    out = pd.DataFrame({"exit_lat_deg": tail["lat_deg"].astype(float), "exit_lon_deg": tail["lon_deg"].astype(float)})
    own = pd.to_numeric(tail["alt_ft"], errors="coerce") if "alt_ft" in tail else pd.Series(np.nan, index=tail.index)
    out["exit_alt_ft"] = own.where(own.notna(), last["_alt"].reindex(tail.index)).astype(float)
    return out


def _one(state: dict, fids: np.ndarray, ex: pd.DataFrame, theta: np.ndarray) -> list:
    pos = ex.index.get_indexer(fids)                           # (N,)
    known = pos >= 0
    safe = np.where(known, pos, len(ex))                       # the NaN row appended below

    def col(c):
        return np.append(ex[c].to_numpy(dtype=float), np.nan)[safe][:, None]
    lat_e, lon_e, alt_e = col("exit_lat_deg"), col("exit_lon_deg"), col("exit_alt_ft")
    qdr, dist = kwik_qdr_dist_nm(state["lat_deg"], state["lon_deg"], lat_e, lon_e)
    pair_rel = np.radians(qdr - theta)
    own_rel = np.radians(qdr - state["trk_deg"])
    level_known = np.isfinite(alt_e) & known[:, None]
    ok = state["valid"] & known[:, None]
    feats = [dist * np.sin(pair_rel), dist * np.cos(pair_rel), dist, np.sin(own_rel), np.cos(own_rel),
             np.where(level_known, alt_e - state["alt_ft"], 0.0), level_known, np.ones_like(dist)]
    return [np.where(ok, np.nan_to_num(np.asarray(f, dtype=float)), 0.0) for f in feats]


def goal_features(a: dict, b: dict, f1: np.ndarray, f2: np.ndarray, theta: np.ndarray,
                  flight_plans: pd.DataFrame | None) -> np.ndarray:
    """(N, H, len(GOAL)) float32 for the pair's track states ``a`` and ``b`` ((N, H) arrays, as gathered
    by the data set builder), flight ids ``f1``/``f2`` (N,) and the pair frame's ``theta`` (N, 1), deg."""
    ex = exits(flight_plans)
    feats = _one(a, np.asarray(f1), ex, theta) + _one(b, np.asarray(f2), ex, theta)
    return np.stack(feats, axis=-1).astype(np.float32)
