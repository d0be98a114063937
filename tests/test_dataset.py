"""Observation histories: shapes, labels, splits, normalisation on train only, and no label leakage."""

import numpy as np
import pandas as pd
import pytest

from atc_il.config import DatasetConfig, PipelineConfig
from pipelines.dataset import build
from pipelines.features import TrackIndex, build_features
from pipelines.shards import load_split, read_spec
from tests.helpers import FLIGHTS, STEP, actions_frame, grid_tracks, pair_samples, workspace


@pytest.mark.parametrize("extra", [{}, {"pair_history": True}], ids=["default", "pair_history"])
def test_features_use_only_the_past(extra):
    """Perturb every track point and action after the decision time: the sample's features must not change."""
    cfg = DatasetConfig(history_steps=12, neighbours=3, recent_clearances=4, **extra)
    tracks = grid_tracks("2024-01-01T10:00Z", FLIGHTS)
    actions = actions_frame([("2024-01-01T10:02:00Z", "N1", 20.0), ("2024-01-01T10:02:30Z", "B", 10.0),
                             ("2024-01-01T10:05:00Z", "A", -30.0), ("2024-01-01T10:06:00Z", "B", 25.0)])
    actions["against_flight_id"] = actions["flight_id"].map({"N1": "A", "A": "B", "B": "A"})
    samples = pair_samples(tracks, "2024-01-01T10:03:00Z", "2024-01-01T10:05:00Z")
    t_dec = pd.Timestamp("2024-01-01T10:05:00Z")
    base = build_features(samples, TrackIndex.build(tracks, STEP), actions, cfg)

    rng = np.random.default_rng(1)
    pert = tracks.copy()
    later = pert["time"] > t_dec
    for col in ("lat_deg", "lon_deg", "alt_ft", "gs_kt", "trk_deg", "vs_fpm"):
        pert.loc[later, col] = pert.loc[later, col] + rng.normal(0, 1, later.sum())
    pert.loc[later, "cfl_ft"] = 30000.0
    newcomer = grid_tracks("2024-01-01T10:05:05Z", {"NEW": (1, 1, 45, 300, 35000)}, minutes=5)  # appears later
    pert = pd.concat([pert, newcomer], ignore_index=True)
    pert_actions = actions.copy()
    pert_actions.loc[pert_actions["time"] >= t_dec, "value"] = 99.0          # the label's own action and later
    pert_actions.loc[pert_actions["time"] >= t_dec, "against_flight_id"] = "N2"
    pert_actions = pd.concat([pert_actions, actions_frame([("2024-01-01T10:05:30Z", "N2", 10.0)])], ignore_index=True)
    after = build_features(samples, TrackIndex.build(pert, STEP), pert_actions.sort_values("time"), cfg)
    for name in base:
        np.testing.assert_array_equal(base[name], after[name], err_msg=name)
    if extra.get("pair_history"):       # the feature has something to leak: B's clearance against A at 10:02:30
        assert (base["geometry"][:, -1, -2] == (samples["time"] - pd.Timestamp("2024-01-01T10:02:30Z"))
                .dt.total_seconds().clip(upper=cfg.history_cap_s).to_numpy()).all()     # pair_clr_ac2_s

    # the check can fail: perturbing the decision step itself changes the features
    now = pert["time"] == t_dec
    pert.loc[now, "alt_ft"] += 500
    moved = build_features(samples, TrackIndex.build(pert, STEP), pert_actions.sort_values("time"), cfg)
    assert not np.array_equal(base["pair"][-1], moved["pair"][-1])


def test_frame_relative_to_pair_and_neighbours():
    cfg = DatasetConfig(history_steps=6, neighbours=3, recent_clearances=2, neighbour_range_nm=80)
    tracks = grid_tracks("2024-01-01T10:00Z", FLIGHTS)
    samples = pair_samples(tracks, "2024-01-01T10:05:00Z", "2024-01-01T10:05:00Z")
    f = build_features(samples, TrackIndex.build(tracks, STEP), actions_frame([]).iloc[:0], cfg)
    pair = f["pair"][0]                     # (H, 2, F)
    assert pair.shape == (6, 2, 10)
    last = pair[-1]
    # A flies north at x=0 towards B: midpoint origin, A's track along +y, B straight ahead on the y axis
    assert last[0, 0] == pytest.approx(0, abs=1e-3) and last[0, 1] < 0 < last[1, 1]
    assert last[0, 1] == pytest.approx(-last[1, 1], rel=1e-3)
    assert last[0, 5] == pytest.approx(1.0) and last[1, 5] == pytest.approx(-1.0)     # cos(relative track)
    nb = f["neighbours"][0]
    assert nb[-1, :, -1].tolist() == [1.0, 1.0, 0.0]        # N1 and N2 are neighbours, FAR is out of range: masked
    geom = f["geometry"][0, -1]
    assert geom[0] > 0 and geom[1] == pytest.approx(0, abs=1e-3)   # tcpa > 0, dcpa 0 (head-on)
    assert geom[5] == pytest.approx(900, rel=1e-3)                  # closure 900 kt


def test_build_shards_labels_splits_and_stats(tmp_path):
    ws = workspace(tmp_path)
    cfg = PipelineConfig(dataset=DatasetConfig(history_steps=8, neighbours=2, recent_clearances=3))
    summary = build(ws, config=cfg)
    assert summary["samples"] == 3 * 25 and summary["labels"] == 3 and summary["positive samples"] == 3
    spec = read_spec(ws / "dataset")
    keys = [set(spec["splits"][s]["keys"]) for s in ("train", "val", "test")]
    assert all(len(k) == 1 for k in keys) and len(set.union(*keys)) == 3        # one day per split, disjoint
    train = load_split(ws / "dataset", "train")
    assert tuple(train["pair"].shape) == (25, 8, 2, 10)
    assert tuple(train["neighbours"].shape) == (25, 8, 2, 10)
    assert tuple(train["clearances"].shape) == (25, 3, 13)
    pos = np.flatnonzero(train["label_act"].numpy())
    assert len(pos) == 1
    t_label = pd.Timestamp(int(train["time"][pos[0]]), tz="UTC")
    assert t_label.strftime("%H:%M:%S") == "10:04:00"          # the step in which the 10:04:02 action falls
    assert train["label_aircraft"][pos[0]] == 1 and train["label_type"][pos[0]] == 0
    assert float(train["label_value"][pos[0]]) == pytest.approx(30.0)
    # the action appears in the clearances of later samples only
    after = train["clearances"][pos[0] + 1]
    assert after[-1, -1] == 1 and train["clearances"][pos[0]][:, -1].sum() == 0
    # normalisation statistics come from the training split only
    x = train["pair"].numpy().reshape(-1, 10)
    x = x[x[:, -1] > 0.5]
    mean = spec["normalisation"]["pair"]["mean"]
    assert mean[0] == pytest.approx(x[:, 0].mean(), abs=1e-3) and mean[1] == pytest.approx(x[:, 1].mean(), abs=1e-3)
    assert spec["normalisation"]["pair"]["std"][-1] == 1.0      # flags are not normalised


def test_default_feature_spec_hash_is_unchanged():
    """A model's feature spec hash pins its features; moving or retyping the spec must not change it
    (trained policies and served models check it on load)."""
    from atc_il.config import DatasetConfig
    from pipelines.features import feature_spec
    from pipelines.shards import spec_hash
    off = {"controller_history": False}             # the specs from before the controller-history features
    assert spec_hash(feature_spec(DatasetConfig(**off), 5.0)) == "4a2d333dba1553e7"
    assert spec_hash(feature_spec(DatasetConfig(goal=True, **off), 5.0)) == "567091ca0f6852bb"
    assert spec_hash(feature_spec(DatasetConfig(nuisance=True, **off), 5.0)) == "b697eea56e027bb7"
    assert spec_hash(feature_spec(DatasetConfig(), 5.0)) == "cdf2d645866c77dc"   # the default since then


def test_dense_track_lookup_equals_the_binary_search():
    """TrackIndex.lookup's per-flight dense table gives the rows the sorted-key binary search gives, for
    points in gaps, before and after a flight, at unknown codes and off the index's time range."""
    rng = np.random.default_rng(0)
    n_flights, n_t = 40, 300
    codes, tidx = [], []
    for c in range(n_flights):
        start = rng.integers(0, n_t - 50)
        steps = np.arange(start, min(n_t, start + rng.integers(20, 200)))
        steps = steps[rng.random(len(steps)) > 0.1]                      # gaps
        codes.append(np.full(len(steps), c))
        tidx.append(steps)
    codes, tidx = np.concatenate(codes), np.concatenate(tidx)
    perm = rng.permutation(len(codes))
    codes, tidx = codes[perm], tidx[perm]
    ns = 1_700_000_000_000_000_000 + tidx * 5_000_000_000
    cols = {c: rng.random(len(codes)) for c in ("lat_deg", "lon_deg", "alt_ft", "gs_kt", "trk_deg", "vs_fpm", "cfl_ft")}
    idx = TrackIndex.from_arrays(ns, codes, pd.Index([f"F{i:02d}" for i in range(n_flights)]), cols, 5.0)
    assert idx.dense is not None
    q_codes = rng.integers(-2, n_flights + 2, (500, 7))
    q_tidx = rng.integers(-5, idx.n_t + 5, (500, 7))
    fast = idx.lookup(q_codes, q_tidx)
    idx.dense = None                                                        # the binary search
    slow = idx.lookup(q_codes, q_tidx)
    np.testing.assert_array_equal(fast, slow)
    assert (fast >= 0).sum() > 100 and (fast == -1).sum() > 100


def test_one_day_splits_by_hour_and_a_day_split_warns(tmp_path):
    ws = workspace(tmp_path, days=1)
    base = DatasetConfig(history_steps=8, neighbours=2, recent_clearances=3)
    summary = build(ws, config=PipelineConfig(dataset=base))
    assert summary["val samples"] == summary["test samples"] == 0
    assert "val and test split(s) are empty" in summary["split_warning"] and "--split hour" in summary["split_warning"]
    from pipelines.dataset import _split_keys
    times = pd.Series(pd.to_datetime(["2024-01-01T09:59:59Z", "2024-01-01T10:00:00Z", "2024-01-01T10:59:00Z"]))
    keys = _split_keys(pd.DataFrame({"first_detection": times}), None, None, "hour")
    assert keys.tolist() == ["2024-01-01T09", "2024-01-01T10", "2024-01-01T10"]
    summary = build(ws, config=PipelineConfig(dataset=base.model_copy(update={"split": "hour"})))
    assert summary["samples"] == 25 and "split_warning" in summary      # one episode: one hour, still one unit
    assert read_spec(ws / "dataset")["splits"]["train"]["unit"] == "hour"
