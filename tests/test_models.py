"""Models: normaliser, encoders x heads (shapes, losses, gradients), multimodality, exact likelihoods,
save/load, compile and autocast. Tiny specs with the real feature counts; CPU; seeds fixed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import norm

from atc_il.errors import ConfigError, ModelError
from atc_il.schemas import ACTION_TYPES
from models.config import ModelConfig, VAEConfig, load_model_config
from models.encoders import MLPEncoder  # noqa: F401  (registers the encoders)
from models.heads import HEADS, RESUME, head_config
from models.interface import ENCODERS, Decisions
from models.normalizer import Normalizer
from models.policy import build_policy, load_policy
from models.vae import HistoryVAE
from tests.helpers import NAN, B, H, check_policy_interface, make_dec, make_obs

ENC_NAMES = ["markov", "mlp", "gru", "transformer"]
HEAD_NAMES = ["deterministic", "mdn", "autoregressive"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(enc: str = "gru", head: str = "mdn", vae: bool = True, **head_kw) -> ModelConfig:
    return ModelConfig(encoder={"name": enc, "hidden": 16, "layers": 1, "heads": 2},
                       vae={"enabled": vae, "latent_dim": 4}, head={"name": head, "hidden": 16, **head_kw})


# -- normaliser ------------------------------------------------------------------------------------
def test_normalizer_normalises_valid_entries_and_keeps_padding_at_zero(spec):
    obs = make_obs(spec)
    obs.neighbours[0, 0, 0, :-1] = NAN     # garbage in a padding row must not leak
    norm_ = Normalizer(spec)
    out = norm_(obs)
    for name in ("pair", "neighbours", "geometry", "clearances"):
        x, z = getattr(obs, name), getattr(out, name)
        st = spec["normalisation"][name]
        mean, std = torch.tensor(st["mean"]), torch.tensor(st["std"])
        valid = x[..., -1] > 0.5
        assert torch.equal(z[..., -1], x[..., -1])
        assert (z[~valid] == 0).all()
        torch.testing.assert_close(z[valid][:, :-1], ((x[valid] - mean) / std)[:, :-1])
    assert {"pair_mean", "pair_std", "clearances_std"} <= set(norm_.state_dict())


def test_normalizer_without_statistics_raises(spec):
    bare = {k: v for k, v in spec.items() if k != "normalisation"}
    with pytest.raises(ModelError, match="normalisation"):
        Normalizer(bare)
    with pytest.raises(ModelError, match="clearances"):
        Normalizer({**spec, "normalisation": {k: v for k, v in spec["normalisation"].items() if k != "clearances"}})


# -- every encoder x head ----------------------------------------------------------------------------
def test_registries_hold_every_name():
    assert ENCODERS.names() == sorted(ENC_NAMES)
    assert set(HEAD_NAMES) <= set(HEADS.names()) and {"cvae", "diffusion"} <= set(HEADS.names())
    with pytest.raises(ModelError, match="unknown head"):
        HEADS.get("nope")


@pytest.mark.parametrize("enc", ENC_NAMES)
def test_encoder_shapes(spec, enc):
    cfg = config(enc)
    e = ENCODERS.get(enc)(spec, cfg.encoder)
    summary, per_step = e(Normalizer(spec)(make_obs(spec)))
    assert summary.shape == (B, e.out_dim) and torch.isfinite(summary).all()
    assert per_step is None if enc in ("mlp", "markov") else per_step.shape == (B, H, cfg.encoder.hidden)


@pytest.mark.parametrize("head", HEAD_NAMES)
@pytest.mark.parametrize("enc", ENC_NAMES)
def test_policy_losses_gradients_and_shapes(spec, enc, head):
    torch.manual_seed(0)
    policy = build_policy(config(enc, head), spec)
    obs, dec = make_obs(spec), make_dec()
    logs = check_policy_interface(policy, obs, dec)
    assert {"vae_recon", "vae_kl"} <= set(logs)
    assert policy.exact_log_prob == (head != "deterministic")


def test_act_zero_counts_only_the_act_term(spec):
    policy = build_policy(config("mlp", "mdn"), spec).eval()
    obs = make_obs(spec)
    idle = Decisions(torch.zeros(B, dtype=torch.long), torch.full((B,), -1), torch.full((B,), -1),
                     torch.full((B,), NAN))
    t = policy.log_prob_terms(obs, idle)
    assert (t["aircraft"] == 0).all() and (t["type"] == 0).all() and (t["value"] == 0).all()
    torch.testing.assert_close(policy.log_prob(obs, idle), t["act"])


def test_policy_without_vae_and_vae_posterior(spec):
    plain = build_policy(config("gru", "mdn", vae=False), spec)
    _, logs = plain.loss(make_obs(spec), make_dec())
    assert "vae_kl" not in logs
    with pytest.raises(ModelError, match="no VAE"):
        plain.posterior_mean(make_obs(spec))
    policy = build_policy(config("gru", "mdn"), spec)       # training mode: z is sampled in loss() only
    z = policy.posterior_mean(make_obs(spec))
    assert z.shape == (B, 4)
    obs, dec = make_obs(spec), make_dec()
    torch.testing.assert_close(policy.log_prob(obs, dec), policy.log_prob(obs, dec))
    s1, s2 = (policy.sample(obs, 5, torch.Generator().manual_seed(2)) for _ in range(2))
    torch.testing.assert_close(s1.value, s2.value, equal_nan=True)
    assert policy.loss(obs, dec)[1]["vae_recon"] > 0
    with pytest.raises(ModelError, match="future"):
        HistoryVAE(spec, VAEConfig(predict_future_steps=2), 16)


# -- multimodality -----------------------------------------------------------------------------------
def _train_bimodal(name: str, steps: int = 300, batch: int = 256, seed: int = 0):
    torch.manual_seed(seed)
    head = HEADS.get(name)(8, head_config(name, hidden=32, **({"components": 2} if name == "mdn" else {})))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)   # settle, don't chase the last batch
    ctx, g = torch.ones(batch, 8), torch.Generator().manual_seed(seed)
    ones = torch.ones(batch, dtype=torch.long)
    for _ in range(steps):
        sign = torch.randint(0, 2, (batch,), generator=g) * 2.0 - 1.0
        loss, _ = head.loss(ctx, Decisions(ones, ones, ones * 0, 30.0 * sign))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        return head.eval().sample(ctx[:4], 500, torch.Generator().manual_seed(1)), head.predict(ctx[:1])


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_bimodal_target_modes(name):
    """Heading -30 or +30 (50/50) on aircraft 1 for one context: the density heads sample both modes,
    the deterministic head regresses to the mean (~0) and misses both."""
    s, pred = _train_bimodal(name)
    assert (s.act == 1).float().mean() > 0.95 and (s.aircraft == 1).float().mean() > 0.95
    assert (s.type == 0).float().mean() > 0.95
    plus = ((s.value - 30).abs() < 10).float().mean().item()
    minus = ((s.value + 30).abs() < 10).float().mean().item()
    print(f"{name}: +30 mode {plus:.3f}, -30 mode {minus:.3f}")
    if name == "deterministic":
        assert plus == 0 and minus == 0
        assert pred.value.abs().item() < 5
    else:
        assert plus >= 0.25 and minus >= 0.25


# -- exact likelihoods ---------------------------------------------------------------------------------
def _flatten_outputs(head, biases: dict):
    """Zero the last layer of each part so its output is its bias (a constant distribution)."""
    with torch.no_grad():
        for part, bias in biases.items():
            last = getattr(head, part)
            last = last[-1] if isinstance(last, torch.nn.Sequential) else last
            last.weight.zero_()
            last.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))


def test_mdn_log_prob_matches_closed_form_mixture():
    head = HEADS.get("mdn")(8, head_config("mdn", hidden=16, components=2)).eval()
    logits, mu, sd = np.array([0.3, -0.4]), np.array([-1.0, 0.8]), np.array([0.5, 0.25])
    raw = np.log(np.expm1(sd - 1e-3))       # inverse of softplus(raw) + 1e-3
    _flatten_outputs(head, {"act_out": [0.2, 1.1], "aircraft_out": [0.0, 0.0],
                            "type_net": [0.0] * len(ACTION_TYPES), "value_net": np.concatenate([logits, mu, raw])})
    values = np.array([-30.0, -12.5, 0.0, 24.0, 61.0])
    n = len(values)
    dec = Decisions(torch.ones(n, dtype=torch.long), torch.ones(n, dtype=torch.long),
                    torch.zeros(n, dtype=torch.long), torch.tensor(values, dtype=torch.float32))
    got = head.log_prob(torch.randn(n, 8), dec).detach().double().numpy()
    scale = 30.0                              # heading: the mixture is over value / 30 deg
    w = logits - logsumexp(logits)
    mix = logsumexp(w[None] + norm.logpdf(values[:, None] / scale, mu[None], sd[None]), axis=1) - np.log(scale)
    expected = (1.1 - logsumexp([0.2, 1.1])) + np.log(0.5) + np.log(1 / len(ACTION_TYPES)) + mix
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_value_densities_are_in_the_types_unit():
    """A uniform autoregressive value head has density 1 / (range width) in the type's unit, and the
    three heads' value terms are comparable (same unit) for the same value."""
    cfg = head_config("autoregressive", hidden=16, value_bins=8)
    head = HEADS.get("autoregressive")(4, cfg)
    _flatten_outputs(head, {"value_net": [0.0] * 8})
    for i, t in enumerate(ACTION_TYPES):
        if i == RESUME:
            continue
        lo, hi = cfg.value_range[t]
        dec = Decisions(torch.ones(3, dtype=torch.long), torch.zeros(3, dtype=torch.long),
                        torch.full((3,), i), torch.tensor([lo + 1e-3, (lo + hi) / 2, hi - 1e-3]))
        terms = head.terms(torch.zeros(3, 4), dec)
        torch.testing.assert_close(terms["value"], torch.full((3,), -math.log(hi - lo)))
    det = HEADS.get("deterministic")(4, head_config("deterministic", hidden=16))
    _flatten_outputs(det, {"value_net": [0.0]})
    dec = Decisions(torch.ones(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), torch.tensor([1]),
                    torch.tensor([500.0]))       # altitude: N(0.5; 0, 1) / 1000 ft
    got = det.terms(torch.zeros(1, 4), dec)["value"].item()
    assert got == pytest.approx(norm.logpdf(0.5) - math.log(1000.0), abs=1e-5)


# -- persistence, compile, autocast --------------------------------------------------------------------
def test_save_load_round_trip(spec, tmp_path):
    torch.manual_seed(1)
    policy = build_policy(config("transformer", "mdn"), spec)
    policy.loss(make_obs(spec), make_dec())[0].backward()
    torch.optim.SGD(policy.parameters(), lr=0.1).step()       # weights differ from a fresh build
    policy.eval().save(tmp_path / "p")
    assert {f.name for f in (tmp_path / "p").iterdir()} == {"weights.pt", "config.yaml", "feature_spec.json"}
    loaded = load_policy(tmp_path / "p")
    assert not loaded.training and loaded.config == policy.config
    obs = make_obs(spec, seed=5)
    a, b = policy.predict(obs), loaded.predict(obs)
    for x, y in zip((a.act, a.aircraft, a.type, a.value), (b.act, b.aircraft, b.type, b.value)):
        torch.testing.assert_close(x, y, equal_nan=True)
    sa = policy.sample(obs, 9, torch.Generator().manual_seed(7))
    sb = loaded.sample(obs, 9, torch.Generator().manual_seed(7))
    for x, y in zip((sa.act, sa.aircraft, sa.type, sa.value), (sb.act, sb.aircraft, sb.type, sb.value)):
        torch.testing.assert_close(x, y, equal_nan=True)
    torch.testing.assert_close(policy.log_prob(obs, make_dec()), loaded.log_prob(obs, make_dec()))


def test_policy_saved_with_the_flat_head_config_loads(spec, tmp_path):
    """Policies saved before the heads had their own configs hold every head's fields in config.yaml."""
    import yaml
    policy = build_policy(ModelConfig(head={"name": "autoregressive", "hidden": 16, "value_bins": 8}), spec).eval()
    policy.save(tmp_path / "p")
    path = tmp_path / "p" / "config.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["head"] = {"name": "autoregressive", "hidden": 16, "components": 4, "value_bins": 8, "latent_dim": 4,
                   "latent": "continuous", "codes": 3, "diffusion_steps": 50, "sampling_steps": 10,
                   "beta_schedule": "cosine", "value_range": raw["head"]["value_range"]}
    path.write_text(yaml.safe_dump(raw))
    loaded = load_policy(tmp_path / "p")
    assert loaded.config == policy.config
    obs = make_obs(spec, seed=2)
    torch.testing.assert_close(loaded.predict(obs).value, policy.predict(obs).value, equal_nan=True)
    with pytest.raises(ConfigError, match="components"):      # a config file is still checked strictly
        load_model_config(head={"name": "autoregressive", "components": 4})


def test_load_without_normalisation_or_spec_raises(spec, tmp_path):
    build_policy(config("mlp", "deterministic"), spec).save(tmp_path / "p")
    path = tmp_path / "p" / "feature_spec.json"
    bare = {k: v for k, v in json.loads(path.read_text()).items() if k != "normalisation"}
    path.write_text(json.dumps(bare))
    with pytest.raises(ModelError, match="normalisation"):
        load_policy(tmp_path / "p")
    path.unlink()
    with pytest.raises(ModelError, match="feature_spec.json is missing"):
        load_policy(tmp_path / "p")
    with pytest.raises(ModelError, match="no such policy directory"):
        load_policy(tmp_path / "nowhere")


@pytest.mark.parametrize("enc", ENC_NAMES)
def test_encoders_trace_with_torch_compile(spec, enc):
    """No data-dependent control flow: mlp and transformer trace as one graph; the GRU is the one
    allowed graph break (dynamo runs nn.GRU eagerly, e.g. cuDNN)."""
    torch._dynamo.reset()
    e = ENCODERS.get(enc)(spec, config(enc).encoder)
    obs = Normalizer(spec)(make_obs(spec))
    compiled = torch.compile(e, backend="eager", fullgraph=enc != "gru")
    for mode in (e.train, e.eval):
        mode()
        torch.testing.assert_close(compiled(obs)[0], e(obs)[0])


def test_bf16_autocast_keeps_log_probs_float32(spec):
    policy = build_policy(config("transformer", "mdn"), spec)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = policy.loss(make_obs(spec), make_dec())
        lp = policy.log_prob(make_obs(spec), make_dec())
    assert loss.dtype == torch.float32 and lp.dtype == torch.float32 and torch.isfinite(lp).all()
    loss.backward()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("enc", ENC_NAMES)
def test_cuda_autocast_and_cpu_generator(spec, enc):
    policy = build_policy(config(enc, "mdn"), spec).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, _ = policy.loss(make_obs(spec), make_dec())
        s = policy.eval().sample(make_obs(spec), 4, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and s.value.device.type == "cuda"


def test_given_act_predicts_and_samples_actions_only(spec):
    """Evaluation scores aircraft, type and value given that the controller acts."""
    for head in ("deterministic", "mdn", "autoregressive"):
        pol = build_policy(ModelConfig(head={"name": head}), spec)
        ctx = pol.encode(make_obs(spec, 5))
        d = pol.predict_action(ctx)
        assert (d.act == 1).all() and (d.aircraft >= 0).all() and (d.type >= 0).all()
        s = pol.sample_actions(ctx, 7, torch.Generator().manual_seed(0))
        assert s.act.shape == (5, 7) and (s.act == 1).all() and (s.type >= 0).all()
