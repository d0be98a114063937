"""The model controller rolls the policy out: it acts with probability P(act now | history) at each step
(seeded by the session), or, with act="argmax", only where acting is the single most likely decision."""

import numpy as np
import pandas as pd
import pytest
import torch

from atc_il.config import DatasetConfig
from atc_il.schemas import ACTION_TYPES
from pipelines.features import TrackIndex, build_features
from tests.helpers import FLIGHTS, STEP, actions_frame, grid_tracks, pair_samples, untrained_policy

CFG = DatasetConfig(history_steps=4, neighbours=2, recent_clearances=2)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """A real, untrained tiny policy (P(act) near 1/2: both behaviours show in a few steps)."""
    tracks = grid_tracks("2024-01-01T10:00Z", FLIGHTS, minutes=6)
    feats = build_features(pair_samples(tracks, "2024-01-01T10:05:00Z", "2024-01-01T10:05:00Z"),
                           TrackIndex.build(tracks, STEP), actions_frame([]).iloc[:0], CFG)
    root = tmp_path_factory.mktemp("ctl")
    pol = untrained_policy(CFG, feats, STEP, name="ctl-tiny")
    with torch.no_grad():                            # no direct_to (the controller skips it: no waypoint to give)
        pol.head.type_net[-1].bias[ACTION_TYPES.index("direct_to")] -= 20.0
    pol.save(root / "neutral")
    with torch.no_grad():
        pol.head.act_out.bias[1] += 6.0              # P(act) near 1: acting is the most likely decision
    pol.save(root / "eager")
    return root, tracks


def _run(policy_dir, act: str, seed: int, which: str = "neutral", action: str = "mode"):
    from pipelines.conflicts import detect_snapshot
    from simulator_adapters.controllers import Observation
    from simulator_adapters.model_controller import ModelController
    root, tracks = policy_dir
    ctl = ModelController(str(root / which), act=act, action=action)
    decisions, issued = [], []
    real = ctl.predictor.predict_samples

    def record(*args, **kwargs):
        dec, alts = real(*args, **kwargs)
        decisions.append(dec.copy())
        return dec, alts
    ctl.predictor.predict_samples = record
    ctl.reset("scenario-1", seed)
    for t, frame in tracks[tracks["flight_id"].isin(["A", "B"])].groupby("time"):
        conf = detect_snapshot(*(frame[c].to_numpy() for c in ("flight_id", "lat_deg", "lon_deg", "alt_ft", "gs_kt",
                                                               "trk_deg", "vs_fpm")))
        d = ctl.decide(Observation(t, 0.0, frame.reset_index(drop=True), conf, {}, pd.DataFrame()))
        issued.append([(c.flight_id, c.action_type, round(c.value, 6)) for c in d.clearances])
    p = np.concatenate([d["p_act"].to_numpy(float) for d in decisions]) if decisions else np.zeros(0)
    return p, issued, ctl.skipped            # skipped: acted with a direct_to (no waypoint to give)


def test_sampled_acting_follows_p_act_and_the_session_seed(policy_dir):
    p, a, skipped = _run(policy_dir, "sample", 0)
    _, again, _ = _run(policy_dir, "sample", 0)
    _, other, _ = _run(policy_dir, "sample", 1)
    assert len(p) >= 20
    assert a == again
    assert a != other
    n_acts = sum(len(x) > 0 for x in a) + skipped
    # one conflict (A-B) per step while shown: acts ~ Binomial(len(p), p); within 4 sigma
    assert 0 < n_acts and abs(n_acts - p.sum()) <= 4 * np.sqrt((p * (1 - p)).sum()) + 1, (n_acts, p.sum())


def test_argmax_acts_only_where_acting_is_most_likely(policy_dir):
    p, a, skipped = _run(policy_dir, "argmax", 0)
    assert sum(len(x) > 0 for x in a) + skipped == int((p > 0.5).sum())
    p, a, skipped = _run(policy_dir, "argmax", 0, "eager")
    assert (p > 0.5).all() and sum(len(x) > 0 for x in a) + skipped == len(p) >= 20


def test_unknown_act_mode_is_refused(policy_dir):
    from simulator_adapters.model_controller import ModelController
    with pytest.raises(ValueError, match="act must be"):
        ModelController(str(policy_dir[0] / "neutral"), act="sometimes")
    with pytest.raises(ValueError, match="action must be"):
        ModelController(str(policy_dir[0] / "neutral"), action="sometimes")


def test_drawn_actions_follow_the_policy_and_the_session_seed(policy_dir):
    """action="sample" draws the clearance given acting from the policy (seeded by the session), where "mode"
    issues the most likely one: same seed, same clearances; and the draws are not all the mode."""
    _, drawn, _ = _run(policy_dir, "sample", 0, "eager", action="sample")
    _, again, _ = _run(policy_dir, "sample", 0, "eager", action="sample")
    _, mode, _ = _run(policy_dir, "sample", 0, "eager", action="mode")
    assert drawn == again and sum(len(x) > 0 for x in drawn) >= 10
    kinds = lambda issued: [c[1:] for step in issued for c in step]
    assert kinds(drawn) != kinds(mode)


def test_a_style_policy_plays_one_style_per_session(tmp_path):
    """The session style code is drawn once per session from q(c | no clearance) and held at every decision
    (recorded as the rollout's style); style="marginal" holds none."""
    from models.config import ModelConfig
    from models.policy import build_policy
    from simulator_adapters.model_controller import ModelController
    cfg = DatasetConfig(history_steps=4, neighbours=2, recent_clearances=2, controller_history=True)
    tracks = grid_tracks("2024-01-01T10:00Z", FLIGHTS, minutes=6)
    feats = build_features(pair_samples(tracks, "2024-01-01T10:05:00Z", "2024-01-01T10:05:00Z"),
                           TrackIndex.build(tracks, STEP), actions_frame([]).iloc[:0], cfg)
    base = untrained_policy(cfg, feats, STEP)
    mc = ModelConfig(name="styled", encoder={"name": "mlp", "hidden": 8, "layers": 1}, vae={"enabled": False},
                     head={"name": "mdn", "hidden": 8, "components": 2}, style={"enabled": True, "codes": 3})
    pol = build_policy(mc, base.spec)
    with torch.no_grad():
        pol.style.log_prior.copy_(torch.tensor([0.0, 1.0, -30.0]))     # code 2 never drawn
    pol.save(tmp_path / "styled")
    ctl = ModelController(str(tmp_path / "styled"))
    codes = []
    for seed in range(40):
        ctl.reset("scenario-1", seed)
        codes.append(ctl.code)
        assert ctl.style == f"code {ctl.code}"
    share = np.mean(np.array(codes) == 1)
    assert set(codes) <= {0, 1} and 0.5 < share < 0.95          # q = softmax(0, 1, -30): 0.27 / 0.73 / 0
    seen = []
    real = ctl.predictor.predict_samples
    ctl.predictor.predict_samples = lambda *a, **k: (seen.append(k["code"]), real(*a, **k))[1]
    ctl.reset("scenario-1", 3)
    from pipelines.conflicts import detect_snapshot
    from simulator_adapters.controllers import Observation
    for t, frame in tracks[tracks["flight_id"].isin(["A", "B"])].groupby("time"):
        conf = detect_snapshot(*(frame[c].to_numpy() for c in ("flight_id", "lat_deg", "lon_deg", "alt_ft", "gs_kt",
                                                               "trk_deg", "vs_fpm")))
        ctl.decide(Observation(t, 0.0, frame.reset_index(drop=True), conf, {}, pd.DataFrame()))
    assert seen and set(seen) == {ctl.code}
    marginal = ModelController(str(tmp_path / "styled"), style="marginal")
    assert marginal.code == -1 and marginal.style is None
    with pytest.raises(ValueError, match="style"):
        ModelController(str(tmp_path / "styled"), style="sometimes")


def test_a_conflict_that_flickers_off_the_picture_keeps_its_first_detection(policy_dir):
    """As the data set's episodes and the Picture: a pair's first detection is the start of its run of detections,
    runs broken only by gaps longer than max_episode_gap_s (30 s), so one noisy step off the picture does not restart
    the conflict's age; steps past CPA (tcpa <= 0) are not asked about but do not break the run."""
    from simulator_adapters.controllers import Observation
    from simulator_adapters.model_controller import ModelController
    root, tracks = policy_dir
    ctl = ModelController(str(root / "neutral"))
    ctl.reset("s", 0)
    frames = {t: f.reset_index(drop=True) for t, f in tracks[tracks["flight_id"].isin(["A", "B"])].groupby("time")}
    times = sorted(frames)
    shown = {0: (True, 100.0), 1: (True, 95.0), 2: None, 3: (True, 85.0), 4: (False, -5.0), 5: (True, 75.0)}
    shown.update({k: None for k in range(6, 14)})            # 40 s off the picture: a new run after
    shown[14] = (True, 50.0)
    firsts = {}
    for i, t in enumerate(times[:15]):
        c = shown.get(i)
        conf = pd.DataFrame({"flight_id_1": ["A"] if c else [], "flight_id_2": ["B"] if c else [],
                             "conflict": [c[0]] if c else [], "los": [not c[0]] if c else [],
                             "tcpa_s": [c[1]] if c else []})
        samples, _ = ctl.step_samples(Observation(t, 0.0, frames[t], conf, {}, pd.DataFrame()))
        pair = samples[(samples["flight_id_1"] == "A") & (samples["flight_id_2"] == "B")]
        firsts[i] = pair["first_detection"].iloc[0] if len(pair) else None
    assert firsts[0] == firsts[1] == firsts[3] == firsts[5] == times[0]      # one step off, one past CPA: same run
    assert firsts[2] is None and firsts[4] is None                           # not asked there
    assert firsts[14] == times[14]                                            # after 40 s away: a new run
