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
    assert pol.style.habits.grad.abs().sum() > 0 and pol.style.emb.weight.grad.abs().sum() > 0
    pol.eval()
    g = torch.Generator().manual_seed(1)
    s = pol.sample_actions(obs, 5, g)
    assert s.act.shape == (N, 5) and bool((s.act == 1).all())
    p = pol.predict_action(obs)
    assert p.type.shape == (N,) and bool((p.act == 1).all())
    d = pol.predict(obs)
    assert bool(((d.act == 1) == (pol.p_act(obs) >= 0.5)).all())


def test_the_counts_posterior_accumulates_the_evidence_of_each_clearance():
    """q(c | session) = softmax(log prior + beta * sum_t n_t log pi_c(t)): each earlier clearance of a kind adds
    the same evidence, so twice the counts square the likelihood ratio (and no clearance leaves the prior)."""
    pol = _policy().eval()
    st = pol.style
    with torch.no_grad():
        st.habits.copy_(torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]]))
        geom = torch.zeros(2, 1, len(pol.feature_spec.feature_names("geometry")))
        geom[0, 0, st.session_idx[1]] = 1.0
        geom[1, 0, st.session_idx[1]] = 2.0
        lq = torch.log_softmax(st.logits(geom, geom), -1)
        none = torch.log_softmax(st.logits(torch.zeros_like(geom), geom), -1)
    assert int(lq[0].argmax()) == 1 and torch.allclose(none, torch.log_softmax(st.log_prior, -1).expand(2, -1))
    ratio1, ratio2 = lq[0, 1] - lq[0, 0], lq[1, 1] - lq[1, 0]
    assert torch.allclose(ratio2, 2 * ratio1, atol=1e-5)


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


def test_action_marginals_are_the_policys_aircraft_and_type_distributions_given_acting():
    """models.evaluate.action_marginals: p(aircraft | act) and p(type | act) (marginal over the aircraft) sum to
    one, and for a style policy they are the code mixture's (the head's, weighted by the posterior given acting)."""
    from models.evaluate import action_marginals
    from models.interface import N_TYPES
    pol = _policy().eval()
    obs = Observations.from_dict(_feats())
    with torch.no_grad():
        ctx = pol.encode(obs)
        p_ac, p_ty = action_marginals(pol, ctx, N)
        c, log_q = ctx.tensor[:, :-3], torch.log_softmax(ctx.tensor[:, -3:], -1)
        joint = torch.zeros(N, 2, N_TYPES)
        pa = torch.stack([pol.head.p_act(c + pol.style.emb.weight[k]) for k in range(3)], 1)
        w = log_q.exp() * pa
        w = w / w.sum(1, keepdim=True)                                    # posterior over codes given acting
        one, zero = torch.ones(N, dtype=torch.long), torch.zeros(N)
        for k in range(3):
            for a in (0, 1):
                for t in range(N_TYPES):
                    terms = pol.head.terms(c + pol.style.emb.weight[k], Decisions(one, one * a, one * t, zero))
                    joint[:, a, t] += w[:, k] * (terms["aircraft"] + terms["type"]).exp()
    assert torch.allclose(p_ac.sum(1), torch.ones(N), atol=1e-5) and torch.allclose(p_ty.sum(1), torch.ones(N), atol=1e-5)
    assert torch.allclose(p_ac, joint.sum(2), atol=1e-5) and torch.allclose(p_ty, joint.sum(1), atol=1e-5)


def test_the_codes_habits_start_at_the_clusters_of_the_sessions_clearance_mixes():
    """StyleCode.init_habits: three kinds of session (mostly heading, mostly altitude, mostly speed clearances) give
    three codes, each preferring one of those kinds; too little history leaves the habits as they were."""
    pol = _policy()
    st = pol.style
    names = pol.feature_spec.feature_names("geometry")
    g = torch.Generator().manual_seed(0)
    geom = torch.zeros(300, 1, len(names))
    for i, kind in enumerate((0, 1, 2)):
        counts = torch.randint(0, 2, (100, 4), generator=g).float()
        counts[:, kind] += 6.0
        geom[i * 100:(i + 1) * 100, 0, st.session_idx] = counts
    before = st.habits.clone()
    assert not st.init_habits(geom[:5])                        # too few steps with history: unchanged
    assert torch.equal(st.habits, before)
    assert st.init_habits(geom)
    assert sorted(st.habits.argmax(-1).tolist()) == [0, 1, 2]


def test_a_code_held_fixed_gives_that_codes_decisions_and_the_session_prior_is_q_before_any_clearance():
    """A simulated controller holds its session's code (simulator_adapters.model_controller): p_act and
    predict_action under ``code`` are the head's under that code where code >= 0, the marginal where -1; the
    session prior is q(c | no clearance), the counts posterior at zero counts."""
    pol = _policy().eval()
    obs = Observations.from_dict(_feats())
    code = torch.tensor([0, 1, 2, -1, 2, 1, 0])
    with torch.no_grad():
        ctx = pol.encode(obs)
        c = ctx.tensor[:, :-3]
        pa = torch.stack([pol.head.p_act(c + pol.style.emb.weight[k]) for k in range(3)], 1)
        held = pol.p_act(ctx, code=code)
        rows = torch.arange(N)
        fixed = code >= 0
        assert torch.allclose(held[fixed], pa[rows[fixed], code[fixed]], atol=1e-6)
        assert torch.allclose(held[~fixed], pol.p_act(ctx)[~fixed], atol=1e-6)
        d = pol.predict_action(ctx, code=code)
        for k in range(3):
            dk = pol.head.predict(c + pol.style.emb.weight[k], given_act=True)
            sel = code == k
            assert torch.equal(d.type[sel], dk.type[sel]) and torch.equal(d.aircraft[sel], dk.aircraft[sel])
        marginal = pol.predict_action(ctx)
        assert torch.equal(d.type[~fixed], marginal.type[~fixed])
        prior = pol.session_prior()
        assert torch.allclose(prior.probs, torch.softmax(pol.style.log_prior, -1), atol=1e-6)
    assert untrained_policy(CFG, {k: v.numpy() for k, v in _feats().items()}, 5.0, encoder="gru").session_prior() is None
