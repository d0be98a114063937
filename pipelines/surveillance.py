"""Re-sample tracks like a real surveillance feed: plot interval, position noise, 100 ft altitude, speed given or not.

:func:`degrade_tracks` turns dense tracks (simulator states, or any canonical tracks) into raw plots as a
radar or ADS-B feed delivers them, for benchmarks and tests of anything that reads tracks:

- plots every ``interval_s`` seconds per flight, from a random phase per flight (the feed's clock is not the
  simulator's), positions and altitude interpolated linearly between the dense points on either side;
- Gaussian position noise (``pos_noise_nm`` standard deviation in each of north and east);
- altitude quantised to ``alt_quantum_ft`` (100 ft: mode C / S) after ``alt_noise_ft`` of noise;
- ``kinematics="given"``: ground speed, track and vertical rate kept, with tracker-like noise
  (``gs_noise_kt``, ``trk_noise_deg``, ``vs_noise_fpm``); ``"derived"``: dropped (NaN), so that whoever reads
  the plots derives them from positions and altitudes, as from a feed that carries none.

Randomness only from the ``rng`` passed in. Returns canonical track columns (``time, flight_id, callsign,
lat_deg, lon_deg, alt_ft, gs_kt, trk_deg, vs_fpm, cfl_ft, source``), one row per plot, sorted by flight and time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from atc_il.errors import ConfigError

KINEMATICS = ("given", "derived")
COLUMNS = ["time", "flight_id", "callsign", "lat_deg", "lon_deg", "alt_ft", "gs_kt", "trk_deg", "vs_fpm",
           "cfl_ft", "source"]


@dataclass(frozen=True)
class Surveillance:
    """What a feed delivers; defaults: an en-route radar (30 s, ~90 m, 100 ft, speed derived)."""
    interval_s: float = 30.0
    pos_noise_nm: float = 0.05
    alt_noise_ft: float = 0.0
    alt_quantum_ft: float = 100.0
    kinematics: str = "derived"
    gs_noise_kt: float = 2.0
    trk_noise_deg: float = 0.5
    vs_noise_fpm: float = 100.0

    def __post_init__(self):
        if not self.interval_s > 0:
            raise ConfigError(f"Surveillance.interval_s must be > 0, got {self.interval_s}")
        if self.kinematics not in KINEMATICS:
            raise ConfigError(f"Surveillance.kinematics must be one of {KINEMATICS}, got {self.kinematics!r}")
        if min(self.pos_noise_nm, self.alt_noise_ft, self.alt_quantum_ft, self.gs_noise_kt, self.trk_noise_deg,
               self.vs_noise_fpm) < 0:
            raise ConfigError("Surveillance noise levels and the altitude quantum must be >= 0")

    @property
    def label(self) -> str:
        return f"{self.interval_s:g}s/{self.kinematics}"


def _interp(t: np.ndarray, tq: np.ndarray, v: np.ndarray, circular: bool = False) -> np.ndarray:
    if circular:
        u = np.unwrap(v, period=360.0)
        return np.interp(tq, t, u) % 360.0
    return np.interp(tq, t, v)


def degrade_tracks(tracks: pd.DataFrame, surv: Surveillance = Surveillance(),
                   rng: np.random.Generator | None = None) -> pd.DataFrame:
    """Raw plots of ``tracks`` as the feed ``surv`` would deliver them (see the module docstring)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    if tracks.empty:
        return pd.DataFrame(columns=COLUMNS)
    df = tracks.sort_values(["flight_id", "time"], kind="stable")
    out = []
    for fid, g in df.groupby("flight_id", sort=True):
        t = pd.DatetimeIndex(g["time"]).as_unit("ns").asi8 / 1e9
        keep = np.r_[True, np.diff(t) > 0]
        g, t = g[keep], t[keep]
        if len(t) < 2:
            continue
        tq = np.arange(t[0] + rng.uniform(0, surv.interval_s), t[-1], surv.interval_s)
        if len(tq) == 0:
            continue
        n = len(tq)
        lat = _interp(t, tq, g["lat_deg"].to_numpy(float))
        lon = _interp(t, tq, g["lon_deg"].to_numpy(float), circular=False)
        lat_n = lat + rng.normal(0, surv.pos_noise_nm, n) / 60.0
        lon_n = lon + rng.normal(0, surv.pos_noise_nm, n) / 60.0 / np.cos(np.radians(lat))
        alt = _interp(t, tq, g["alt_ft"].to_numpy(float)) + rng.normal(0, surv.alt_noise_ft, n)
        if surv.alt_quantum_ft > 0:
            alt = np.round(alt / surv.alt_quantum_ft) * surv.alt_quantum_ft
        rows = {"time": pd.to_datetime(np.round(tq * 1e3).astype("int64"), unit="ms", utc=True),
                "flight_id": fid, "lat_deg": lat_n, "lon_deg": lon_n, "alt_ft": alt}
        if surv.kinematics == "given":
            def col(c, circular=False, g=g, t=t, tq=tq):
                v = g[c].to_numpy(float) if c in g else np.full(len(t), np.nan)
                return _interp(t, tq, v, circular)
            rows["gs_kt"] = np.maximum(col("gs_kt") + rng.normal(0, surv.gs_noise_kt, n), 0.0)
            rows["trk_deg"] = (col("trk_deg", True) + rng.normal(0, surv.trk_noise_deg, n)) % 360.0
            rows["vs_fpm"] = col("vs_fpm") + rng.normal(0, surv.vs_noise_fpm, n)
        else:
            rows["gs_kt"] = rows["trk_deg"] = rows["vs_fpm"] = np.full(n, np.nan)
        last = np.searchsorted(t, tq, side="right") - 1
        for c in ("callsign", "source"):
            rows[c] = g[c].to_numpy(object)[last] if c in g else None
        rows["cfl_ft"] = np.full(n, np.nan)
        out.append(pd.DataFrame(rows))
    if not out:
        return pd.DataFrame(columns=COLUMNS)
    res = pd.concat(out, ignore_index=True)[COLUMNS]
    res["lon_deg"] = (res["lon_deg"] + 180.0) % 360.0 - 180.0
    return res

