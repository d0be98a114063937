"""The en-route focus shared by the conflicts, actions and dataset stages and batch prediction: an altitude
floor and an airspace (``atc_il.config.EnRouteConfig``, ``atc_il.airspace``) leave out terminal traffic around
airports.

* a conflict episode is kept when **both** aircraft are at or above the floor and inside the airspace at its
  first detection (batch prediction: a conflict step is predicted when its pair's run of detections, the
  episode, is kept);
* an action is kept when its aircraft is, at the action's time.

The state of an aircraft at a time is its last track point at or before that time, at most
``MAX_STATE_AGE_S`` old. What is left out is counted by reason, the first that applies over the aircraft
concerned: ``no_track_state`` (no such point), ``below_floor``, ``outside_airspace``. With neither a floor nor
an airspace (the default) nothing is tested and everything is kept.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from atc_il.airspace import Airspace, load_airspace
from atc_il.config import EnRouteConfig

MAX_STATE_AGE_S = 60.0
REASONS = ("no_track_state", "below_floor", "outside_airspace")


class EnRouteFilter:
    """The floor and airspace of an :class:`EnRouteConfig`, loaded once."""

    def __init__(self, cfg: EnRouteConfig = EnRouteConfig()):
        self.cfg = cfg
        self.airspace: Airspace | None = load_airspace(cfg.airspace, cfg.sector) if cfg.airspace else None
        if cfg.sector is not None and cfg.airspace is None:
            from atc_il.errors import ConfigError
            raise ConfigError("enroute.sector (--sector) names a feature of an airspace file: give --airspace too")

    @property
    def active(self) -> bool:
        return self.cfg.min_alt_ft is not None or self.airspace is not None

    def describe(self) -> dict:
        return {"min_alt_ft": self.cfg.min_alt_ft, "airspace": self.cfg.airspace, "sector": self.cfg.sector}

    def reasons(self, lat, lon, alt) -> np.ndarray:
        """Per point: '' when kept, else the reason (module doc); NaN positions mean no track state."""
        lat, lon, alt = (np.asarray(a, dtype=float).reshape(-1) for a in (lat, lon, alt))
        out = np.full(len(lat), "", dtype=object)
        nostate = np.isnan(lat) | np.isnan(lon) | np.isnan(alt)
        out[nostate] = "no_track_state"
        if self.cfg.min_alt_ft is not None:
            out[(out == "") & (alt < self.cfg.min_alt_ft)] = "below_floor"
        if self.airspace is not None:
            todo = np.flatnonzero(out == "")
            out[todo[~self.airspace.contains(lat[todo], lon[todo])]] = "outside_airspace"
        return out


def state_at(tracks: pd.DataFrame, flight_id, time) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """lat, lon, alt of each (flight_id, time): the last track point at or before it, within MAX_STATE_AGE_S."""
    n = len(flight_id)
    if n == 0 or tracks.empty:
        return np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    left = pd.DataFrame({"time": pd.to_datetime(pd.Series(np.asarray(time)), utc=True).dt.as_unit("ns"),
                         "flight_id": pd.Series(np.asarray(flight_id, dtype=object)).astype(str),
                         "_row": np.arange(n)})
    tr = pd.DataFrame({"time": pd.to_datetime(tracks["time"], utc=True).dt.as_unit("ns"),
                       "flight_id": tracks["flight_id"].astype(str),
                       "lat_deg": tracks["lat_deg"].to_numpy(float), "lon_deg": tracks["lon_deg"].to_numpy(float),
                       "alt_ft": tracks["alt_ft"].to_numpy(float)})
    got = pd.merge_asof(left.dropna(subset=["time"]).sort_values("time"), tr.sort_values("time"), on="time",
                        by="flight_id", direction="backward", tolerance=pd.Timedelta(seconds=MAX_STATE_AGE_S))
    out = [np.full(n, np.nan) for _ in range(3)]
    rows = got["_row"].to_numpy()
    for arr, c in zip(out, ("lat_deg", "lon_deg", "alt_ft")):
        arr[rows] = got[c].to_numpy(float)
    return out[0], out[1], out[2]


def reason_counts(reason: np.ndarray) -> dict:
    """{reason: how many} over an array of reasons ('' = kept, not counted)."""
    return {r: int((reason == r).sum()) for r in REASONS if (reason == r).any()}


def episode_reasons(episodes: pd.DataFrame, tracks: pd.DataFrame, flt: EnRouteFilter) -> np.ndarray:
    """Per episode (columns flight_id_1, flight_id_2, first_detection): '' when both aircraft pass at first
    detection, else the first reason that applies (module doc). All '' when ``flt`` is not active."""
    if not flt.active or episodes.empty:
        return np.full(len(episodes), "", dtype=object)
    r1 = flt.reasons(*state_at(tracks, episodes["flight_id_1"], episodes["first_detection"]))
    r2 = flt.reasons(*state_at(tracks, episodes["flight_id_2"], episodes["first_detection"]))
    rank = {"": len(REASONS), **{r: i for i, r in enumerate(REASONS)}}     # the first reason that applies
    return np.where([rank[a] <= rank[b] for a, b in zip(r1, r2)], r1, r2).astype(object)


def filter_episodes(episodes: pd.DataFrame, tracks: pd.DataFrame, flt: EnRouteFilter) -> tuple[pd.DataFrame, dict]:
    """(kept episodes, counts): an episode stays when both aircraft pass at first detection."""
    if not flt.active or episodes.empty:
        return episodes, {"episodes_left_out": 0, "episodes_left_out_by_reason": {}}
    reason = episode_reasons(episodes, tracks, flt)
    keep = reason == ""
    return (episodes.loc[keep].reset_index(drop=True),
            {"episodes_left_out": int((~keep).sum()), "episodes_left_out_by_reason": reason_counts(reason[~keep])})


def filter_actions(actions: pd.DataFrame, tracks: pd.DataFrame, flt: EnRouteFilter) -> tuple[pd.DataFrame, dict]:
    """(kept actions, counts): an action stays when its aircraft passes at the action's time."""
    if not flt.active or actions.empty:
        return actions, {"actions_left_out": 0, "actions_left_out_by_reason": {}}
    reason = flt.reasons(*state_at(tracks, actions["flight_id"], actions["time"]))
    keep = reason == ""
    return (actions.loc[keep].reset_index(drop=True),
            {"actions_left_out": int((~keep).sum()), "actions_left_out_by_reason": reason_counts(reason[~keep])})
