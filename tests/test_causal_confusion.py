"""The causal-confusion study's nuisance (dataset.nuisance): spec unchanged when off, indicator values on a
hand-made clearance log, no leakage with it on, data sets without clearances (M = 0), and the model
controller computing it from its own past clearances."""

import numpy as np
import pandas as pd

from atc_il.config import DatasetConfig, PipelineConfig
from atc_il.schemas import action_id
from pipelines.dataset import build
from pipelines.features import GEOM, NUISANCE, TrackIndex, build_features, feature_spec
from pipelines.shards import load_split, read_spec, spec_hash
from tests.helpers import FLIGHTS, STEP, grid_tracks, pair_samples, workspace

DEFAULT_SPEC_HASH = "4a2d333dba1553e7"      # the default feature spec's hash (see tests/test_goal.py)
CFG = DatasetConfig(history_steps=6, neighbours=2, recent_clearances=0, nuisance=True, nuisance_window_s=120, controller_history=False)
NG = len(GEOM) - 1                          # index of manoeuvring_ac1 in geometry


def _log(rows):
    """Clearance log rows (time, flight, type)."""
    df = pd.DataFrame([{"time": pd.Timestamp(t), "flight_id": f, "action_type": k,
                        "value": 0.0 if k == "resume" else 20.0, "unit": "" if k == "resume" else "deg",
                        "source": "clearance_log", "confidence": 1.0} for t, f, k in rows],
                      columns=["time", "flight_id", "action_type", "value", "unit", "source", "confidence"])
    df["action_id"] = [action_id(r.flight_id, r.time, r.action_type) for r in df.itertuples()]
    return df.sort_values("time", kind="stable").reset_index(drop=True)


def test_nuisance_off_leaves_the_feature_spec_unchanged():
    assert spec_hash(feature_spec(DatasetConfig(controller_history=False), 5.0)) == DEFAULT_SPEC_HASH
    on = feature_spec(DatasetConfig(nuisance=True, controller_history=False), 5.0)["tensors"]["geometry"]
    assert spec_hash(feature_spec(DatasetConfig(nuisance=True, controller_history=False), 5.0)) != DEFAULT_SPEC_HASH
    assert [f["name"] for f in on["features"]] == [n for n, _, _ in GEOM[:-1] + NUISANCE] + ["valid"]
    assert on["shape"] == [24, len(GEOM) + 2] and not any(f["normalise"] for f in on["features"][NG:])
    both = [f["name"] for f in feature_spec(DatasetConfig(nuisance=True, goal=True, controller_history=False), 5.0)["tensors"]["geometry"]["features"]]
    assert both[-3:] == ["manoeuvring_ac1", "manoeuvring_ac2", "valid"] and "goal1_known" in both


def test_nuisance_values_on_a_hand_made_log():
    tracks = grid_tracks("2024-01-01T10:00Z", FLIGHTS)
    s = pair_samples(tracks, "2024-01-01T10:05:00Z", "2024-01-01T10:05:00Z")      # steps 10:04:35 .. 10:05:00
    log = _log([("2024-01-01T10:01:00Z", "B", "heading"),        # older than the window at every step
                ("2024-01-01T10:04:00Z", "A", "heading"),        # A manoeuvring ...
                ("2024-01-01T10:04:41Z", "A", "resume"),         # ... until it resumes (from 10:04:45 on)
                ("2024-01-01T10:04:50Z", "B", "altitude"),       # B from the next step on (strictly before)
                ("2024-01-01T10:04:55Z", "N1", "heading"),       # not in the pair
                ("2024-01-01T10:05:00Z", "A", "speed")])         # the decision step's own action: never seen
    g = build_features(s, TrackIndex.build(tracks, STEP), log, CFG)["geometry"][0]
    assert g.shape == (6, len(GEOM) + 2)
    assert g[:, NG].tolist() == [1, 1, 0, 0, 0, 0]              # A: 10:04:35, :40 on; resumed at :41
    assert g[:, NG + 1].tolist() == [0, 0, 0, 0, 1, 1]          # B: from 10:04:55 (strictly after 10:04:50)
    # the window: 10:04:00 + 120 s; a sample two minutes later sees A's heading clearance expire
    late = pair_samples(tracks, "2024-01-01T10:06:05Z", "2024-01-01T10:06:05Z")
    only = _log([("2024-01-01T10:04:00Z", "A", "heading")])
    g2 = build_features(late, TrackIndex.build(tracks, STEP), only, CFG)["geometry"][0]
    assert g2[:, NG].tolist() == [1, 1, 1, 1, 1, 0]             # 10:06:00 is 120 s after: still; 10:06:05 not
    # padding steps (no track) carry no indicator; no clearances at all: zeros
    early = pair_samples(tracks, "2024-01-01T10:00:10Z", "2024-01-01T10:00:10Z")
    g3 = build_features(early, TrackIndex.build(tracks, STEP), _log([("2024-01-01T10:00:00Z", "A", "heading")]), CFG)
    assert g3["geometry"][0, :, -1].tolist() == [0, 0, 0, 1, 1, 1] and g3["geometry"][0, :, NG].tolist() == [0, 0, 0, 0, 1, 1]
    assert not build_features(s, TrackIndex.build(tracks, STEP), log.iloc[:0], CFG)["geometry"][..., NG:-1].any()
    # the other geometry features do not change when the nuisance is on
    off = build_features(s, TrackIndex.build(tracks, STEP), log, CFG.model_copy(update={"nuisance": False}))
    np.testing.assert_array_equal(off["geometry"][0, :, :NG], g[:, :NG])
    np.testing.assert_array_equal(off["geometry"][0, :, -1], g[:, -1])


def test_nuisance_uses_only_the_past():
    """The leakage test with the nuisance on: every clearance at or after the decision time is invisible."""
    cfg = DatasetConfig(history_steps=12, neighbours=3, recent_clearances=4, nuisance=True, controller_history=False)
    tracks = grid_tracks("2024-01-01T10:00Z", FLIGHTS)
    samples = pair_samples(tracks, "2024-01-01T10:03:00Z", "2024-01-01T10:05:00Z")
    t_dec = pd.Timestamp("2024-01-01T10:05:00Z")
    log = _log([("2024-01-01T10:02:00Z", "A", "heading"), ("2024-01-01T10:04:00Z", "A", "resume"),
                ("2024-01-01T10:05:00Z", "B", "heading")])
    base = build_features(samples, TrackIndex.build(tracks, STEP), log, cfg)
    assert base["geometry"][:, :, NG].any()
    later = _log([("2024-01-01T10:05:00Z", "A", "altitude"), ("2024-01-01T10:05:02Z", "B", "heading"),
                  ("2024-01-01T10:06:00Z", "A", "heading")])
    pert = pd.concat([log[log["time"] < t_dec], later], ignore_index=True).sort_values("time", kind="stable")
    after = build_features(samples, TrackIndex.build(tracks, STEP), pert.reset_index(drop=True), cfg)
    for name in base:
        np.testing.assert_array_equal(base[name], after[name], err_msg=name)
    # the check can fail: a clearance just before the decision step changes the decision step's indicator
    moved = pd.concat([log, _log([("2024-01-01T10:04:57Z", "B", "speed")])]).sort_values("time", kind="stable")
    m = build_features(samples, TrackIndex.build(tracks, STEP), moved.reset_index(drop=True), cfg)
    assert m["geometry"][-1, -1, NG + 1] == 1 and base["geometry"][-1, -1, NG + 1] == 0


def test_data_set_without_clearances_builds_loads_and_trains(tmp_path):
    """recent_clearances = 0: an empty tensor is not stored in the shards and loads as (N, 0, F) zeros; the
    mlp and gru encoders take it."""
    import torch

    from models.config import ModelConfig
    from models.data import load_data
    from models.policy import build_policy
    ws = workspace(tmp_path)
    build(ws, config=PipelineConfig(dataset=CFG.model_copy(update={"history_steps": 8})))
    spec = read_spec(ws / "dataset")
    assert spec["tensors"]["clearances"]["shape"] == [0, 13] and spec["tensors"]["geometry"]["shape"] == [8, len(GEOM) + 2]
    tr = load_split(ws / "dataset", "train")
    assert tuple(tr["clearances"].shape) == (25, 0, 13) and tuple(tr["geometry"].shape) == (25, 8, len(GEOM) + 2)
    man = tr["geometry"][:, -1, NG + 1].numpy()                 # B is cleared at 10:04:02 (label at 10:04:00)
    assert tr["label_act"].numpy().tolist().index(1) == 12 and man.tolist() == [0] * 13 + [1] * 12
    obs, _ = load_data(ws / "dataset", "train").batch()
    for enc in ("mlp", "gru"):
        cfg = ModelConfig(name="t", encoder={"name": enc, "hidden": 8, "layers": 1}, vae={"enabled": False},
                          head={"name": "mdn", "hidden": 8, "components": 2})
        with torch.no_grad():
            d = build_policy(cfg, spec).predict(obs)
        assert d.act.shape == (25,)


def test_model_controller_feeds_its_own_clearances_to_the_nuisance(tmp_path):
    """In the closed loop the nuisance comes from the controller's own past clearances (``obs.cleared``)."""
    from pipelines.conflicts import detect_snapshot
    from simulator_adapters.controllers import Observation
    from simulator_adapters.model_controller import ModelController
    from tests.helpers import untrained_policy

    tracks = grid_tracks("2024-01-01T10:00Z", FLIGHTS, minutes=6)
    feats = build_features(pair_samples(tracks, "2024-01-01T10:05:00Z", "2024-01-01T10:05:00Z"),
                           TrackIndex.build(tracks, STEP), _log([]), CFG)
    untrained_policy(CFG, feats, STEP, name="nuis-tiny").save(tmp_path / "policy")
    ctl = ModelController(str(tmp_path / "policy"))
    seen = []
    real = ctl.predictor.features

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out["geometry"][:, -1, NG:-1].copy())
        return out
    ctl.predictor.features = spy
    ctl.reset("s", 0)
    own = _log([("2024-01-01T10:03:00Z", "B", "heading")])
    for t, frame in tracks[tracks["flight_id"].isin(["A", "B"])].groupby("time"):
        conf = detect_snapshot(frame["flight_id"].to_numpy(), frame["lat_deg"].to_numpy(), frame["lon_deg"].to_numpy(),
                               frame["alt_ft"].to_numpy(), frame["gs_kt"].to_numpy(), frame["trk_deg"].to_numpy(),
                               frame["vs_fpm"].to_numpy())
        cleared = own[own["time"] < t].reset_index(drop=True)      # what the rollout hands over: past clearances
        ctl.decide(Observation(t, 0.0, frame.reset_index(drop=True), conf, None, cleared))
    assert seen
    flags = np.concatenate(seen)
    assert flags[:, 0].sum() == 0 and flags[:, 1].any() and not flags[0, 1]      # B only, after its clearance
