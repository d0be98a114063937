"""The Gymnasium environment on the real BlueSky (no mocks): short scenarios, a few decision steps each."""

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from gymnasium.utils.env_checker import check_env

from atc_il.config import DatasetConfig
from atc_il.errors import SimulatorError
from pipelines.features import feature_spec
from simulator_adapters.atco import SyntheticAtco
from simulator_adapters.bluesky_sim import BlueSkySim
from simulator_adapters.gym_env import ACTION_KINDS, ENV_ID, ConflictResolutionEnv, RewardConfig
from simulator_adapters.rollout import rollout
from simulator_adapters.scenarios import generate

pytestmark = pytest.mark.slow

SHORT = {"duration_s": 300, "density": 0.0, "conflicts": 3}     # three conflicts in view from t = 0


@pytest.fixture(scope="module")
def sim():
    with BlueSkySim() as s:
        yield s


def make(sim, **kw) -> gym.Env:
    return gym.make(ENV_ID, **{"scenario_kwargs": SHORT, "n_scenarios": 2, "sim": sim, **kw})


def no_action(env) -> dict:
    return {k: np.zeros(sp.shape, sp.dtype) for k, sp in env.action_space.spaces.items()}


def test_observation_is_the_feature_spec_per_slot_with_a_mask(sim):
    dcfg = DatasetConfig(history_steps=6, neighbours=2, recent_clearances=3)
    env = make(sim, dataset=dcfg, max_conflicts=8)
    obs, info = env.reset(seed=0)
    spec = feature_spec(dcfg, 5.0)["tensors"]
    for name in ("pair", "neighbours", "geometry", "clearances"):
        assert obs[name].shape == (8, *spec[name]["shape"]) and obs[name].dtype == np.float32
    n = info["conflicts_in_view"]
    assert n >= 2 and info["conflicts_dropped"] == 0 and len(info["pairs"]) == n
    assert obs["mask"].tolist() == [1] * n + [0] * (8 - n)
    assert (obs["pair"][:n, -1, :, -1] == 1).all()                  # both aircraft observed at decision time
    assert not obs["pair"][n:].any() and not obs["geometry"][n:].any()
    assert (np.diff(info["tcpa_s"][:n]) >= 0).all()                 # most urgent first
    assert all(a < b for a, b in info["pairs"])


def test_conflicts_beyond_max_conflicts_are_counted_not_silently_dropped(sim):
    env = make(sim, max_conflicts=1)
    obs, info = env.reset(seed=0)
    assert obs["mask"].tolist() == [1]
    assert info["conflicts_in_view"] >= 2
    assert info["conflicts_dropped"] == info["conflicts_in_view"] - 1 == len(info["dropped_pairs"])
    assert info["pairs"][0] not in info["dropped_pairs"]
    act = no_action(env)
    act["act"][:] = 1
    _, _, _, _, info = env.step(act)
    assert info["acts_on_padding"] == 0 and len(info["clearances"]) == 1


def test_a_clearance_on_a_slot_changes_that_aircraft_in_bluesky(sim):
    env = make(sim, max_conflicts=4, expert=False, reward=RewardConfig(los=-1.0, clearance=-0.25))
    obs, info = env.reset(seed=1)
    (a1, b1), (a2, b2) = info["pairs"][:2]
    act = no_action(env)
    act["act"][:3] = [1, 1, 0]
    act["aircraft"][:2] = [1, 0]                                      # slot 0: its flight_id_2; slot 1: its flight_id_1
    act["type"][:2] = [ACTION_KINDS.index("altitude"), ACTION_KINDS.index("heading")]
    act["value"][:3] = [2000.0, 40.0, 10.0]
    act["act"][-1] = 1                                                # a padding slot: ignored, counted
    before = env.unwrapped.loop.state.set_index("flight_id")
    _, reward, terminated, truncated, info = env.step(act)
    assert [(c["flight_id"], c["action_type"], c["against"]) for c in info["clearances"]] == \
        [(b1, "altitude", a1), (a2, "heading", b2)]
    assert info["acts_on_padding"] == 1 and info["rejected"] == 0
    assert reward == pytest.approx(-0.25 * 2 - len(info["los_new"])) and not terminated and not truncated
    for _ in range(3):
        _, _, _, _, info = env.step(no_action(env))
    after = env.unwrapped.loop.state.set_index("flight_id")
    assert after.loc[b1, "cfl_ft"] == pytest.approx(before.loc[b1, "alt_ft"] + 2000, abs=1)
    assert after.loc[a1, "cfl_ft"] == pytest.approx(before.loc[a1, "cfl_ft"], abs=1)      # not the other one
    turned = (after.loc[a2, "trk_deg"] - before.loc[a2, "trk_deg"] + 180) % 360 - 180
    assert 10 < turned <= 40
    acts = env.unwrapped.result().actions
    assert list(acts["flight_id"]) == [b1, a2] and list(acts["against_flight_id"]) == [a1, b2]
    # the clearances are in the next observations' clearance history (the features a policy reads)
    obs, *_ = env.step(no_action(env))
    assert obs["clearances"][..., -1].sum() >= 2


def test_expert_labels_follow_the_executed_clearances_not_its_proposals(sim):
    env = make(sim, max_conflicts=4)
    obs, info = env.reset(seed=2)
    expert = env.unwrapped.expert
    proposed = 0
    for _ in range(40):                       # the learner never acts: the expert's proposals are not executed
        e, n = info["expert"], int(obs["mask"].sum())
        assert info["expert_action"] in env.action_space
        assert (e["considered"][:n] == 1).all() and not e["considered"][n:].any()
        assert ((0 <= e["p_act"]) & (e["p_act"] <= 1)).all()
        for s in range(n):
            assert sum(p for *_, p in e["joint"][s]) == pytest.approx(1.0)
        proposed += int(info["expert_action"]["act"].sum())
        obs, _, _, _, info = env.step(no_action(env))
    assert proposed > 0 and expert.last_cleared == {}
    assert not any(st.handled for st in expert.pairs.values())
    # executing its label: the expert now remembers that clearance, and that conflict is handled
    s = int(np.argmax(info["expert"]["p_act"]))
    act = no_action(env)
    act["act"][s], act["type"][s], act["value"][s] = 1, ACTION_KINDS.index("speed"), 20.0
    pair = info["pairs"][s]
    _, _, _, _, info = env.step(act)
    assert expert.last_cleared[pair[0]][1:] == ("speed", pair[1]) and expert.pairs[pair].handled
    if pair in info["pairs"]:
        i = info["pairs"].index(pair)
        assert info["expert"]["considered"][i] == 0 and info["expert"]["p_act"][i] == 0.0


def test_following_the_expert_reproduces_its_rollout(sim):
    """The env's loop is rollout()'s: the expert's own decisions executed through the action space (resumes by
    the env) give the expert's rollout, clearance for clearance."""
    sc = generate(seed=8, duration_s=300, density=0.0, conflicts=3)
    env = gym.make(ENV_ID, scenarios=[sc], sim=sim, max_conflicts=16, expert_resumes=True)
    obs, info = env.reset(options={"scenario": 0, "loop_seed": 5})
    truncated, steps = False, 1
    while not truncated:
        obs, _, _, truncated, info = env.step(info["expert_action"])
        steps += 1
    got = env.unwrapped.result()
    ref = rollout(sc, SyntheticAtco(), sim, seed=5)
    assert len(ref.actions) >= 3 and steps == ref.meta["decision_steps"] + 1
    end = ref.meta["t0"] + pd.Timedelta(seconds=sc.duration_s)
    pd.testing.assert_frame_equal(got.tracks[got.tracks["time"] <= end], ref.tracks)
    pd.testing.assert_frame_equal(got.actions, ref.actions)
    with pytest.raises(SimulatorError, match="reset"):
        env.step(info["expert_action"])


@pytest.mark.filterwarnings("ignore:.*Box observation space m.*infinity")   # unnormalised features: unbounded
@pytest.mark.filterwarnings("ignore:.*symmetric and normalized space")          # values in the clearance's unit
def test_passes_gymnasiums_env_checker_is_seeded_and_close_stops_bluesky():
    """On an env that starts its own BlueSky (the checker copies the env's arguments to make another)."""
    env = gym.make(ENV_ID, scenario_kwargs=SHORT, n_scenarios=4, max_conflicts=4)
    assert env.unwrapped.spec.id == ENV_ID
    try:
        check_env(env.unwrapped)
        seen = set()
        for seed in (0, 1, 2, 3):
            obs, info = env.reset(seed=seed)
            assert obs in env.observation_space and info["expert_action"] in env.action_space
            obs2, info2 = env.reset(seed=seed)
            assert all(np.array_equal(obs[k], obs2[k]) for k in obs) and info["pairs"] == info2["pairs"]
            assert np.array_equal(info["expert"]["p_act"], info2["expert"]["p_act"])
            seen.add((info["scenario_index"], info["loop_seed"]))
        assert len(seen) == 4
        sim = env.unwrapped._sim
        assert sim is not None and sim.alive
    finally:
        env.close()
    assert not sim.alive
    env.close()                                                  # twice is fine


def test_bad_arguments_are_refused_before_bluesky_starts():
    with pytest.raises(ValueError, match="max_conflicts"):
        ConflictResolutionEnv(scenario_kwargs=SHORT, max_conflicts=0)
    with pytest.raises(ValueError, match="expert_resumes"):
        ConflictResolutionEnv(scenario_kwargs=SHORT, expert=False, expert_resumes=True)
    env = ConflictResolutionEnv(scenario_kwargs=SHORT, n_scenarios=1)
    with pytest.raises(SimulatorError, match="reset"):
        env.step(env.action_space.sample())
    assert env._sim is None                                      # nothing started
