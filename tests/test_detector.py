"""The learned manoeuvre detector on simulated manoeuvres re-sampled like real surveillance (4, 10, 30 s), its safe
model format, retraining, and the surveillance re-sampling itself."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from atc_il.config import PipelineConfig
from atc_il.errors import ConfigError
from atc_il.geometry import bearing_deg, from_local_nm, to_local_nm, velocity_kt, wrap180
from atc_il.io import read_table, write_partitioned
from atc_il.schemas import ACTION_SCHEMA, TRACK_SCHEMA
from pipelines.clean import clean_and_resample
from pipelines.detector import candidate_table, detect_actions, flight_candidates
from pipelines.detector_model import DetectorModel, label_candidates, load_default, train
from pipelines.surveillance import Surveillance, degrade_tracks

T0 = pd.Timestamp("2024-03-01T12:00:00Z")
LAT0, LON0 = 51.0, 5.0
N = 1800                       # 30 min at 1 s, as the simulator records
TURN_DPS, SPEED_KTPS, VS_FPM = 1.2, 0.55, 1500.0
T_MAN = 900.0                  # the clearance


def fly(fid, *, hdg=None, spd=None, alt=None, wps=None, direct_at=None, direct_to=None, alt0=33000.0, vs0=0.0,
        target0=None, gs0=450.0):
    """A 1 s track: a straight flight (or route ``wps`` [(x, y) NM], flown direct to the active waypoint), with at
    T_MAN a heading change ``hdg`` (deg), a speed step ``spd`` (kt) or a new level ``alt`` (ft), climbing and
    descending at constant calibrated airspeed (:func:`constant_cas`); ``vs0``/``target0``:
    climbing from the start towards ``target0``; ``direct_to``: index of the waypoint to fly direct to at ``direct_at``."""
    t = np.arange(N, dtype=float)
    trk, gs, a = np.empty(N), np.empty(N), np.empty(N)
    x = y = 0.0
    xs, ys = np.empty(N), np.empty(N)
    cur_trk, cur_gs, cur_alt, vs = 90.0, gs0, alt0, vs0
    target_alt = target0 if target0 is not None else alt0
    sel_trk, sel_gs, leg = cur_trk, gs0, 0
    for i in range(N):
        if i == T_MAN:
            if hdg is not None:
                sel_trk, wps = cur_trk + hdg, None
            if spd is not None:
                sel_gs = cur_gs + spd
            if alt is not None:
                target_alt = alt
        if wps is not None:
            if direct_at is not None and i == direct_at:
                leg = direct_to
            while leg < len(wps) - 1 and np.hypot(wps[leg][0] - x, wps[leg][1] - y) < 1.0:
                leg += 1
            sel_trk = float(np.degrees(np.arctan2(wps[leg][0] - x, wps[leg][1] - y)))
        cur_trk += float(np.clip(wrap180(sel_trk - cur_trk), -TURN_DPS, TURN_DPS))
        cur_gs += float(np.clip(sel_gs - cur_gs, -SPEED_KTPS, SPEED_KTPS))
        d = target_alt - cur_alt
        vs = float(np.sign(d) * min(abs(d) * 60, VS_FPM))
        cur_alt += vs / 60
        trk[i], gs[i], a[i] = cur_trk % 360, cur_gs, cur_alt
        vx, vy = velocity_kt(cur_gs, cur_trk)
        x, y = x + vx / 3600, y + vy / 3600
        xs[i], ys[i] = x, y
    lat, lon = from_local_nm(xs, ys, LAT0, LON0)
    return constant_cas(pd.DataFrame({"time": T0 + pd.to_timedelta(t, unit="s"), "flight_id": fid, "callsign": fid,
                                      "lat_deg": lat, "lon_deg": lon, "alt_ft": a, "gs_kt": gs, "trk_deg": trk,
                                      "vs_fpm": np.gradient(a) * 60, "source": "test"}), alt0)


def constant_cas(tr: pd.DataFrame, ref_alt_ft: float) -> pd.DataFrame:
    """The track flown as aircraft do (no wind): the calibrated airspeed its ground speed would be at
    ``ref_alt_ft`` held through climbs and descents (the true airspeed changes with the altitude), positions
    integrated again from the first one. Level flight at ``ref_alt_ft`` is unchanged."""
    from atc_il.units import tas_to_cas_kt
    alt = tr["alt_ft"].to_numpy(float)
    if np.all(alt == ref_alt_ft):
        return tr
    cas = tas_to_cas_kt(tr["gs_kt"].to_numpy(float), ref_alt_ft)
    grid = np.linspace(100.0, 700.0, 6001)
    gs = np.array([np.interp(c, tas_to_cas_kt(grid, a), grid) for c, a in zip(cas, alt)])
    vx, vy = velocity_kt(gs, tr["trk_deg"].to_numpy(float))
    x0, y0 = to_local_nm(tr["lat_deg"].iloc[0], tr["lon_deg"].iloc[0], LAT0, LON0)
    dt = np.r_[0.0, np.diff((tr["time"] - tr["time"].iloc[0]).dt.total_seconds().to_numpy())]
    lat, lon = from_local_nm(x0 + np.cumsum(vx * dt) / 3600, y0 + np.cumsum(vy * dt) / 3600, LAT0, LON0)
    return tr.assign(gs_kt=gs, lat_deg=lat, lon_deg=lon)


ROUTE = [(30.0, 0.0), (60.0, 4.0), (90.0, -3.0), (120.0, 5.0), (150.0, -2.0), (180.0, 3.0), (210.0, -6.0),
         (240.0, 4.0), (270.0, 0.0)]      # waypoints 4 min apart, a few NM off the straight line
T_DCT = 1080.0                          # 2 min after passing the 4th waypoint


def plans(fids):
    lat, lon = from_local_nm(np.array([p[0] for p in ROUTE]), np.array([p[1] for p in ROUTE]), LAT0, LON0)
    return pd.concat([pd.DataFrame({"flight_id": f, "seq": np.arange(len(ROUTE)), "waypoint": [f"{f}W{i}" for i in range(len(ROUTE))],
                                    "lat_deg": lat, "lon_deg": lon, "alt_ft": 33000.0}) for f in fids], ignore_index=True)


CASES = {   # flight -> (track, true type, time of the clearance)
    "CLIMB": (lambda: fly("CLIMB", alt=35000.0), "altitude", T_MAN),
    "DESC": (lambda: fly("DESC", alt=31000.0), "altitude", T_MAN),
    "LEVOFF": (None, "altitude", None),        # levelled_off()
    "SLOW": (lambda: fly("SLOW", spd=-10.0), "speed", T_MAN),
    "TURN": (lambda: fly("TURN", hdg=20.0), "heading", T_MAN),
    "DCT": (lambda: fly("DCT", wps=[(p[0], p[1]) for p in ROUTE], direct_at=int(T_DCT), direct_to=6), "direct_to", T_DCT),
}


def levelled_off() -> tuple[pd.DataFrame, float]:
    """The track begins at 600 s climbing through FL300 at 1500 ft/min; cleared at 700 s to stop at FL340, which it
    reaches at 760 s: only the level-off shows."""
    tr = fly("LEVOFF").iloc[600:].reset_index(drop=True)
    t = np.arange(600, N, dtype=float)
    tr["alt_ft"] = np.minimum(30000.0 + VS_FPM / 60 * (t - 600), 34000.0)
    tr["vs_fpm"] = np.where(tr["alt_ft"] < 34000.0, VS_FPM, 0.0)
    return constant_cas(tr, 33000.0), 700.0


def resampled(tracks: pd.DataFrame, interval: float, kinematics: str, seed: int = 0) -> pd.DataFrame:
    surv = Surveillance(interval_s=interval, pos_noise_nm={4.0: 0.01, 10.0: 0.03, 30.0: 0.05}[interval],
                        kinematics=kinematics)
    plots = degrade_tracks(tracks, surv, np.random.default_rng(seed))
    cfg = PipelineConfig.model_validate({"clean": {"max_gap_s": max(60.0, 3 * interval)}})
    return clean_and_resample(plots, cfg)[0]


def all_cases() -> tuple[pd.DataFrame, pd.DataFrame]:
    tracks, truth = [], []
    for fid, (make, kind, t) in CASES.items():
        if fid == "LEVOFF":
            tr, t = levelled_off()
        else:
            tr = make()
        tracks.append(tr)
        truth.append((fid, T0 + pd.Timedelta(seconds=float(t)), kind))
    tracks.append(fly("STRAIGHT"))
    return pd.concat(tracks, ignore_index=True), pd.DataFrame(truth, columns=["flight_id", "time", "action_type"])


# ---------------------------------------------------------------- surveillance re-sampling
def test_degrade_tracks_interval_quantisation_and_kinematics():
    tr = fly("A", alt=34000.0)
    rng = np.random.default_rng(3)
    plots = degrade_tracks(tr, Surveillance(interval_s=30.0, kinematics="derived"), rng)
    dt = plots["time"].diff().dt.total_seconds().dropna()
    assert np.allclose(dt, 30.0, atol=0.01) and 55 <= len(plots) <= 60
    assert (plots["alt_ft"] % 100 == 0).all()
    assert plots[["gs_kt", "trk_deg", "vs_fpm"]].isna().all().all()
    x, y = to_local_nm(plots["lat_deg"].to_numpy(), plots["lon_deg"].to_numpy(), LAT0, LON0)
    assert 0.02 < np.std(y[:20] - np.mean(y[:20])) < 0.1       # 0.05 NM of noise across a straight eastbound track
    given = degrade_tracks(tr, Surveillance(interval_s=4.0, pos_noise_nm=0.0, kinematics="given"), np.random.default_rng(3))
    assert given["gs_kt"].between(440, 470).all() and given["trk_deg"].notna().all()     # 450 kt, +8 kt at FL340
    again = degrade_tracks(tr, Surveillance(interval_s=30.0, kinematics="derived"), np.random.default_rng(3))
    pd.testing.assert_frame_equal(plots, again)
    with pytest.raises(ConfigError):
        Surveillance(kinematics="guessed")


# ---------------------------------------------------------------- the shipped model on simulated manoeuvres
@pytest.mark.slow
@pytest.mark.parametrize("interval", [4.0, 10.0, 30.0])
@pytest.mark.parametrize("kinematics", ["given", "derived"])
def test_detector_finds_each_manoeuvre(interval, kinematics):
    tracks, truth = all_cases()
    grid = resampled(tracks, interval, kinematics)
    fp = plans(["DCT"])
    det = detect_actions(grid, fp, load_default())
    assert list(det.columns) == ACTION_SCHEMA.names
    thr = det["action_type"].map({"altitude": "altitude", "speed": "speed"}).fillna("track").map(load_default().thresholds)
    assert (det["confidence"] <= 1.0).all() and (det["confidence"] >= thr).all()
    tol = 60.0 + 2 * interval
    for fid, t, kind in truth.itertuples(index=False):
        if kind == "direct_to":
            continue          # below
        got = det[(det["flight_id"] == fid) & (det["action_type"] == kind)]
        err = (got["time"] - t).dt.total_seconds().abs()
        assert (err <= tol).any(), f"{fid} {kind} at {interval} s ({kinematics}): {det[det['flight_id'] == fid].to_dict('records')}"
        others = det[(det["flight_id"] == fid) & ~det.index.isin(got.index[err <= tol])]
        assert others.empty, others.to_dict("records")          # nothing else on that flight
    assert not (det["flight_id"] == "STRAIGHT").any()
    assert not ((det["flight_id"] == "DCT") & (det["action_type"] == "heading")).any()   # route turns are the plan
    # the direct-to (a 7 degree turn 2 min after a route turn, to the 3rd waypoint ahead): found, with its waypoint,
    # and the plan's own turns on that flight are not
    dct = det[det["flight_id"] == "DCT"]
    t_dct = T0 + pd.Timedelta(seconds=T_DCT)
    assert dct["action_type"].tolist() == ["direct_to"] and dct["waypoint"].tolist() == ["DCTW6"], dct.to_dict("records")
    assert abs((dct["time"].iloc[0] - t_dct).total_seconds()) <= tol
    cand = candidate_table(flight_candidates(grid[grid["flight_id"] == "DCT"], fp))
    near = cand[(cand["signal"] == "track") & ((cand["time"] - t_dct).dt.total_seconds().abs() <= tol)]
    assert len(near) and set(near["waypoint"]) <= {f"DCTW{i}" for i in range(4, 9)}


# ---------------------------------------------------------------- model format and retraining
def _tiny_training_set():
    tracks, truth = all_cases()
    cands, labels = [], []
    for s, iv in enumerate((4.0, 10.0, 30.0)):
        c = candidate_table(flight_candidates(resampled(tracks, iv, "derived", seed=s), plans(["DCT"])))
        labels.append(label_candidates(c, truth, 60.0 + 2 * iv))
        cands.append(c.assign(flight_id=c["flight_id"] + f"@{iv:g}"))
    return pd.concat(cands, ignore_index=True), pd.concat(labels, ignore_index=True)


def test_model_file_round_trip_matches_sklearn_and_loads_no_code(tmp_path):
    cand, lab = _tiny_training_set()
    # enough of each class: repeat the candidates under other flight ids (both halves of the split)
    reps = [cand.assign(flight_id=cand["flight_id"] + f"#{k}") for k in range(12)]
    cand_r = pd.concat(reps, ignore_index=True)
    lab_r = pd.concat([lab if k % 4 else pd.Series("none", index=lab.index) for k in range(12)], ignore_index=True)
    model, rep = train(cand_r, lab_r, max_iter=20)
    assert max(rep["sklearn_check"].values()) < 1e-9
    path = model.save(tmp_path / "m.npz")
    again = DetectorModel.load(path)
    k1, c1 = model.classify(cand)
    k2, c2 = again.classify(cand)
    assert (k1 == k2).all() and np.allclose(c1, c2) and ((c2 >= 0) & (c2 <= 1)).all()
    assert again.thresholds == model.thresholds and all(0.2 <= t <= 0.8 for t in model.thresholds.values())
    np.savez(tmp_path / "evil.npz", header=np.array([{"format": "x"}], dtype=object))
    with pytest.raises(ConfigError):
        DetectorModel.load(tmp_path / "evil.npz")         # an object array would need pickle: refused
    (tmp_path / "junk.npz").write_bytes(b"not a model")
    with pytest.raises(ConfigError):
        DetectorModel.load(tmp_path / "junk.npz")


def test_shipped_model_loads_and_is_small():
    from pipelines.detector_model import default_path
    model = load_default()
    assert set(model.signals) == {"altitude", "speed", "track"}
    assert default_path().stat().st_size < 600 * 1024


def test_actions_stage_with_learned_detector_and_cli_help(tmp_path):
    from typer.testing import CliRunner

    from atc_il_cli.cli import app
    from pipelines.actions import run
    tracks = resampled(pd.concat([CASES["TURN"][0](), fly("STRAIGHT")]), 10.0, "given")
    write_partitioned(tracks, TRACK_SCHEMA, tmp_path / "tracks")
    s = run(tmp_path / "tracks", tmp_path, detector="learned")
    assert s["detector"] == "learned"
    act = read_table(tmp_path / "actions", ACTION_SCHEMA)
    assert act["action_type"].tolist() == ["heading"] and act["flight_id"].tolist() == ["TURN"]
    with pytest.raises(ConfigError):
        run(tmp_path / "tracks", tmp_path, detector="magic")
    runner = CliRunner()
    for cmd in (["actions", "--help"], ["train-detector", "--help"]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 0 and "detector" in res.output


def test_bearing_helper_consistency():
    # the direct-to case's target waypoint lies off the current leg: its track change is a few degrees
    lat, lon = from_local_nm(np.array([ROUTE[7][0]]), np.array([ROUTE[7][1]]), LAT0, LON0)
    assert abs(float(wrap180(bearing_deg(LAT0, LON0, lat[0], lon[0]) - 90.0))) < 5


# ---------------------------------------------------------------- flights without a flight plan
def test_noplan_training_set_keeps_route_turns_as_negatives():
    from pipelines.detector_model import PLAN_FEATURES, no_plan, noplan_training_set, without_plans
    cand = pd.DataFrame({"flight_id": ["A"] * 4, "signal": ["track"] * 3 + ["speed"],
                         **{f: [0.2, 5.0, 0.3, 1.0] for f in PLAN_FEATURES}})
    lab = pd.Series(["none", "heading", "direct_to", "speed"])      # row 0: the plan's own turn at a waypoint
    c, y = noplan_training_set(cand, lab)
    assert no_plan(c).all() and c[list(PLAN_FEATURES)].isna().all().all()
    assert y.tolist() == ["none", "heading", "heading", "speed"]    # the route turn stays, a negative
    c2, y2 = without_plans(cand, lab)       # the with-plan model's plan-less copies leave the route turn out
    assert y2.tolist() == ["heading", "heading", "speed"] and len(c2) == 3


def test_model_without_plan_models_loads_and_falls_back(tmp_path):
    cand, lab = _tiny_training_set()
    reps = [cand.assign(flight_id=cand["flight_id"] + f"#{k}") for k in range(12)]
    model, _ = train(pd.concat(reps, ignore_index=True),
                     pd.concat([lab if k % 4 else pd.Series("none", index=lab.index) for k in range(12)],
                               ignore_index=True), max_iter=20)
    assert set(model.noplan) == {"altitude", "speed", "track"} and model.noplan["track"].classes == ("none", "heading")
    again = DetectorModel.load(model.save(tmp_path / "m.npz"))
    from pipelines.detector_model import PLAN_FEATURES
    bare = cand.copy()
    bare.loc[:, list(PLAN_FEATURES)] = np.nan
    for c in (cand, bare):
        k1, c1 = model.classify(c)
        k2, c2 = again.classify(c)
        assert (k1 == k2).all() and np.allclose(c1, c2)
    assert not (model.classify(bare)[0] == "direct_to").any()      # nothing names a waypoint without the plan
    assert again.thresholds_noplan == model.thresholds_noplan
    assert np.allclose(again.thresholds_for(bare), bare["signal"].map(
        {"altitude": "altitude", "speed": "speed", "track": "track"}).map(model.thresholds_noplan))
    old = DetectorModel(model.signals, model.meta)          # a model from before the plan-less one: one for both
    old_again = DetectorModel.load(old.save(tmp_path / "old.npz"))
    assert old_again.noplan == {} and old_again.thresholds_noplan == old.thresholds
    assert (old_again.classify(bare)[0] == old.classify(bare)[0]).all()


def test_shipped_model_without_plan_tells_a_vector_from_route_turns():
    """No flight plan given: a 20 degree vector on a straight flight is a heading; a flight along a route whose
    turns (7-15 degrees, one every 4 minutes at its waypoints) come at a regular cadence is not reported turn by turn."""
    tracks = pd.concat([CASES["TURN"][0](), fly("ROUTE", wps=[(p[0], p[1]) for p in ROUTE])], ignore_index=True)
    grid = resampled(tracks, 30.0, "given")
    det = detect_actions(grid, None, load_default())
    vec = det[det["flight_id"] == "TURN"]
    assert vec["action_type"].tolist() == ["heading"], vec.to_dict("records")
    assert abs((vec["time"].iloc[0] - (T0 + pd.Timedelta(seconds=T_MAN))).total_seconds()) <= 120
    cand = candidate_table(flight_candidates(grid[grid["flight_id"] == "ROUTE"], None))
    n_turns = int((cand["signal"] == "track").sum())
    route = det[(det["flight_id"] == "ROUTE") & (det["action_type"] == "heading")]
    assert n_turns >= 4 and len(route) <= n_turns // 2, (n_turns, route.to_dict("records"))
