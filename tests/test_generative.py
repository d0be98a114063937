"""Generative value heads (cvae with a continuous or a discrete latent, diffusion) and the DDPM/DDIM
scheduler: shapes, losses, gradients; the scheduler's forward process against its closed form; both modes
of a bimodal target sampled (where the deterministic head collapses); likelihoods (exact enumeration,
importance-sampled and kernel-density estimates); save/load; autocast. CPU, one thread, seeds fixed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import norm

from atc_il.errors import ConfigError, ModelError
from atc_il.schemas import ACTION_TYPES
from models.config import ModelConfig, load_model_config
from models.heads import HEADS, RESUME, head_config
from models.heads.diffusion_schedule import NoiseScheduler, cosine_betas
from models.heads.generative import kde_log_prob
from models.interface import Decisions
from models.policy import build_policy, load_policy
from tests.helpers import B, check_policy_interface, make_dec, make_obs

VARIANTS = {"cvae": {"name": "cvae"}, "cvae_discrete": {"name": "cvae", "latent": "discrete"},
            "diffusion": {"name": "diffusion"}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(variant: str, enc: str = "gru", vae: bool = True) -> ModelConfig:
    return ModelConfig(encoder={"name": enc, "hidden": 16, "layers": 1, "heads": 2},
                       vae={"enabled": vae, "latent_dim": 4}, head={**VARIANTS[variant], "hidden": 16})


def acting(values, type_: int = 0, aircraft: int = 1) -> Decisions:
    v = torch.as_tensor(values, dtype=torch.float32)
    n = len(v)
    return Decisions(torch.ones(n, dtype=torch.long), torch.full((n,), aircraft), torch.full((n,), type_), v)


# -- configuration and registry ------------------------------------------------------------------------------
def test_registered_and_configured():
    assert {"cvae", "diffusion"} <= set(HEADS.names())
    cfg = head_config("cvae")
    assert (cfg.latent_dim, cfg.latent, cfg.codes) == (4, "continuous", 3)
    cfg = head_config("diffusion")
    assert (cfg.diffusion_steps, cfg.sampling_steps, cfg.beta_schedule) == (50, 10, "cosine")
    with pytest.raises(ConfigError, match="sampling_steps"):
        load_model_config(head={"name": "diffusion", "diffusion_steps": 8, "sampling_steps": 9})
    with pytest.raises(ConfigError, match="latent"):
        load_model_config(head={"name": "cvae", "latent": "gaussian"})


# -- the policy interface ------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_losses_gradients_and_shapes(spec, variant):  # noqa: F811
    torch.manual_seed(0)
    policy = build_policy(config(variant), spec)
    obs, dec = make_obs(spec), make_dec()
    check_policy_interface(policy, obs, dec)
    assert policy.exact_log_prob == (variant == "cvae_discrete")
    ctx = policy.encode(make_obs(spec, 5))
    g = policy.sample_actions(ctx, 4, torch.Generator().manual_seed(0))
    assert (g.act == 1).all() and (g.type >= 0).all() and g.value.shape == (5, 4)


def test_diffusion_sampling_steps_parameter(spec):  # noqa: F811
    policy = build_policy(config("diffusion", "mlp", vae=False), spec).eval()
    ctx = policy.encode(make_obs(spec))
    with torch.no_grad():
        a = policy.sample(ctx, 3, torch.Generator().manual_seed(0), sampling_steps=2)
        b = policy.sample(ctx, 3, torch.Generator().manual_seed(0), sampling_steps=2)
        c = policy.sample(ctx, 3, torch.Generator().manual_seed(0))
        assert policy.predict(ctx, sampling_steps=50).value.shape == (B,)
    torch.testing.assert_close(a.value, b.value, equal_nan=True)
    assert not torch.allclose(a.value[a.act == 1], c.value[c.act == 1])
    with pytest.raises(ModelError, match="sampling_steps"):
        policy.sample(ctx, 3, sampling_steps=51)


# -- the scheduler -------------------------------------------------------------------------------------------
def test_forward_process_matches_its_closed_form():
    T = 50
    sch = NoiseScheduler(T)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    # analytically: abar_t = prod (1 - beta) = f((t+1)/T) / f(0) wherever beta was not clipped (t < T-1)
    expected = torch.tensor([f((t + 1) / T) / f(0) for t in range(T - 1)])
    torch.testing.assert_close(sch.alpha_bar[:-1].double(), expected.double(), atol=1e-6, rtol=1e-5)
    assert (sch.betas > 0).all() and (sch.betas <= 0.999).all() and (sch.alpha_bar.diff() < 0).all()
    torch.testing.assert_close(sch.alpha_bar, torch.cumprod(1 - cosine_betas(T), 0).float())
    # q_sample is affine in eps: coefficients sqrt(abar) for x0, sqrt(1 - abar) for eps
    x0, t = torch.tensor([-2.0, 0.5, 1.0]), torch.tensor([0, 20, 48])
    a = sch.alpha_bar[t]
    torch.testing.assert_close(sch.q_sample(x0, t, torch.zeros(3)), a.sqrt() * x0)
    torch.testing.assert_close(sch.q_sample(x0, t, torch.ones(3)) - sch.q_sample(x0, t, torch.zeros(3)), (1 - a).sqrt())
    # empirically: mean sqrt(abar_t) x0 and variance 1 - abar_t
    g = torch.Generator().manual_seed(0)
    n = 200_000
    for level, x in [(0, 1.5), (10, -1.0), (25, 2.0), (40, 0.7), (49, -3.0)]:
        xt = sch.q_sample(torch.full((n,), x), torch.full((n,), level), torch.randn(n, generator=g))
        ab = sch.alpha_bar[level].item()
        assert xt.mean().item() == pytest.approx(math.sqrt(ab) * x, abs=4 * math.sqrt((1 - ab) / n) + 1e-6)
        assert xt.var().item() == pytest.approx(1 - ab, rel=0.02, abs=1e-6)
    assert sch.abar(torch.tensor(-1)).item() == 1.0


def test_ddim_step_with_the_true_noise_lands_on_the_forward_process():
    """eta = 0 and the exact noise: DDIM from level t reaches exactly q_sample(x0, t_prev, same noise)."""
    sch = NoiseScheduler(50)
    assert sch.ddim_timesteps(10) == [45, 40, 35, 30, 25, 20, 15, 10, 5, 0]
    assert sch.ddim_timesteps(10, "trailing") == [49, 44, 39, 34, 29, 24, 19, 14, 9, 4]
    assert sch.ddim_timesteps(50) == list(range(49, -1, -1))
    with pytest.raises(ModelError):
        sch.ddim_timesteps(51)
    x0, eps = torch.tensor([-1.2, 0.3, 2.0]), torch.tensor([0.5, -1.0, 0.1])
    for t, t_prev in [(45, 40), (20, 5), (5, -1)]:
        x_prev = sch.ddim_step(sch.q_sample(x0, torch.full((3,), t), eps), eps, t, t_prev)
        torch.testing.assert_close(x_prev, sch.q_sample(x0, torch.full((3,), t_prev), eps), atol=1e-5, rtol=1e-5)
    clipped = sch.ddim_step(sch.q_sample(x0, torch.full((3,), 5), eps), eps, 5, -1, clip=1.0)
    torch.testing.assert_close(clipped, x0.clamp(-1, 1))


def test_kernel_density_estimate():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(1, 1000, generator=g)
    x = torch.tensor([[-1.0, 0.0, 1.5]])
    got = kde_log_prob(s, x, 0.01)
    np.testing.assert_allclose(got.numpy(), norm.logpdf(x.numpy()), atol=0.1)
    same = torch.zeros(1, 16)        # a degenerate sample: the bandwidth floor, a sharp peak
    assert kde_log_prob(same, torch.zeros(1), 0.01).item() == pytest.approx(norm.logpdf(0, 0, 0.01), abs=1e-4)


# -- multimodality -------------------------------------------------------------------------------------------
def _train_bimodal(name: str, steps: int = 300, batch: int = 256, seed: int = 0, **kw):
    """As tests/test_models.py: heading -30 or +30 (50/50) on aircraft 1 for one constant context."""
    torch.manual_seed(seed)
    head = HEADS.get(name)(8, head_config(name, hidden=32, **kw))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    ctx, g = torch.ones(batch, 8), torch.Generator().manual_seed(seed)
    for _ in range(steps):
        sign = torch.randint(0, 2, (batch,), generator=g) * 2.0 - 1.0
        loss, _ = head.loss(ctx, acting(30.0 * sign))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    head.eval()
    with torch.no_grad():
        return head, head.sample(ctx[:4], 500, torch.Generator().manual_seed(1)), head.predict(ctx[:1])


def _modes(s: Decisions) -> tuple[float, float]:
    assert (s.act == 1).float().mean() > 0.95 and (s.aircraft == 1).float().mean() > 0.95
    assert (s.type == 0).float().mean() > 0.95
    return ((s.value - 30).abs() < 10).float().mean().item(), ((s.value + 30).abs() < 10).float().mean().item()


@pytest.mark.parametrize("latent,steps", [("continuous", 1000), ("discrete", 300)])
def test_cvae_learned_prior_samples_both_modes(latent, steps):
    head, s, pred = _train_bimodal("cvae", steps=steps, latent=latent)
    plus, minus = _modes(s)
    print(f"cvae ({latent}): +30 mode {plus:.3f}, -30 mode {minus:.3f}, predict {pred.value.item():.1f}")
    assert plus >= 0.25 and minus >= 0.25
    assert abs(abs(pred.value.item()) - 30) < 10                          # predict: a mode, not the mean
    ctx = torch.ones(3, 8)
    with torch.no_grad():
        lp = head.log_prob(ctx, acting([-30.0, 0.0, 30.0]))
    assert lp[0] > lp[1] + 1 and lp[2] > lp[1] + 1
    if latent == "discrete":                                              # the two modes, two codes
        post = head.code_posterior(ctx[:2], torch.ones(2, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                                   torch.tensor([-30.0, 30.0]))
        assert post.probs.shape == (2, 3) and (post.probs.max(-1).values > 0.9).all()
        assert post.probs[0].argmax() != post.probs[1].argmax()
        prior = head.code_prior(ctx[:1]).probs[0]
        assert prior[post.probs[0].argmax()] > 0.3 and prior[post.probs[1].argmax()] > 0.3


def test_diffusion_samples_both_modes_where_the_deterministic_head_does_not():
    _, s, pred = _train_bimodal("diffusion")
    plus, minus = _modes(s)
    _, sd, pred_d = _train_bimodal("deterministic")
    plus_d, minus_d = _modes(sd)
    print(f"diffusion: +30 mode {plus:.3f}, -30 mode {minus:.3f}, predict {pred.value.item():.1f}; "
          f"deterministic: {plus_d:.3f}, {minus_d:.3f}, predict {pred_d.value.item():.1f}")
    assert plus >= 0.25 and minus >= 0.25
    assert abs(abs(pred.value.item()) - 30) < 10
    assert plus_d == 0 and minus_d == 0 and abs(pred_d.value.item()) < 5


def test_diffusion_density_estimate_finds_the_modes():
    head, _, _ = _train_bimodal("diffusion", steps=200)
    ctx = torch.ones(3, 8)
    with torch.no_grad():
        lp = head.log_prob(ctx, acting([-30.0, 0.0, 30.0]))
        alone = head.log_prob(ctx[:1], acting([30.0]))
    assert lp[0] > lp[1] + 3 and lp[2] > lp[1] + 3
    torch.testing.assert_close(alone[0], lp[2])                         # a row's estimate ignores its batch


# -- likelihoods ---------------------------------------------------------------------------------------------
def _flatten(module: torch.nn.Module, bias) -> None:
    last = module[-1] if isinstance(module, torch.nn.Sequential) else module
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))


def test_discrete_code_log_prob_equals_the_enumeration_by_hand():
    head = HEADS.get("cvae")(8, head_config("cvae", hidden=16, latent="discrete", codes=3)).eval()
    prior_logits, shift, mu0, sd = np.array([0.4, -0.3, 0.1]), np.array([-1.0, 0.2, 1.3]), 0.1, 0.4
    _flatten(head.act_out, [0.2, 1.1])
    _flatten(head.aircraft_out, [0.0, 0.0])
    _flatten(head.type_net, [0.0] * len(ACTION_TYPES))
    _flatten(head.prior_net, prior_logits)
    _flatten(head.decoder, [mu0, math.log(math.expm1(sd - 1e-3))])      # softplus(raw) + 1e-3 = sd
    with torch.no_grad():
        head.code_mean.weight.copy_(torch.tensor(shift, dtype=torch.float32)[None])
    values = np.array([-45.0, -10.0, 0.0, 5.0, 40.0])
    got = head.log_prob(torch.randn(5, 8), acting(values)).detach().double().numpy()
    w = prior_logits - logsumexp(prior_logits)
    value = logsumexp(w[None] + norm.logpdf(values[:, None] / 30.0, mu0 + shift[None], sd), axis=1) - np.log(30.0)
    expected = (1.1 - logsumexp([0.2, 1.1])) + np.log(0.5) + np.log(1 / len(ACTION_TYPES)) + value
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # the exact code posterior is Bayes' rule over the same enumeration; no value: the prior
    post = head.code_posterior(torch.randn(5, 8), torch.ones(5, dtype=torch.long), torch.zeros(5, dtype=torch.long),
                               torch.tensor(values, dtype=torch.float32)).probs.double().numpy()
    joint = w[None] + norm.logpdf(values[:, None] / 30.0, mu0 + shift[None], sd)
    np.testing.assert_allclose(post, np.exp(joint - logsumexp(joint, axis=1, keepdims=True)), atol=1e-5)
    idle = head.code_posterior(torch.randn(2, 8), torch.tensor([-1, 0]), torch.tensor([-1, RESUME]),
                               torch.tensor([float("nan"), 0.0])).probs.double().numpy()
    np.testing.assert_allclose(idle, np.exp(w)[None].repeat(2, 0), atol=1e-6)


def _brute_force_value_log_prob(head, ctx, dec, n: int = 50_000) -> torch.Tensor:
    """log p(value) by plain Monte Carlo over the learned prior, in the type's unit."""
    params = head.value_params(head.trunk(ctx), dec.aircraft, dec.type)
    c = head.prior(params).sample((n,))                                          # (n, B, L)
    mu, sd = head.decode(params.expand(n, *params.shape), c)
    scale = 30.0
    lp = torch.distributions.Normal(mu, sd).log_prob(dec.value / scale)
    return torch.logsumexp(lp, 0) - math.log(n) - math.log(scale)


def test_continuous_log_prob_is_a_deterministic_importance_estimate():
    """The importance-sampled estimate converges to brute-force Monte Carlo over the prior as K grows, is
    the same on every call and for a row alone or in a batch (here an untrained head: q is a poor proposal)."""
    torch.manual_seed(0)
    head = HEADS.get("cvae")(8, head_config("cvae", hidden=16, latent_dim=2)).eval()
    ctx, dec = torch.randn(4, 8), acting([-20.0, 0.0, 10.0, 35.0])
    with torch.no_grad():
        got = head.terms(ctx, dec)["value"]
        again = head.terms(ctx[2:3], acting([10.0]))["value"]
        brute = _brute_force_value_log_prob(head, ctx, dec)
        head.is_samples = 20_000
        many = head.terms(ctx, dec)["value"]
    torch.testing.assert_close(many, brute, atol=0.03, rtol=0)
    torch.testing.assert_close(got, brute, atol=0.3, rtol=0)
    torch.testing.assert_close(again[0], got[2])
    assert head.exact_log_prob is False


# -- persistence and mixed precision -------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_save_load_reproduces_samples(spec, tmp_path, variant):  # noqa: F811
    torch.manual_seed(1)
    policy = build_policy(config(variant, "mlp"), spec)
    policy.loss(make_obs(spec), make_dec())[0].backward()
    torch.optim.SGD(policy.parameters(), lr=0.1).step()
    policy.eval().save(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    assert loaded.config.head == policy.config.head
    obs = make_obs(spec, seed=5)
    sa = policy.sample(obs, 9, torch.Generator().manual_seed(7))
    sb = loaded.sample(obs, 9, torch.Generator().manual_seed(7))
    for x, y in zip((sa.act, sa.aircraft, sa.type, sa.value), (sb.act, sb.aircraft, sb.type, sb.value)):
        torch.testing.assert_close(x, y, equal_nan=True)
    a, b = policy.predict(obs), loaded.predict(obs)
    torch.testing.assert_close(a.value, b.value, equal_nan=True)
    torch.testing.assert_close(policy.log_prob(obs, make_dec()), loaded.log_prob(obs, make_dec()))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bf16_autocast_keeps_log_probs_and_samples_float32(spec, variant):  # noqa: F811
    policy = build_policy(config(variant, "transformer"), spec)
    obs, dec = make_obs(spec), make_dec()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = policy.loss(obs, dec)
        lp = policy.log_prob(obs, dec)
        s = policy.eval().sample(obs, 3, torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and lp.dtype == torch.float32 and torch.isfinite(lp).all()
    assert s.value.dtype == torch.float32 and torch.isfinite(s.value[s.act == 1]).all()
    loss.backward()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cuda_autocast_and_cpu_generator(spec, variant):  # noqa: F811
    policy = build_policy(config(variant), spec).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, _ = policy.loss(make_obs(spec), make_dec())
        policy.eval()
        s = policy.sample(make_obs(spec), 4, torch.Generator().manual_seed(0))
        lp = policy.log_prob(make_obs(spec), make_dec())
        p = policy.predict(make_obs(spec))
    loss.backward()
    assert torch.isfinite(loss) and s.value.device.type == "cuda" and lp.dtype == torch.float32
    assert torch.isfinite(lp).all() and torch.isfinite(p.value[p.act == 1]).all()
