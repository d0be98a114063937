"""A session-level style code: a discrete latent c in {0..K-1} shared by a controller's decisions, inferred
from the session's clearance history, that every part of the decision is conditioned on.

Why: controllers differ in style (which kind of clearance they prefer, how early they act) and keep it for
their session. A per-decision latent (the history VAE's z, a cvae head's code) is free to encode anything of
one decision, and in practice encodes the kinematics; a code that conditions the whole decision but is
inferred only from what reveals the style, the session's earlier clearances, has to carry the style. It is
the amortised form of the Bayes predictor the achievable ceiling computes (models/ceiling.py): a posterior
over styles given the session so far, and the decision distribution under each.

    q(c | session)           from the controller-history features of the decision step (``session_*``): by
                             default a naive-Bayes posterior, log prior(c) + beta sum_t n_t log pi_c(t), over
                             the counts n_t of each kind of clearance given in the session so far (each earlier
                             clearance adds its evidence, as in the exact posterior over styles), or a small
                             network over the normalised counts (``style.posterior = mlp``); needs
                             ``dataset.controller_history`` (pipelines/history.py)
    p(d | history, c)        the head, its context shifted by a learned embedding of c
    p(d | history, session)  = sum_c q(c | session) p(d | history, c), exact (K head passes)

With ``style.bottleneck`` (default) the encoder and the VAE do not see the ``session_*`` features: a head that
read them directly could predict the style's habits without the code, and the code would be free to mean
nothing; through the bottleneck the session's style reaches the decision only through c.

Training maximises that marginal likelihood. The code's probabilities travel with the context
(:class:`models.interface.Context` holds ``[context, logits of q]``), so the context network exported for
serving (:mod:`models.onnx_context`) includes them. Terms of the log-likelihood are given by the chain
rule (act; aircraft given act; type given both; value given all three), exact and summing to the total.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from atc_il.config import Section
from atc_il.errors import ModelError
from atc_il.feature_spec import FeatureSpec
from models.heads.base import Head, draw, finish, sample_index
from models.interface import Decisions, Observations
from models.layers import mlp

SESSION_PREFIX = "session_"
TERMS = ("act", "aircraft", "type", "value")


class StyleConfig(Section):
    enabled: bool = Field(False, description="a session-level style code inferred from the session's clearance "
                          "history (models/style.py); needs dataset.controller_history")
    codes: int = Field(3, ge=2, description="K: number of style codes")
    hidden: int = Field(32, ge=4, description="width of q(c | session) (posterior = mlp)")
    posterior: Literal["counts", "mlp"] = Field(
        "counts", description="q(c | session): `counts`, a naive-Bayes posterior over the codes from the session's "
        "clearance counts (log q(c) = log prior(c) + beta * sum_t n_t log pi_c(t), with learned prior, type habits "
        "pi_c and evidence scale beta: each earlier clearance adds its evidence, as in the exact posterior over "
        "styles); `mlp`, a small network over the normalised counts")
    bottleneck: bool = Field(True, description="hide the session_* features from the encoder (and the VAE), so "
                             "that the session's style reaches the decision only through the code")


class StyleCode(nn.Module):
    """q(c | session) from the decision step's ``session_*`` geometry features, and the code embeddings."""

    def __init__(self, spec: dict, cfg: StyleConfig, ctx_dim: int):
        super().__init__()
        names = FeatureSpec.of(spec, error=ModelError).feature_names("geometry")
        idx = [i for i, n in enumerate(names) if n.startswith(SESSION_PREFIX)]
        if not idx:
            raise ModelError("style.enabled needs the controller-history features (session_*) in the geometry "
                             "tensor: build the data set with dataset.controller_history = true, or set "
                             "style.enabled = false")
        self.K = cfg.codes
        self.kind = cfg.posterior
        self.register_buffer("session_idx", torch.tensor(idx, dtype=torch.long), persistent=False)
        if cfg.posterior == "counts":
            self.log_prior = nn.Parameter(torch.zeros(cfg.codes))
            self.habits = nn.Parameter(torch.randn(cfg.codes, len(idx)) * 0.5)     # logits of pi_c over kinds
            self.evidence = nn.Parameter(torch.zeros(()))                           # beta = softplus(.) / ln 2
        else:
            self.q = mlp(len(idx), cfg.hidden, cfg.codes, 2)
        self.emb = nn.Embedding(cfg.codes, ctx_dim)
        nn.init.normal_(self.emb.weight, std=0.5)          # distinct codes from the start (symmetry breaking)

    def logits(self, geometry: torch.Tensor, geometry_n: torch.Tensor) -> torch.Tensor:
        """(B, K) unnormalised log q(c | session) from the raw and the normalised geometry tensors (B, H, F)."""
        if self.kind == "counts":
            n = geometry[:, -1].index_select(-1, self.session_idx).float().clamp_min(0.0)   # (B, kinds)
            beta = torch.nn.functional.softplus(self.evidence) / math.log(2.0)              # 1 at init
            return self.log_prior + beta * n @ torch.log_softmax(self.habits.float(), -1).T
        return self.q(geometry_n[:, -1].index_select(-1, self.session_idx)).float()

    @torch.no_grad()
    def prior_logits(self, zero_normalised: torch.Tensor) -> torch.Tensor:
        """(K,) log q(c | no clearance yet in the session); ``zero_normalised``: the session_* features' value 0
        after normalisation (read by ``posterior = mlp``)."""
        if self.kind == "counts":
            return torch.log_softmax(self.log_prior.float(), -1)
        return torch.log_softmax(self.q(zero_normalised.unsqueeze(0)).float()[0], -1)

    @torch.no_grad()
    def init_habits(self, geometry: torch.Tensor, seed: int = 0, min_clearances: int = 3) -> bool:
        """Start the codes' habits pi_c at the clusters (k-means) of the sessions' mixes of clearance kinds, over
        the decision steps with at least ``min_clearances`` earlier clearances, from the raw geometry tensor
        (N, H, F) of the training split. The mixture over codes starts symmetric, and the likelihood alone broke
        the symmetry in one seed of three (bench/RESULTS.md); returns whether the habits were set."""
        if self.kind != "counts":
            return False
        n = geometry[:, -1].index_select(-1, self.session_idx.to(geometry.device)).float().clamp_min(0.0).cpu()
        total = n.sum(-1)
        sel = total >= min_clearances
        if int(sel.sum()) < 10 * self.K:
            return False
        from sklearn.cluster import KMeans
        shares = (n[sel] / total[sel, None]).numpy()
        centres = KMeans(self.K, n_init=4, random_state=seed).fit(shares).cluster_centers_
        c = torch.tensor(centres, dtype=torch.float32).clamp_min(1e-3)
        self.habits.copy_(torch.log(c / c.sum(-1, keepdim=True)).to(self.habits.device))
        return True

    def hide_session(self, obs_n: Observations) -> Observations:
        """``obs_n`` with the session_* geometry features set to 0 (their normalised mean) at every step."""
        keep = torch.ones(obs_n.geometry.shape[-1], dtype=obs_n.geometry.dtype, device=obs_n.geometry.device)
        keep = keep.index_fill(0, self.session_idx, 0.0)
        return dataclasses.replace(obs_n, geometry=obs_n.geometry * keep)

    def contexts(self, ctx: torch.Tensor) -> torch.Tensor:
        """(K * B, C): the context under every code, code-major."""
        return (ctx.unsqueeze(0) + self.emb.weight.to(ctx.dtype).unsqueeze(1)).reshape(-1, ctx.shape[-1])


def split(full: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(context, log q (B, K) normalised) from a style policy's context tensor ``[context, logits]``."""
    return full[:, :-k], torch.log_softmax(full[:, -k:].float(), -1)


def _per_code(t: torch.Tensor, k: int) -> torch.Tensor:
    return t.reshape(k, -1, *t.shape[1:])


def code_terms(head: Head, style: StyleCode, ctx: torch.Tensor, dec: Decisions,
               objective: bool = False) -> dict[str, torch.Tensor]:
    """The head's terms under every code, each (K, B)."""
    k = style.K
    rep = Decisions(*(x.repeat(k) for x in (dec.act, dec.aircraft, dec.type, dec.value)))
    return {n: _per_code(v, k) for n, v in head.terms(style.contexts(ctx), rep, objective).items()}


def chain_terms(log_q: torch.Tensor, per_code: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Exact chain-rule terms (B,) of the code-marginal likelihood: log p(act), log p(aircraft | act), ..."""
    out, cum, prev = {}, log_q.T, torch.zeros(log_q.shape[0], device=log_q.device)
    for n in TERMS:
        cum = cum + per_code[n]
        total = torch.logsumexp(cum, 0)
        out[n] = total - prev
        prev = total
    return out


def loss(head: Head, style: StyleCode, full: torch.Tensor, dec: Decisions,
         act_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative code-marginal log-likelihood (the act term weighted inside each code's likelihood), and the
    chain-rule terms' means as logs."""
    ctx, log_q = split(full, style.K)
    t = code_terms(head, style, ctx, dec, objective=True)
    weighted = act_weight * t["act"] + t["aircraft"] + t["type"] + t["value"]
    loss_ = -torch.logsumexp(log_q.T + weighted, 0).mean()
    with torch.no_grad():
        chain = chain_terms(log_q, t)
    logs = {f"nll_{n}": -v.mean() for n, v in chain.items()}
    logs["nll"] = -sum(chain.values()).mean()
    return loss_, logs


def p_act(head: Head, style: StyleCode, full: torch.Tensor, code: torch.Tensor | None = None) -> torch.Tensor:
    """P(act) (B,): marginal over q(c | session), or under ``code`` (B,) where it is >= 0 (a code held fixed,
    e.g. a simulated controller's style for its session; -1 = marginal)."""
    ctx, log_q = split(full, style.K)
    pa = _per_code(head.p_act(style.contexts(ctx)), style.K)           # (K, B)
    marginal = (log_q.T.exp() * pa).sum(0)
    if code is None:
        return marginal
    code = code.to(pa.device)
    return torch.where(code >= 0, _select(pa, code.clamp_min(0)), marginal)


def action_code(head: Head, style: StyleCode, full: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log posterior over codes given that the controller acts (B, K), P(act) (B,))."""
    ctx, log_q = split(full, style.K)
    pa = _per_code(head.p_act(style.contexts(ctx)), style.K).T           # (B, K)
    joint = log_q + pa.clamp_min(1e-12).log()
    return torch.log_softmax(joint, -1), (log_q.exp() * pa).sum(-1)


def _select(per_code: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """per_code (K, B, ...) at ``code`` (B, ...) -> (B, ...)."""
    idx = code.unsqueeze(0)
    return per_code.gather(0, idx).squeeze(0)


def predict(head: Head, style: StyleCode, full: torch.Tensor, given_act: bool, code: torch.Tensor | None = None,
            **options) -> Decisions:
    """The most likely decision: act when P(act) >= 1/2 (unless ``given_act``), and the most likely action
    under the most probable code given acting, or under ``code`` (B,) where it is >= 0 (see :func:`p_act`)."""
    ctx, _ = split(full, style.K)
    log_r, pa = action_code(head, style, full)
    c = log_r.argmax(-1)
    if code is not None:
        code = code.to(c.device)
        c = torch.where(code >= 0, code, c)
        pa = p_act(head, style, full, code)
    d = head.predict(style.contexts(ctx), given_act=True, **options)
    pick = [_select(_per_code(x, style.K), c) for x in (d.aircraft, d.type, d.value)]
    act = torch.ones_like(c) if given_act else (pa >= 0.5).long()
    return finish(act, *pick)


def sample(head: Head, style: StyleCode, full: torch.Tensor, n: int, generator, given_act: bool,
           code: torch.Tensor | None = None, **options) -> Decisions:
    """n decisions per context (B, n): a code from q (from its posterior given acting, ``given_act``), or
    ``code`` (B,) where it is >= 0 (see :func:`p_act`), then the head's draw under it."""
    ctx, log_q = split(full, style.K)
    b, dev = ctx.shape[0], ctx.device
    log_r, _ = action_code(head, style, full)
    logits = (log_r if given_act else log_q)[:, None, :].expand(b, n, style.K)
    c = sample_index(logits, draw("rand", (b, n), generator, dev))                 # (B, n)
    if code is not None:
        code = code.to(dev)[:, None].expand(b, n)
        c = torch.where(code >= 0, code, c)
    d = head.sample(style.contexts(ctx), n, generator, given_act=given_act, **options)
    return Decisions(*(_select(_per_code(x, style.K), c) for x in (d.act, d.aircraft, d.type, d.value)))


def log_prob_terms(head: Head, style: StyleCode, full: torch.Tensor, dec: Decisions) -> dict[str, torch.Tensor]:
    ctx, log_q = split(full, style.K)
    return chain_terms(log_q, code_terms(head, style, ctx, dec))


def code_posterior_logits(head: Head, style: StyleCode, full: torch.Tensor, dec: Decisions) -> torch.Tensor:
    """log p(c | session, decision) (B, K): the code that best explains the demonstrated decision."""
    ctx, log_q = split(full, style.K)
    t = code_terms(head, style, ctx, dec)
    return torch.log_softmax(log_q + sum(t.values()).T, -1)
