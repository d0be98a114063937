"""Cleaning, derived kinematics and resampling on small synthetic flights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from atc_il.config import CleanConfig, PipelineConfig
from atc_il.geometry import from_local_nm, haversine_nm
from pipelines.clean import clean_and_resample, clean_tracks, derive_kinematics, resample_tracks

T0 = pd.Timestamp("2024-03-01T10:00:00Z")


def flight(fid="F1", t_s=None, gs_kt=450.0, trk_deg=90.0, vs_fpm=0.0, alt0=30000.0, t0=T0, **extra) -> pd.DataFrame:
    """A straight, constant-speed flight with the kinematic columns left empty (NaN)."""
    t_s = np.arange(0.0, 120.0, 4.0) if t_s is None else np.asarray(t_s, float)
    dist = gs_kt * t_s / 3600.0
    lat, lon = from_local_nm(dist * np.sin(np.radians(trk_deg)), dist * np.cos(np.radians(trk_deg)), 50.0, 5.0)
    df = pd.DataFrame({
        "time": t0 + pd.to_timedelta(t_s, unit="s"), "flight_id": fid, "callsign": fid, "lat_deg": lat,
        "lon_deg": lon, "alt_ft": alt0 + vs_fpm * t_s / 60.0, "gs_kt": np.nan, "trk_deg": np.nan,
        "vs_fpm": np.nan, "cfl_ft": np.nan, "source": "test"})
    for k, v in extra.items():
        df[k] = v
    return df


def test_derived_kinematics_of_straight_climbing_flight():
    df = derive_kinematics(flight(t_s=np.arange(0, 300, 5.0), gs_kt=450, trk_deg=90, vs_fpm=1500))
    assert df["gs_kt"].between(450 * 0.99, 450 * 1.01).all()
    assert (np.abs(((df["trk_deg"] - 90 + 180) % 360) - 180) < 1.0).all()
    assert df["vs_fpm"].between(1500 * 0.99, 1500 * 1.01).all()


def test_derived_kinematics_keeps_given_values_and_respects_segments():
    df = flight(t_s=np.r_[np.arange(0, 40, 4.0), [400.0]])
    df.loc[2, "gs_kt"] = 123.0
    out = derive_kinematics(df, max_gap_s=60)
    assert out.loc[2, "gs_kt"] == 123.0
    assert np.isnan(out["gs_kt"].iloc[-1])          # a lone point after a gap: nothing to difference


def test_resample_never_bridges_a_gap_nor_extrapolates():
    t = np.r_[np.arange(1.0, 121.0, 4.0), np.arange(421.0, 541.0, 4.0)]   # a 5-minute gap
    out = resample_tracks(derive_kinematics(flight(t_s=t)), step_s=5.0, max_gap_s=60.0)
    sec = (out["time"] - T0).dt.total_seconds().to_numpy()
    assert not ((sec > 117) & (sec < 421)).any()               # nothing inside the gap
    assert 115 in sec and 425 in sec                            # points either side present
    assert sec.min() >= 1 and sec.max() <= 537                  # no extrapolation
    assert out["flight_id"].eq("F1").all()                      # same flight_id across the gap


def test_grid_times_are_multiples_of_step_and_shared_between_flights():
    a = flight("A", t_s=np.arange(0.3, 100, 3.7))
    b = flight("B", t_s=np.arange(1.9, 100, 4.1), t0=T0 + pd.Timedelta("17ms"))
    out = resample_tracks(derive_kinematics(pd.concat([a, b])), step_s=5.0)
    ns = out["time"].dt.as_unit("ns").astype("int64")
    assert (ns % 5_000_000_000 == 0).all()
    ta, tb = (set(out.loc[out.flight_id == f, "time"]) for f in "AB")
    assert len(ta & tb) >= 15


def test_resample_interpolates_linearly_and_on_the_circle():
    df = flight(t_s=[0.0, 10.0, 20.0])
    df["alt_ft"] = [1000.0, 2000.0, 2000.0]
    df["trk_deg"] = [350.0, 10.0, 10.0]
    df["gs_kt"], df["vs_fpm"] = 400.0, 0.0
    out = resample_tracks(df, step_s=5.0)
    mid = out.set_index((out["time"] - T0).dt.total_seconds()).loc[5.0]
    assert mid["alt_ft"] == pytest.approx(1500.0)
    assert min(mid["trk_deg"], 360.0 - mid["trk_deg"]) == pytest.approx(0.0, abs=1e-9)   # not 180
    assert mid["lat_deg"] == pytest.approx((df.lat_deg[0] + df.lat_deg[1]) / 2)


def test_resample_carries_values_forward_never_from_the_future():
    df = derive_kinematics(flight(t_s=[0.0, 4.0, 8.0, 12.0, 16.0, 20.0]))
    df["cfl_ft"] = [np.nan, 30000.0, np.nan, 35000.0, np.nan, np.nan]
    df["callsign"] = ["OLD", None, "OLD", "NEW", None, None]
    out = resample_tracks(df, step_s=5.0)
    sec = (out["time"] - T0).dt.total_seconds().to_list()
    got = dict(zip(sec, zip(out["cfl_ft"], out["callsign"])))
    assert np.isnan(got[0.0][0]) and got[0.0][1] == "OLD"
    assert got[5.0] == (30000.0, "OLD") and got[10.0] == (30000.0, "OLD")
    assert got[15.0] == (35000.0, "NEW") and got[20.0] == (35000.0, "NEW")


def test_altitude_spikes_removed_single_and_runs():
    df = flight(t_s=np.arange(0, 200, 5.0), vs_fpm=1000)
    df.loc[10, "alt_ft"] = 5000.0                                 # single glitch
    df.loc[[25, 26], "alt_ft"] = 58000.0                          # two-point glitch
    clean, q = clean_tracks(df, CleanConfig())
    assert set(q.loc[q.reason == "altitude_spike", "time"]) == set(df.loc[[10, 25, 26], "time"])
    assert len(clean) == len(df) - 3 and q["detail"].str.contains("median").all()


def test_position_jump_removed():
    df = flight(t_s=np.arange(0, 200, 5.0))
    df.loc[12, "lat_deg"] += 0.8                                  # 48 NM off in 5 s
    df.loc[0, "lon_deg"] += 2.0                                   # the very first point is wrong too
    clean, q = clean_tracks(df, CleanConfig())
    assert q["reason"].eq("impossible_jump").all() and len(q) == 2
    assert set(q["time"]) == set(df.loc[[0, 12], "time"])
    d = haversine_nm(clean.lat_deg[:-1].to_numpy(), clean.lon_deg[:-1].to_numpy(),
                     clean.lat_deg[1:].to_numpy(), clean.lon_deg[1:].to_numpy())
    assert d.max() < 2.0


def test_duplicates_too_short_and_every_row_accounted_for():
    a = flight("A", t_s=np.arange(0, 60, 5.0))
    dup = a.iloc[[3, 4]].copy()
    dup.loc[dup.index[1], "alt_ft"] += 100                        # same time, different values
    short = flight("B", t_s=[0.0, 5.0])
    tracks, q, stats = clean_and_resample(pd.concat([a, dup, short]), PipelineConfig())
    assert q["reason"].value_counts().to_dict() == {"duplicate": 2, "too_short": 2}
    assert stats["rows_in"] == stats["rows_kept"] + stats["rows_quarantined"] == len(a) + 4
    assert stats["flights"] == 1 and set(tracks["flight_id"]) == {"A"}


def test_clean_keeps_a_normal_manoeuvring_flight():
    t = np.arange(0, 600, 1.0)
    df = flight(t_s=t)
    heading = np.where(t < 200, 90.0, np.minimum(90.0 + 3.0 * (t - 200), 180.0))   # standard-rate turn
    step = 450 / 3600.0
    x = np.cumsum(step * np.sin(np.radians(heading)))
    y = np.cumsum(step * np.cos(np.radians(heading)))
    df["lat_deg"], df["lon_deg"] = from_local_nm(x, y, 50.0, 5.0)
    df["alt_ft"] = np.clip(20000 + 3000 * (t - 100) / 60.0, 20000, 30000) + np.random.default_rng(0).normal(0, 25, len(t))
    clean, q = clean_tracks(df, CleanConfig())
    assert q.empty and len(clean) == len(df)


def test_stale_forward_filled_positions_are_stale_positions_but_a_parked_aircraft_is_kept():
    df = flight(t_s=np.arange(0, 100, 1.0))
    df.loc[41:60, ["lat_deg", "lon_deg"]] = df.loc[40, ["lat_deg", "lon_deg"]].to_numpy()   # 20 s stale
    parked = flight("P", t_s=np.arange(0, 30, 5.0), gs_kt=0.0, alt0=0.0).assign(gs_kt=0.0)
    clean, q = clean_tracks(pd.concat([df, parked]), CleanConfig())
    assert len(q) == 20 and q["reason"].eq("stale_position").all() and q["detail"].str.contains("forward-filled").all()
    assert (clean["flight_id"] == "P").sum() == len(parked)
    assert not q["reason"].eq("impossible_jump").any()        # the fresh position after the hole is fine


def test_a_long_run_after_a_jump_is_kept_and_counted():
    df = flight(t_s=np.arange(0, 300, 5.0))
    df.loc[30:, "lat_deg"] += 1.0                                   # the rest of the track shifted 60 NM
    clean, q = clean_tracks(df, CleanConfig())
    assert q.empty and clean.attrs["jumps_kept"] == 1
