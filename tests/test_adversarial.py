"""Adversarial imitation: the discriminator separates an obviously different policy from the expert (GAIL and AMP,
on decisions and state-only), its gradient penalty is finite and non-negative, GAE follows each conflict's steps,
PPO raises the log-likelihood of advantaged decisions, and the trainer's loop runs on a toy collector. CPU, tiny."""

from __future__ import annotations

import math

import pytest
import torch

from models.adversarial import AdversarialConfig, AdversarialTrainer, Transitions, gae, ppo_update
from models.config import ModelConfig
from models.discriminator import (
    OBJECTIVES,
    DiscBatch,
    Discriminator,
    DiscriminatorConfig,
    NextStates,
    accuracy,
    decision_features,
    disc_step,
    gradient_penalty,
)
from models.interface import Decisions, Observations
from models.policy import build_policy
from tests.helpers import make_obs, simulated_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N = 64
HEADING, ALTITUDE = 0, 1     # ACTION_TYPES order


def _decisions(n: int, aircraft: int, kind: int, value: float) -> Decisions:
    return Decisions(torch.ones(n, dtype=torch.long), torch.full((n,), aircraft), torch.full((n,), kind),
                     torch.full((n,), value))


def _batch(spec, seed: int, expert: bool) -> DiscBatch:
    """The expert turns aircraft 1 right by 20 deg, and the next state shows aircraft 1's track turned (its sine
    up by 0.35); the other policy climbs aircraft 2 by 1000 ft, and the next state is the decision step's state."""
    obs = make_obs(spec, N, seed)
    dec = _decisions(N, 0, HEADING, 20.0) if expert else _decisions(N, 1, ALTITUDE, 1000.0)
    nxt = NextStates.at_decision(obs)
    pair = nxt.pair.clone()
    names = [f["name"] for f in spec["tensors"]["pair"]["features"]]
    shift = {"trk_sin": 0.35} if expert else {"dalt_ft": 0.0}
    for name, v in shift.items():
        pair[:, 0, names.index(name)] += v
    return DiscBatch(obs, dec, NextStates(pair, nxt.geometry), torch.ones(N, dtype=torch.bool))


def _disc(spec, objective: str, state_only: bool) -> Discriminator:
    torch.manual_seed(0)
    return Discriminator(spec, DiscriminatorConfig(objective=objective, state_only=state_only, hidden=16,
                                                   encoder={"name": "mlp", "hidden": 16, "layers": 1}))


@pytest.mark.parametrize("objective", ["gail", "amp"])
@pytest.mark.parametrize("state_only", [False, True])
def test_the_discriminator_separates_an_obviously_different_policy(spec, objective, state_only):
    disc, obj = _disc(spec, objective, state_only), OBJECTIVES.get(objective)()
    opt = torch.optim.Adam(disc.parameters(), lr=3e-3)
    expert, other = _batch(spec, 0, True), _batch(spec, 0, False)       # the same histories, other decisions
    before = accuracy(disc, _batch(spec, 2, True), _batch(spec, 2, False))
    for _ in range(60):
        logs = disc_step(disc, obj, opt, expert, other, grad_penalty=1.0)
    assert all(math.isfinite(v) for v in logs.values())
    # on fresh samples of both: the expert's reward is higher and D tells them apart
    held_e, held_o = _batch(spec, 2, True), _batch(spec, 2, False)
    assert before < 0.8 and accuracy(disc, held_e, held_o) > 0.9
    with torch.no_grad():
        assert obj.reward(disc(held_e)).mean() > obj.reward(disc(held_o)).mean()


def test_rewards_of_the_objectives():
    d = torch.tensor([-10.0, -1.0, 0.0, 1.0, 3.0, 10.0], dtype=torch.float64)
    gail, amp = OBJECTIVES.get("gail")(), OBJECTIVES.get("amp")()
    torch.testing.assert_close(gail.reward(d), -torch.log(1 - torch.sigmoid(d)))
    r = amp.reward(d)
    assert (r >= 0).all() and (r <= 1).all() and r[3] == 1.0 and r[0] == 0.0 and r[5] == 0.0
    assert gail.loss(torch.full((3,), 10.0), torch.full((3,), -10.0)) < 1e-3
    assert amp.loss(torch.ones(3), -torch.ones(3)) == 0


@pytest.mark.parametrize("state_only", [False, True])
def test_gradient_penalty_is_finite_and_non_negative(spec, state_only):
    disc = _disc(spec, "gail", state_only)
    gp = gradient_penalty(disc, _batch(spec, 0, True))
    assert gp.ndim == 0 and torch.isfinite(gp) and gp >= 0 and gp > 0
    gp.backward()                                       # differentiable: it trains D
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())


def test_decision_features_code_idle_decisions_as_zeros():
    dec = Decisions(torch.tensor([0, 1, 1]), torch.tensor([-1, 1, 0]), torch.tensor([-1, 1, 4]),
                    torch.tensor([float("nan"), -2000.0, 0.0]))
    f = decision_features(dec)
    assert f.shape == (3, 13) and torch.isfinite(f).all() and f[0].abs().sum() == 0
    assert f[1, 0] == 1 and f[1, 2] == 1 and f[1, 3 + 1] == 1 and f[1, 8 + 1] == -2.0


def test_gae_follows_each_conflicts_steps():
    # two sequences, rows shuffled: seq 0 steps 0..2, seq 1 steps 5..6
    seq, step = torch.tensor([1, 0, 0, 1, 0]), torch.tensor([6, 2, 0, 5, 1])
    rew, val = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0]), torch.zeros(5)
    adv, ret = gae(rew, val, seq, step, gamma=0.5, lam=1.0)
    # seq 0 (steps 0, 1, 2 with rewards 0, 0, 1): 0.25, 0.5, 1; seq 1 (steps 5, 6: rewards 0, 1): 0.5, 1
    torch.testing.assert_close(adv, torch.tensor([1.0, 1.0, 0.25, 0.5, 0.5]))
    torch.testing.assert_close(ret, adv)


def _policy(spec):
    torch.manual_seed(0)
    cfg = ModelConfig(encoder={"name": "mlp", "hidden": 16, "layers": 1}, vae={"enabled": False},
                      head={"name": "mdn", "hidden": 16, "components": 2})
    return build_policy(cfg, spec).eval()


def test_ppo_raises_the_likelihood_of_advantaged_decisions(spec):
    from models.adversarial import Critic
    pol = _policy(spec)
    obs = make_obs(spec, N, 5)
    good, bad = _decisions(N // 2, 0, HEADING, 20.0), _decisions(N // 2, 1, ALTITUDE, -1000.0)
    dec = Decisions(*(torch.cat([getattr(good, k), getattr(bad, k)]) for k in ("act", "aircraft", "type", "value")))
    adv = torch.cat([torch.ones(N // 2), -torch.ones(N // 2)])
    with torch.no_grad():
        old = pol.log_prob(obs, dec)
        ctx_dim = pol.encode(obs).tensor.shape[-1]
    critic = Critic(ctx_dim, 16)
    opt_pi, opt_v = torch.optim.Adam(pol.parameters(), lr=3e-3), torch.optim.Adam(critic.parameters(), lr=1e-3)
    logs = ppo_update(pol, critic, opt_pi, opt_v, obs, dec, old, adv, adv.clone(),
                      AdversarialConfig().ppo.model_copy(update={"epochs": 4, "batch_size": 32}),
                      torch.Generator().manual_seed(0))
    with torch.no_grad():
        new = pol.log_prob(obs, dec)
    assert (new - old)[: N // 2].mean() > 0.05 and (new - old)[N // 2:].mean() < -0.05
    assert all(math.isfinite(v) for v in logs.values()) and logs["ppo_clip_fraction"] >= 0


class _ToyTrainer(AdversarialTrainer):
    """Collects from the policy itself on fixed toy observations (no simulator)."""

    def __init__(self, policy, expert, cfg, obs):
        super().__init__(policy, expert, cfg)
        self.obs, self.rows = obs, []

    def collect(self, iteration):
        with torch.no_grad():
            d = self.policy.sample(self.obs, 1, torch.Generator().manual_seed(iteration))
            dec = Decisions(d.act[:, 0], d.aircraft[:, 0], d.type[:, 0], d.value[:, 0])
            lp = self.policy.log_prob(self.obs, dec)
        n = self.obs.batch_size
        batch = DiscBatch(self.obs, dec, NextStates.at_decision(self.obs), torch.ones(n, dtype=torch.bool))
        return Transitions(batch, lp, torch.arange(n) // 4, torch.arange(n) % 4, torch.ones(n, dtype=torch.bool)), \
            {"sim_seconds_per_wall_second": 1.0}

    def after_iteration(self, iteration, row):
        self.rows.append(iteration)


@pytest.mark.parametrize("objective,state_only", [("gail", False), ("amp", True)])
def test_the_trainer_loop_runs_collect_disc_gen(spec, objective, state_only):
    pol = _policy(spec)
    cfg = AdversarialConfig(disc=DiscriminatorConfig(objective=objective, state_only=state_only, steps=5, hidden=16,
                                                     encoder={"name": "mlp", "hidden": 16, "layers": 1}),
                            ppo={"epochs": 1, "batch_size": 16})
    before = {k: v.clone() for k, v in pol.state_dict().items()}
    tr = _ToyTrainer(pol, _batch(spec, 0, True), cfg, make_obs(spec, 32, 9))
    rows = tr.train(2, log=lambda s: None)
    assert tr.rows == [1, 2] and [r["iteration"] for r in rows] == [1, 2]
    for r in rows:
        assert 0 <= r["disc_accuracy_all"] <= 1 and math.isfinite(r["reward_mean"]) and r["transitions"] == 32
        assert r["collect_s"] >= 0 and r["disc_s"] > 0 and r["gen_s"] > 0
    assert any(not torch.equal(before[k], v) for k, v in pol.state_dict().items())


# -- in BlueSky ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """Two short scenarios under the synthetic expert, their data set (all in the train split) and a saved policy
    built on its features (the warm start; untrained: these tests are about the loop, not about its quality)."""
    from atc_il.feature_spec import FeatureSpec
    ws = simulated_dataset(tmp_path_factory.mktemp("adversarial") / "sim", 2, 11, {"duration_s": 600, "density": 3.0,
                           "conflicts": 4}, workers=2, test_fraction=0.0, val_fraction=0.0)
    torch.manual_seed(0)
    mc = ModelConfig(name="adv-tiny", encoder={"name": "gru", "hidden": 16, "layers": 1},
                     vae={"enabled": True, "latent_dim": 4}, head={"name": "mdn", "hidden": 16, "components": 2})
    build_policy(mc, FeatureSpec.load(ws / "dataset")).save(ws / "bc")
    return ws


@pytest.mark.slow
def test_expert_samples_pair_each_step_with_the_next(demos):
    from models.adversarial import load_expert
    from pipelines.shards import load_split
    ex = load_expert(demos / "dataset")
    raw = load_split(demos / "dataset", "train", columns=["episode_id", "time"])
    assert len(ex) == len(raw["episode_id"]) and 0 < int(ex.has_next.sum()) < len(ex)
    i = int(torch.nonzero(ex.has_next)[0])
    t, e = int(raw["time"][i]), raw["episode_id"][i]
    j = next(j for j in range(len(ex)) if raw["episode_id"][j] == e and int(raw["time"][j]) == t + 5_000_000_000)
    torch.testing.assert_close(ex.nxt.pair[i], ex.obs.pair[j, -1])
    torch.testing.assert_close(ex.nxt.geometry[i], ex.obs.geometry[j, -1])


@pytest.mark.slow
def test_rollouts_record_the_sampled_decisions_and_their_log_probabilities(demos):
    from models.policy import load_policy
    from simulator_adapters.adversarial import RolloutJob, run_rollouts, transitions
    from simulator_adapters.scenarios import scenario_set
    sc = scenario_set(1, 77, duration_s=300, density=3.0, conflicts=3)[0]
    res = run_rollouts([RolloutJob(str(demos / "bc"), sc.to_json(), sc.seed)])
    tr = transitions(res)
    n = len(tr)
    assert n == res[0]["records"]["n"] > 0 and res[0]["sim_s"] == 300
    pol = load_policy(demos / "bc")
    with torch.no_grad():
        lp = pol.log_prob(tr.batch.obs, tr.batch.dec)
    torch.testing.assert_close(lp, tr.log_prob, atol=1e-4, rtol=1e-4)     # what the policy that drove would say
    acted = tr.batch.dec.act == 1
    assert (tr.batch.dec.type[~acted] == -1).all() and (tr.batch.dec.type[acted] >= 0).all()
    assert tr.batch.has_next.any() and (tr.disc_ok <= tr.batch.has_next).all()
    none = ~tr.batch.has_next                      # no next state (an aircraft left): the record's own state
    assert torch.equal(tr.batch.nxt.pair[none], tr.batch.obs.pair[none, -1])
    # a next state is the same pair's decision-time state one step later
    for s in tr.seq.unique()[:5]:
        rows = torch.nonzero((tr.seq == s) & tr.disc_ok).flatten()
        for r in rows:
            later = torch.nonzero((tr.seq == s) & (tr.step == tr.step[r] + 1)).flatten()
            if len(later):
                torch.testing.assert_close(tr.batch.nxt.pair[r], tr.batch.obs.pair[later[0], -1])


@pytest.mark.slow
def test_one_adversarial_iteration_saves_a_policy_that_flies(demos, tmp_path):
    import json

    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from atc_il_cli.cli import app
    from models.policy import load_policy
    from simulator_adapters.evaluation import simeval
    out = tmp_path / "adv"
    res = CliRunner().invoke(app, ["adversarial", "--data", str(demos / "dataset"), "--init", str(demos / "bc"),
                                   "--objective", "amp", "--state-only", "--iterations", "1", "--scenarios", "2",
                                   "--workers", "2", "--duration-s", "300", "--conflicts", "3", "--disc-steps", "3",
                                   "--ppo-epochs", "1", "-w", str(tmp_path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "adversarial_report.json").read_text())
    row, = rep["iterations"]
    assert row["transitions"] > 0 and row["rollout_scenarios"] == 2 and row["sim_seconds_per_wall_second"] > 0
    assert 0 <= row["disc_accuracy_all"] <= 1 and 0 <= row["reward_mean"] <= 1          # amp: bounded reward
    pol, init = load_policy(out / "policy"), load_policy(demos / "bc")
    assert any(not torch.equal(v, init.state_dict()[k]) for k, v in pol.state_dict().items())
    client = MlflowClient(f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}")
    hist = client.get_metric_history(rep["mlflow_run_id"], "disc_accuracy_all")
    assert [m.step for m in hist] == [1]
    assert "policy/weights.pt" in [f.path for f in client.list_artifacts(rep["mlflow_run_id"], "policy")]
    from models.registry import load_policy_uri
    logged = load_policy_uri(f"runs:/{rep['mlflow_run_id']}/policy", tracking_uri=client.tracking_uri)
    assert all(torch.equal(v, pol.state_dict()[k]) for k, v in logged.state_dict().items())
    agg = simeval([f"model:{out / 'policy'}"], 1, 9, tmp_path / "simeval", {"duration_s": 300, "conflicts": 2})
    assert agg.iloc[0]["scenarios"] == 1


def test_the_cli_refuses_an_unknown_objective(tmp_path):
    from typer.testing import CliRunner

    from atc_il_cli.cli import app
    res = CliRunner().invoke(app, ["adversarial", "--data", str(tmp_path), "--init", str(tmp_path), "--objective",
                                   "wgan"])
    assert res.exit_code == 2 and "wgan" in res.output


# -- the InfoGAIL code -----------------------------------------------------------------------------------
def _style_policy(spec):
    torch.manual_seed(0)
    cfg = ModelConfig(encoder={"name": "mlp", "hidden": 16, "layers": 1}, vae={"enabled": False},
                      head={"name": "mdn", "hidden": 16, "components": 2}, style={"enabled": True, "codes": 3})
    return build_policy(cfg, spec).eval()


def test_with_code_makes_the_style_policy_decide_given_the_code(spec):
    from models import style as style_mix
    from models.infogail import with_code
    pol = _style_policy(spec)
    obs = make_obs(spec, N, 4)
    dec = Decisions(*(torch.cat([getattr(_decisions(N // 2, 0, HEADING, 20.0), k),
                                 getattr(_decisions(N // 2, 1, ALTITUDE, -1000.0), k)])
                      for k in ("act", "aircraft", "type", "value")))
    codes = torch.arange(N) % 3
    with torch.no_grad():
        ctx = pol.encode(obs)
        lp = pol.log_prob(with_code(ctx, codes, 3), dec)
        inner, _ = style_mix.split(ctx.tensor, 3)
        per_code = sum(style_mix.code_terms(pol.head, pol.style, inner, dec).values()).T      # (B, K)
    torch.testing.assert_close(lp, per_code[torch.arange(N), codes], atol=1e-4, rtol=1e-4)


def test_the_code_posterior_recovers_codes_on_a_toy(spec):
    from models.infogail import CodePosterior, InfoConfig, info_reward, posterior_step
    torch.manual_seed(0)
    q = CodePosterior(spec, 3, InfoConfig(hidden=16, encoder={"name": "mlp", "hidden": 16, "layers": 1}))
    opt = torch.optim.Adam(q.parameters(), lr=3e-3)

    def toy(seed):       # code 0: heading, 1: altitude, 2: speed; the histories say nothing about the code
        one = make_obs(spec, N // 2, seed)                     # each history under every code
        obs = Observations(*(torch.cat([getattr(one, k)] * 3) for k in ("pair", "neighbours", "geometry",
                                                                         "clearances")))
        n, codes = 3 * (N // 2), torch.arange(3).repeat_interleave(N // 2)
        kinds, values = torch.tensor([0, 1, 2])[codes], torch.tensor([20.0, 1000.0, -20.0])[codes]
        dec = Decisions(torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), kinds, values)
        return DiscBatch(obs, dec, NextStates.at_decision(obs), torch.ones(n, dtype=torch.bool)), codes
    train, c = toy(0)
    before = info_reward(q, *toy(1)).mean()
    for _ in range(80):
        logs = posterior_step(q, opt, train, c)
    held, hc = toy(1)
    with torch.no_grad():
        acc = (q(held).argmax(-1) == hc).float().mean()
    r = info_reward(q, held, hc)
    assert acc > 0.95 and logs["info_accuracy"] > 0.95
    assert abs(float(before)) < 0.5 and r.mean() > 0.8 * math.log(3) and (r <= math.log(3) + 1e-5).all()


def test_the_trainer_adds_the_information_reward(spec):
    from models.infogail import with_code

    class _CodeToy(_ToyTrainer):
        def collect(self, iteration):
            tr, info = super().collect(iteration)
            n = len(tr)
            codes = torch.arange(n) % 3
            with torch.no_grad():
                ctx = with_code(self.policy.encode(self.obs), codes, 3)
                d = self.policy.sample(ctx, 1, torch.Generator().manual_seed(iteration))
                dec = Decisions(d.act[:, 0], d.aircraft[:, 0], d.type[:, 0], d.value[:, 0])
                lp = self.policy.log_prob(ctx, dec)
            batch = DiscBatch(self.obs, dec, tr.batch.nxt, tr.batch.has_next)
            return Transitions(batch, lp, tr.seq, tr.step, tr.disc_ok, codes), info

    pol = _style_policy(spec)
    cfg = AdversarialConfig(disc=DiscriminatorConfig(steps=3, hidden=16, encoder={"name": "mlp", "hidden": 16,
                                                                                   "layers": 1}),
                            ppo={"epochs": 1, "batch_size": 16},
                            info={"weight": 0.5, "steps": 3, "hidden": 16,
                                  "encoder": {"name": "mlp", "hidden": 16, "layers": 1}})
    tr = _CodeToy(pol, _batch(spec, 0, True), cfg, make_obs(spec, 32, 9))
    row, = tr.train(1, log=lambda s: None)
    assert "info_loss" in row and math.isfinite(row["info_reward_mean"])
    assert row["reward_mean"] == pytest.approx(row["disc_reward_mean"] + 0.5 * row["info_reward_mean"], abs=1e-5)
    from atc_il.errors import ModelError
    with pytest.raises(ModelError, match="style"):
        _ToyTrainer(_policy(spec), _batch(spec, 0, True), cfg, make_obs(spec, 8, 9))


@pytest.mark.slow
def test_rollouts_under_a_code_record_it_and_score_decisions_given_it(demos, tmp_path):
    from atc_il.feature_spec import FeatureSpec
    from models.adversarial import conditioned
    from models.policy import load_policy
    from simulator_adapters.adversarial import RolloutJob, run_rollouts, transitions
    from simulator_adapters.scenarios import scenario_set
    torch.manual_seed(0)
    mc = ModelConfig(name="adv-style", encoder={"name": "mlp", "hidden": 16, "layers": 1}, vae={"enabled": False},
                     head={"name": "mdn", "hidden": 16, "components": 2}, style={"enabled": True, "codes": 3})
    build_policy(mc, FeatureSpec.load(demos / "dataset")).save(tmp_path / "style")
    scs = scenario_set(2, 78, duration_s=200, density=3.0, conflicts=3)
    tr = transitions(run_rollouts([RolloutJob(str(tmp_path / "style"), sc.to_json(), sc.seed, info=True)
                                   for sc in scs]))
    assert tr.code is not None and ((tr.code >= 0) & (tr.code < 3)).all()
    pol = load_policy(tmp_path / "style")
    with torch.no_grad():
        lp = pol.log_prob(conditioned(pol, tr.batch.obs, tr.code), tr.batch.dec)
    torch.testing.assert_close(lp, tr.log_prob, atol=1e-4, rtol=1e-4)


# -- the fixes for D overpowering the policy (bench/adversarial.py's `stable` preset) ----------------------------
def test_label_smoothing_lowers_the_experts_target():
    d = torch.full((4,), 3.0)
    for name in ("gail", "amp"):
        obj = OBJECTIVES.get(name)()
        # a confident expert logit costs more when its target is smoothed; the learner's side is unchanged
        assert obj.loss(d, -d, 0.1) > obj.loss(d, -d, 0.0)
        assert obj.loss(d, -d) == obj.loss(d, -d, 0.0)


def test_instance_noise_leaves_the_padding_mask_alone(spec):
    from models.discriminator import noisy_logits
    disc = _disc(spec, "gail", False)
    b = _batch(spec, 0, True)
    torch.manual_seed(1)
    assert torch.allclose(noisy_logits(disc, b, 0.0), disc(b))
    assert not torch.allclose(noisy_logits(disc, b, 0.5), disc(b))
    # padded rows stay exactly zero: the jitter is scaled by `valid`
    obs_n, _ = disc.inputs(b)
    g = obs_n.geometry.clone()
    g[..., -1] = 0.0
    jit = g[..., :-1] + 0.5 * torch.randn_like(g[..., :-1]) * g[..., -1:]
    assert torch.equal(jit, g[..., :-1])


def test_a_blind_discriminator_ignores_those_features(spec):
    from atc_il.errors import ModelError
    names = [f["name"] for f in spec["tensors"]["geometry"]["features"]]
    blind = [n for n in names if n != "valid"][:2]
    torch.manual_seed(0)
    disc = Discriminator(spec, DiscriminatorConfig(blind=blind, hidden=16, encoder={"name": "mlp", "hidden": 16,
                                                                                   "layers": 1})).eval()
    b = _batch(spec, 0, True)
    geom = b.obs.geometry.clone()
    for n in blind:
        geom[..., names.index(n)] += 5.0
    other = DiscBatch(Observations(b.obs.pair, b.obs.neighbours, geom, b.obs.clearances), b.dec, b.nxt, b.has_next)
    with torch.no_grad():
        assert torch.allclose(disc(b), disc(other))
    with pytest.raises(ModelError, match="blind"):
        Discriminator(spec, DiscriminatorConfig(blind=["no_such_feature"]))


def test_the_accuracy_gate_skips_updates_and_the_replay_keeps_earlier_samples(spec):
    pol = _policy(spec)
    cfg = AdversarialConfig(disc=DiscriminatorConfig(steps=30, hidden=16, lr=3e-3, target_accuracy=0.55, replay=0.5,
                                                     replay_iterations=2,
                                                     encoder={"name": "mlp", "hidden": 16, "layers": 1}),
                            ppo={"epochs": 1, "batch_size": 16, "reward_center": True})
    tr = _ToyTrainer(pol, _batch(spec, 0, True), cfg, make_obs(spec, 32, 9))
    rows = tr.train(3, log=lambda s: None)
    assert len(tr.replay) == 2                              # the last two iterations' learner samples
    assert "disc_accuracy_heldout" not in rows[0] and 0 <= rows[1]["disc_accuracy_heldout"] <= 1
    assert any(r["disc_updates"] < 30 for r in rows)       # D stopped updating once it was good enough
    for r in rows:
        # the policy that sampled is the one PPO starts from: the ratio starts at 1
        assert r["ppo_logprob_mismatch"] < 1e-4 and math.isfinite(r["advantage_std"])


def test_fresh_rewards_come_from_d_before_it_trains_on_the_samples(spec):
    pol = _policy(spec)
    seen = []

    class _Spy(_ToyTrainer):
        def train_gen(self, learner, rewards=None):
            seen.append(rewards)
            return super().train_gen(learner, rewards)

    cfg = AdversarialConfig(disc=DiscriminatorConfig(steps=3, hidden=16, encoder={"name": "mlp", "hidden": 16,
                                                                                  "layers": 1}),
                            ppo={"epochs": 1, "batch_size": 16}, reward_on="fresh")
    _Spy(pol, _batch(spec, 0, True), cfg, make_obs(spec, 32, 9)).train(2, log=lambda s: None)
    # iteration 1: D has never trained, so it trains first; iteration 2: the rewards predate its update
    assert seen[0] is None and seen[1] is not None and seen[1].shape == (32,)
