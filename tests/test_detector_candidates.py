"""Candidate generation and features of the learned detector (pipelines.detector), independent of any model:
one candidate per manoeuvre, a vector and the turn back as two, speed on calibrated airspeed, the route
features of a direct-to and of the plan's own turn, and the ISA conversions behind them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from atc_il.units import tas_to_cas_kt, tas_to_mach
from pipelines.detector import _peaks, candidate_table, flight_candidates
from tests.test_detector import CASES, ROUTE, T0, T_DCT, T_MAN, fly, plans, resampled


def _near(cand: pd.DataFrame, t_s: float, tol_s: float) -> pd.DataFrame:
    return cand[((cand["time"] - (T0 + pd.Timedelta(seconds=t_s))).dt.total_seconds().abs() <= tol_s)]


# ---------------------------------------------------------------- peaks
def test_peaks_are_local_maxima_not_the_flanks_of_a_broad_score():
    # a long window's score around one step: over the threshold for +-36 steps, one peak
    s = np.r_[np.zeros(50), np.linspace(0, 10, 37), np.linspace(10, 0, 37)[1:], np.zeros(50)]
    assert _peaks(s, thr=1.0, nms=18, reach=36) == [86]
    # a plateau of equal maxima: its middle
    assert _peaks(np.r_[0, 0, 5, 5, 5, 0, 0.0], thr=1.0, nms=1, reach=2) == [3]
    # opposite signs (a turn and the turn back) are separate when asked per sign
    d = np.r_[np.zeros(20), -np.hanning(25) * 8, np.hanning(25) * 8, np.zeros(20)]
    assert len(_peaks(d, 1.0, 30, 12)) == 1           # |s|: the weaker one suppressed within nms
    assert _peaks(d, 1.0, 30, 12, sign=1) == [57] and _peaks(d, 1.0, 30, 12, sign=-1) == [32]


@pytest.mark.parametrize("interval", [4.0, 30.0])
def test_one_candidate_per_manoeuvre(interval):
    for fid, signal in (("TURN", "track"), ("SLOW", "speed"), ("CLIMB", "altitude")):
        grid = resampled(CASES[fid][0](), interval, "given")
        cand = candidate_table(flight_candidates(grid))
        own = cand[cand["signal"] == signal]
        assert len(_near(own, T_MAN, 60.0 + 2 * interval)) == 1, own[["time", "step"]]
        assert len(own) == 1, f"{fid}: {own[['time', 'step']].to_dict('records')}"


def test_a_vector_and_the_turn_back_a_minute_later_are_two_candidates():
    from atc_il.geometry import from_local_nm, velocity_kt
    tr = fly("DOGLEG")
    t = np.arange(len(tr), dtype=float)
    goal = np.where((t >= T_MAN) & (t < T_MAN + 65), 60.0, 90.0)    # 30 deg left, back 65 s later
    trk = np.empty(len(t))
    cur = 90.0
    for j in range(len(t)):
        cur += float(np.clip(goal[j] - cur, -1.2, 1.2))
        trk[j] = cur
    vx, vy = velocity_kt(tr["gs_kt"].to_numpy(), trk)
    lat, lon = from_local_nm(np.cumsum(vx) / 3600, np.cumsum(vy) / 3600, 51.0, 5.0)
    grid = resampled(tr.assign(trk_deg=trk, lat_deg=lat, lon_deg=lon), 30.0, "given")
    cand = candidate_table(flight_candidates(grid))
    track = _near(cand[cand["signal"] == "track"], T_MAN + 35, 120.0)
    assert len(track) == 2, track[["time", "step", "trk_change"]]
    assert track["trk_change"].iloc[0] < -10 and track["trk_change"].iloc[1] > 10


# ---------------------------------------------------------------- speed on calibrated airspeed
def test_isa_airspeeds():
    assert float(tas_to_cas_kt(250.0, 0.0)) == pytest.approx(250.0, abs=1e-6)
    cas = tas_to_cas_kt(np.array([450.0, 450.0]), np.array([25000.0, 36000.0]))
    assert 300 < cas[0] < 330 and 250 < cas[1] < 270 and cas[1] < cas[0]
    assert float(tas_to_mach(450.0, 36000.0)) == pytest.approx(0.784, abs=0.002)


def test_a_climb_at_constant_calibrated_airspeed_is_no_speed_change():
    tr = fly("CLIMBCAS", alt=37000.0, alt0=27000.0)
    # ground speed = true airspeed (no wind) of 280 kt CAS at each altitude: it grows by ~9 kt per 1000 ft
    tas_grid = np.linspace(300.0, 600.0, 3001)
    tas = np.array([np.interp(280.0, tas_to_cas_kt(tas_grid, a), tas_grid) for a in tr["alt_ft"].to_numpy()])
    tr["gs_kt"] = tas
    assert tas[-1] - tas[0] > 60
    cand = candidate_table(flight_candidates(resampled(tr, 10.0, "given")))
    assert not (cand["signal"] == "speed").any(), cand[cand["signal"] == "speed"][["time", "step"]]
    assert (cand["signal"] == "altitude").any()


# ---------------------------------------------------------------- route features
def test_route_features_of_a_direct_to_and_of_the_plans_own_turns():
    grid = resampled(CASES["DCT"][0](), 10.0, "given")
    cand = candidate_table(flight_candidates(grid, plans(["DCT"])))
    track = cand[cand["signal"] == "track"]
    dct = _near(track, T_DCT, 80.0)
    assert len(dct) == 1
    d = dct.iloc[0]
    # the line after passes within a fraction of a NM of the target, 2+ waypoints beyond the next one
    # (this test flies straight lines in a local plane, not great circles: ~0.7 NM off at 80 NM)
    assert d["post_aim_miss_nm"] < 1.0 and d["post_aim_rank"] >= 2 and d["waypoint"] == "DCTW6"
    assert d["aim_changed"] == 1.0 and not d["route_turn_miss_nm"] < 1.0      # NaN: no waypoint within 12 NM
    # the plan's own turns at its waypoints: both lines through the waypoint, the one after along the next leg
    own = track[~track.index.isin(dct.index)]
    assert len(own) >= 3
    assert (own["route_turn_miss_nm"] < 0.5).mean() >= 0.75, own[["time", "route_turn_miss_nm", "wp_dist_nm"]]
    assert len(ROUTE) == 9


def test_without_a_plan_the_route_features_are_missing():
    grid = resampled(CASES["TURN"][0](), 10.0, "given")
    cand = candidate_table(flight_candidates(grid, None))
    from pipelines.detector import ROUTE_FEATURES
    assert len(cand) and cand[list(ROUTE_FEATURES)].isna().all().all()
