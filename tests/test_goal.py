"""Goal conditioning: exit point and level features, spec unchanged when off, no leakage with it on, flight
plans written by the simulator, the expert's goal term, and the model controller passing flight plans."""

import numpy as np
import pandas as pd
import pytest

from atc_il.config import DatasetConfig
from atc_il.errors import DataError
from atc_il.geometry import from_local_nm
from pipelines.features import TrackIndex, build_features, feature_spec
from pipelines.goal import GOAL, exits
from pipelines.shards import spec_hash
from tests.helpers import FLIGHTS, STEP, actions_frame, grid_tracks, pair_samples

GOAL_CFG = DatasetConfig(history_steps=4, neighbours=2, recent_clearances=2, goal=True, controller_history=False)
# the default feature spec's hash before goal conditioning existed (commit 1885fbc): off must keep it
DEFAULT_SPEC_HASH = "4a2d333dba1553e7"


def _plans():
    """A: exit 30 NM right of its track line at y = 77.5 (100 NM ahead at 10:05), level 37000 ft;
    B: exit straight ahead, no level given; nobody else has a plan."""
    lat, lon = from_local_nm(np.array([30.0, 0.0]), np.array([77.5, -100.0]), 50.0, 5.0)
    return pd.DataFrame({"flight_id": ["A", "A", "B"], "seq": [0, 1, 0], "waypoint": ["A0", "A1", "B0"],
                         "lat_deg": [0.0 + lat[1], lat[0], lat[1]], "lon_deg": [lon[1], lon[0], lon[1]],
                         "alt_ft": [np.nan, 37000.0, np.nan]})


def _goal_of(geometry: np.ndarray, ac: int) -> dict:
    names = [n for n, _, _ in GOAL]
    off = 9                                     # GEOM without `valid`
    return {n.split("_", 1)[1]: float(geometry[off + i]) for i, n in enumerate(names) if n.startswith(f"goal{ac}_")}


def test_goal_features_for_a_hand_made_case():
    tracks = grid_tracks("2024-01-01T10:00Z", FLIGHTS)
    s = pair_samples(tracks, "2024-01-01T10:05:00Z", "2024-01-01T10:05:00Z")
    g = build_features(s, TrackIndex.build(tracks, STEP), actions_frame([]).iloc[:0], GOAL_CFG, _plans())["geometry"]
    spec = feature_spec(GOAL_CFG, STEP)["tensors"]["geometry"]
    assert g.shape == (1, 4, 9 + len(GOAL) + 1) and spec["shape"] == [4, 26]
    assert [f["name"] for f in spec["features"]][-1] == "valid" and g[0, :, -1].tolist() == [1, 1, 1, 1]
    a, b = _goal_of(g[0, -1], 1), _goal_of(g[0, -1], 2)
    # A flies north at (0, -22.5): its exit is 30 NM to the right and 100 NM ahead, 2000 ft above
    assert a["x_nm"] == pytest.approx(30, abs=0.5) and a["y_nm"] == pytest.approx(100, abs=0.5)
    assert a["dist_nm"] == pytest.approx(np.hypot(30, 100), abs=0.5)
    assert a["brg_sin"] == pytest.approx(30 / np.hypot(30, 100), abs=0.01) and a["brg_cos"] > 0.9
    assert a["dalt_ft"] == pytest.approx(2000) and a["level_known"] == 1 and a["known"] == 1
    # B flies south at (0, 22.5) towards (0, -100): straight ahead of it, behind aircraft 1 in the pair frame
    assert b["y_nm"] == pytest.approx(-122.5, abs=0.5) and b["brg_cos"] == pytest.approx(1, abs=1e-3)
    assert b["known"] == 1 and b["level_known"] == 0 and b["dalt_ft"] == 0
    # earlier steps: the distance to the exit was longer by the distance flown (5 s at 450 kt per step)
    assert _goal_of(g[0, 0], 1)["y_nm"] - a["y_nm"] == pytest.approx(3 * 450 * 5 / 3600, abs=0.05)
    # a flight without a plan: goal unknown, zeros, not an error; no plans at all: the same
    nop = build_features(s, TrackIndex.build(tracks, STEP), actions_frame([]).iloc[:0], GOAL_CFG, _plans().iloc[2:])
    assert set(_goal_of(nop["geometry"][0, -1], 1).values()) == {0.0}
    none = build_features(s, TrackIndex.build(tracks, STEP), actions_frame([]).iloc[:0], GOAL_CFG, None)
    assert not none["geometry"][0, :, 9:-1].any()
    with pytest.raises(DataError, match="lon_deg"):
        exits(_plans().drop(columns="lon_deg"), "plans.csv")


def test_goal_off_leaves_the_feature_spec_unchanged():
    off = feature_spec(DatasetConfig(controller_history=False), 5.0)
    assert spec_hash(off) == DEFAULT_SPEC_HASH
    assert spec_hash(feature_spec(DatasetConfig(goal=True, controller_history=False), 5.0)) != DEFAULT_SPEC_HASH
    names = [f["name"] for f in feature_spec(DatasetConfig(goal=True, controller_history=False), 5.0)["tensors"]["geometry"]["features"]]
    units = {f["name"]: (f["unit"], f["normalise"]) for f in feature_spec(DatasetConfig(goal=True, controller_history=False), 5.0)["tensors"]["geometry"]["features"]}
    assert names[:9] == [f["name"] for f in off["tensors"]["geometry"]["features"]][:9] and names[-1] == "valid"
    assert units["goal1_dalt_ft"] == ("ft", True) and units["goal2_known"] == ("1", False)


def test_goal_features_use_only_the_past():
    """The leakage test of test_dataset with goal on: perturb everything after the decision time."""
    cfg = DatasetConfig(history_steps=12, neighbours=3, recent_clearances=4, goal=True, controller_history=False)
    tracks = grid_tracks("2024-01-01T10:00Z", FLIGHTS)
    samples = pair_samples(tracks, "2024-01-01T10:03:00Z", "2024-01-01T10:05:00Z")
    t_dec = pd.Timestamp("2024-01-01T10:05:00Z")
    base = build_features(samples, TrackIndex.build(tracks, STEP), actions_frame([]).iloc[:0], cfg, _plans())
    assert base["geometry"][:, :, 9:-1].any()
    pert = tracks.copy()
    later = pert["time"] > t_dec
    rng = np.random.default_rng(1)
    for col in ("lat_deg", "lon_deg", "alt_ft", "gs_kt", "trk_deg", "vs_fpm"):
        pert.loc[later, col] = pert.loc[later, col] + rng.normal(0, 1, later.sum())
    after = build_features(samples, TrackIndex.build(pert, STEP), actions_frame([]).iloc[:0], cfg, _plans())
    for name in base:
        np.testing.assert_array_equal(base[name], after[name], err_msg=name)
    pert.loc[pert["time"] == t_dec, "alt_ft"] += 500        # the check can fail: the decision step matters
    moved = build_features(samples, TrackIndex.build(pert, STEP), actions_frame([]).iloc[:0], cfg, _plans())
    assert not np.array_equal(base["geometry"][-1], moved["geometry"][-1])


def test_expert_goal_term_and_scenario_exit_levels():
    from simulator_adapters.atco import AtcoParams, SyntheticAtco
    from simulator_adapters.controllers import flight_plan_rows
    from simulator_adapters.scenarios import generate
    a = {"flight_id": "A", "lat_deg": 50.0, "lon_deg": 5.0, "alt_ft": 35000.0, "trk_deg": 0.0, "vs_fpm": 0.0, "gs_kt": 450.0}
    b = {**a, "flight_id": "B", "lat_deg": 50.5, "trk_deg": 180.0}
    conf = {"tcpa_s": 200.0}
    plans = {"A": {"route": [("X", 51.0, 6.0, None)], "level_ft": 35000.0, "exit_level_ft": 31000.0}}

    def p_climb_right(params):
        atco = SyntheticAtco(params, style="vertical_first")
        atco.reset("s", 0)
        atco.plans = plans
        joint = atco.distribution(conf, a, b, now=0.0, shown_s=60.0)["joint"]
        alt = {v: q for k, t, v, q in joint if k == 0 and t == "altitude"}
        hdg = {v: q for k, t, v, q in joint if k == 0 and t == "heading"}
        return sum(q for v, q in alt.items() if v > 0) / sum(alt.values()), \
            sum(q for v, q in hdg.items() if v > 0) / sum(hdg.values())
    up0, right0 = p_climb_right(AtcoParams(goal_gain=0.0))
    up, right = p_climb_right(AtcoParams())
    assert up0 == pytest.approx(0.5) and up == pytest.approx(1 / (1 + np.exp(AtcoParams().goal_gain)))     # exit level below: descend
    assert right0 == pytest.approx(0.5) and right > 0.6                                  # exit to the north-east
    rows = flight_plan_rows(plans, prefix="s/")
    assert rows[["flight_id", "seq", "alt_ft"]].values.tolist() == [["s/A", 0, 31000.0]]
    sc = generate(seed=3, conflicts=4)
    off = [f for f in sc.flights if f.exit_alt_ft is not None]
    assert 0 < len(off) < len(sc.flights) and all(abs(f.exit_level_ft - f.alt_ft) >= 1000 for f in off)
    same = generate(seed=3, conflicts=4, exit_level_fraction=0.0)
    assert [(f.flight_id, f.alt_ft, f.cleared_alt_ft) for f in same.flights] == \
        [(f.flight_id, f.alt_ft, f.cleared_alt_ft) for f in sc.flights]      # the share draws from its own stream


def test_model_controller_passes_flight_plans(tmp_path):
    """A goal-conditioned policy (untrained, real) in the controller: the observation's flight plans reach
    the feature builder as contract rows, and change the features."""
    from pipelines.conflicts import detect_snapshot
    from simulator_adapters.controllers import Observation
    from simulator_adapters.model_controller import ModelController
    from tests.helpers import untrained_policy

    tracks = grid_tracks("2024-01-01T10:00Z", FLIGHTS, minutes=6)
    samples = pair_samples(tracks, "2024-01-01T10:05:00Z", "2024-01-01T10:05:00Z")
    feats = build_features(samples, TrackIndex.build(tracks, STEP), actions_frame([]).iloc[:0], GOAL_CFG, _plans())
    untrained_policy(GOAL_CFG, feats, STEP, encoder="gru", name="goal-tiny").save(tmp_path / "policy")
    ctl = ModelController(str(tmp_path / "policy"))
    seen = []
    real = ctl.predictor.predict_samples

    def spy(*args, **kwargs):
        seen.append(kwargs.get("flight_plans"))
        return real(*args, **kwargs)
    ctl.predictor.predict_samples = spy
    lat, lon = from_local_nm(np.array([30.0]), np.array([77.5]), 50.0, 5.0)
    plans = {"A": {"route": [("A1", float(lat[0]), float(lon[0]), None)], "level_ft": 35000.0, "exit_level_ft": 37000.0}}
    ctl.reset("s", 0)
    for t, frame in tracks[tracks["flight_id"].isin(["A", "B"])].groupby("time"):
        conf = detect_snapshot(frame["flight_id"].to_numpy(), frame["lat_deg"].to_numpy(), frame["lon_deg"].to_numpy(),
                               frame["alt_ft"].to_numpy(), frame["gs_kt"].to_numpy(), frame["trk_deg"].to_numpy(),
                               frame["vs_fpm"].to_numpy())
        ctl.decide(Observation(t, 0.0, frame.reset_index(drop=True), conf, plans, pd.DataFrame()))
    assert seen and all(p is not None for p in seen)
    fp = seen[-1]
    assert fp[["flight_id", "seq", "waypoint", "alt_ft"]].values.tolist() == [["A", 0, "A1", 37000.0]]
    assert seen[0] is seen[-1]                  # converted once per scenario's plans


def test_build_reads_flight_plans_when_goal_is_on(tmp_path):
    from atc_il.config import PipelineConfig
    from atc_il.io import atomic_write_table
    from atc_il.schemas import FLIGHT_PLAN_SCHEMA, to_table
    from pipelines.dataset import build
    from pipelines.shards import load_split, read_spec
    from simulator_adapters.demonstrations import flight_plans
    from simulator_adapters.scenarios import generate
    from tests.helpers import workspace

    ws = workspace(tmp_path)
    cfg = PipelineConfig(dataset=DatasetConfig(history_steps=4, neighbours=2, recent_clearances=2, goal=True, controller_history=False))
    with pytest.raises(DataError, match="flight_plans.parquet"):
        build(ws, config=cfg)
    atomic_write_table(to_table(_plans().assign(time=pd.NaT), FLIGHT_PLAN_SCHEMA, "plans"), ws / "flight_plans.parquet")
    build(ws, config=cfg)
    spec = read_spec(ws / "dataset")
    assert spec["tensors"]["geometry"]["shape"] == [4, 26] and len(spec["normalisation"]["geometry"]["mean"]) == 26
    g = load_split(ws / "dataset", "train", as_torch=False)["geometry"]
    assert (g[:, -1, 9 + [n for n, _, _ in GOAL].index("goal1_known")] == 1).all()
    # the simulator's plans are contract rows with the generated flights' exit levels
    sc = generate(name="s", seed=3, conflicts=2, duration_s=600)
    fp = to_table(flight_plans([sc]), FLIGHT_PLAN_SCHEMA, "simulated plans").to_pandas()
    last = fp.sort_values("seq").groupby("flight_id").last()
    want = {f"s/{f.flight_id}": f.exit_level_ft for f in sc.flights}
    assert last["alt_ft"].to_dict() == want
