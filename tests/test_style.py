"""The session style code (models/style.py): an exact mixture over codes, inferred from the session features."""

import pytest
import torch

from atc_il.config import DatasetConfig
from atc_il.errors import ModelError
from models.config import ModelConfig
from models.interface import Decisions, Observations, PolicyInterface
from models.policy import build_policy
from pipelines.features import feature_spec
from tests.helpers import untrained_policy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = DatasetConfig(history_steps=4, neighbours=2, recent_clearances=3)
N = 7


def _feats(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    spec = feature_spec(CFG, 5.0)
    out = {k: torch.randn((N, *t["shape"]), generator=g) for k, t in spec["tensors"].items()}
    for x in out.values():
        x[..., -1] = 1.0
    return out


def _policy(codes: int = 3):
    base = untrained_policy(CFG, {k: v.numpy() for k, v in _feats().items()}, 5.0, encoder="gru")
    cfg = ModelConfig(encoder={"name": "gru", "hidden": 8, "layers": 1}, vae={"enabled": False},
                      head={"name": "mdn", "hidden": 8, "components": 2}, style={"enabled": True, "codes": codes})
    torch.manual_seed(0)
    return build_policy(cfg, base.spec)


def _dec() -> Decisions:
    return Decisions(torch.tensor([0, 1, 1, 0, 1, 1, 0]), torch.tensor([-1, 0, 1, -1, 1, 0, -1]),
                     torch.tensor([-1, 0, 1, -1, 2, 4, -1]),
                     torch.tensor([float("nan"), 20.0, -1000.0, float("nan"), 10.0, 0.0, float("nan")]))


def test_the_likelihood_is_the_exact_mixture_over_codes():
    pol = _policy().eval()
    assert isinstance(pol, PolicyInterface) and pol.has_discrete_code
    obs, dec = Observations.from_dict(_feats()), _dec()
    with torch.no_grad():
        ctx = pol.encode(obs)
        c, logits = ctx.tensor[:, :-3], ctx.tensor[:, -3:]
        log_q = torch.log_softmax(logits, -1)
        per_code = torch.stack([pol.head.log_prob(c + pol.style.emb.weight[k], dec) for k in range(3)], 1)
        expected = torch.logsumexp(log_q + per_code, 1)
        assert torch.allclose(pol.log_prob(ctx, dec), expected, atol=1e-5)
        terms = pol.log_prob_terms(ctx, dec)
        assert torch.allclose(sum(terms.values()), expected, atol=1e-5)       # the chain rule is exact
        pa = torch.stack([pol.head.p_act(c + pol.style.emb.weight[k]) for k in range(3)], 1)
        assert torch.allclose(pol.p_act(ctx), (log_q.exp() * pa).sum(1), atol=1e-6)
        assert torch.allclose(terms["act"].exp()[dec.act == 1], pol.p_act(ctx)[dec.act == 1], atol=1e-5)
        assert torch.allclose(pol.code_prior(ctx).probs, log_q.exp(), atol=1e-6)
        post = pol.code_posterior(ctx, dec).probs
        assert torch.allclose(post, torch.softmax(log_q + per_code, 1), atol=1e-5)


def test_training_step_reaches_the_code_network_and_decisions_have_their_shapes():
    pol = _policy().train()
    obs, dec = Observations.from_dict(_feats()), _dec()
    loss, logs = pol.loss(obs, dec)
    loss.backward()
    assert torch.isfinite(loss) and {"nll_act", "nll_type", "nll"} <= set(logs)
    assert pol.style.q[0].weight.grad.abs().sum() > 0 and pol.style.emb.weight.grad.abs().sum() > 0
    pol.eval()
    g = torch.Generator().manual_seed(1)
    s = pol.sample_actions(obs, 5, g)
    assert s.act.shape == (N, 5) and bool((s.act == 1).all())
    p = pol.predict_action(obs)
    assert p.type.shape == (N,) and bool((p.act == 1).all())
    d = pol.predict(obs)
    assert bool(((d.act == 1) == (pol.p_act(obs) >= 0.5)).all())


def test_style_needs_the_session_features():
    base = untrained_policy(DatasetConfig(history_steps=4, neighbours=2, recent_clearances=3, controller_history=False),
                            {k: v.numpy()[..., :] for k, v in _feats_without_history().items()}, 5.0)
    cfg = ModelConfig(encoder={"name": "mlp", "hidden": 8, "layers": 1}, vae={"enabled": False},
                      head={"name": "mdn", "hidden": 8}, style={"enabled": True})
    with pytest.raises(ModelError, match="controller_history"):
        build_policy(cfg, base.spec)


def _feats_without_history() -> dict:
    spec = feature_spec(DatasetConfig(history_steps=4, neighbours=2, recent_clearances=3, controller_history=False), 5.0)
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn((N, *t["shape"]), generator=g) for k, t in spec["tensors"].items()}
