"""The base of every policy head: the hybrid decision (act, aircraft, type, value), conditioned on a
context (B, C), and the config fields every head shares.

Factorisation shared by every head (robomimic's idea: distributions from ``torch.distributions``):

    p(act) · [act = 1] p(aircraft) · p(type | aircraft) · [type != resume] p(value | aircraft, type)

- when act = 0 only log p(act = 0) counts (aircraft, type and value are -1, -1, NaN);
- ``resume`` has no value (always 0): it carries no likelihood term;
- the value's log-density is in the TYPE'S UNIT (deg, ft, kt): heads that model the scaled value
  ``value / VALUE_SCALE[type]`` subtract ``log VALUE_SCALE[type]``, so NLLs compare across heads.

Each head lives in its own module of this package with its pydantic config beside it (``name`` is the
discriminator of :data:`models.heads.HeadConfig`) and registers itself in :data:`HEADS` there; a head module
imports only this module, :mod:`models.heads.generative` (the generative heads' shared part),
:mod:`models.interface` and :mod:`models.layers`.

Distributions and log-probs are computed in float32, also under autocast. Sampling takes an optional
``torch.Generator`` (on any device: draws are made on the generator's device, then moved).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from atc_il.config import Section
from atc_il.schemas import ACTION_TYPES
from models.interface import N_TYPES, VALUE_SCALE_T, Decisions, Registry
from models.layers import mlp

HEADS = Registry("head")

RESUME = ACTION_TYPES.index("resume")


def draw(kind: str, shape: tuple, generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """Uniform (``rand``) or standard normal (``randn``) draws from ``generator``, moved to ``device``."""
    fn = torch.rand if kind == "rand" else torch.randn
    gdev = generator.device if generator is not None else device
    return fn(shape, generator=generator, device=gdev).to(device)


def sample_index(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sample of a categorical (logits (..., C)) with uniforms ``u`` (...,)."""
    cdf = torch.softmax(logits.float(), -1).cumsum(-1)
    return (u.unsqueeze(-1) > cdf).sum(-1).clamp(max=logits.shape[-1] - 1)


def finish(act: torch.Tensor, aircraft: torch.Tensor, type_: torch.Tensor, value: torch.Tensor) -> Decisions:
    """Apply the decision coding: -1/-1/NaN where act = 0, value 0 for resume."""
    acting = act == 1
    value = torch.where(type_ == RESUME, torch.zeros_like(value), value)
    return Decisions(act.long(), torch.where(acting, aircraft, -1).long(), torch.where(acting, type_, -1).long(),
                     torch.where(acting, value, torch.full_like(value, float("nan"))))


def default_value_range() -> dict[str, tuple[float, float]]:
    """Value range per type, in the type's unit."""
    return {"heading": (-60.0, 60.0), "altitude": (-4000.0, 4000.0), "speed": (-40.0, 40.0),
            "direct_to": (-90.0, 90.0), "resume": (-1.0, 1.0)}


class HeadConfigBase(Section):
    """The fields every head's config has; each head's config adds its own and narrows ``name``."""
    name: str
    hidden: int = Field(128, ge=8)
    act_inputs: Literal["context", "geometry"] = Field(
        "context", description="what P(act) reads: the whole context (the trunk shared with the aircraft, type and "
        "value), or a hazard summary of the decision-time geometry alone (timing, clearance history, session counts "
        "unless the style code hides them; "
        "the policy's HazardEncoder, the last ``hidden`` features of the context) and the style code: the act term "
        "over-fits the many other inputs while the rest still learns (bench/RESULTS.md, the act term)")


class Head(nn.Module):
    """Shared act / aircraft / type parts; subclasses model the value given (context, aircraft, type)."""

    exact_log_prob = True
    n_value_params = 1

    def __init__(self, ctx_dim: int, cfg: HeadConfigBase):
        super().__init__()
        d = cfg.hidden
        self.cfg = cfg
        # with act_inputs = geometry the context's last d features are the hazard summary, read by P(act) alone
        self.hazard_dims = d if cfg.act_inputs == "geometry" else 0
        self.trunk = nn.Sequential(mlp(ctx_dim - self.hazard_dims, d, d, 2), nn.GELU())
        self.act_out = mlp(d, d, 2, 2) if self.hazard_dims else nn.Linear(d, 2)
        self.aircraft_out = nn.Linear(d, 2)
        self.aircraft_emb = nn.Embedding(2, d)
        self.type_net = mlp(d, d, N_TYPES, 2)
        self.type_emb = nn.Embedding(N_TYPES, d)
        self.value_net = mlp(d, d, self.n_value_params, 2)
        self.register_buffer("log_scale", VALUE_SCALE_T.float().log(), persistent=False)

    # -- building blocks -------------------------------------------------------------------------
    def body(self, ctx: torch.Tensor) -> torch.Tensor:
        """The trunk's features (B, d), from the context without the hazard summary."""
        return self.trunk(ctx[:, :ctx.shape[-1] - self.hazard_dims])

    def act_logits(self, ctx: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 2) logits of acting: from the hazard summary, else from the trunk's features ``h`` (computed
        when not given)."""
        if self.hazard_dims:
            return self.act_out(ctx[:, -self.hazard_dims:])
        return self.act_out(self.body(ctx) if h is None else h)

    def type_logits(self, h: torch.Tensor, aircraft: torch.Tensor) -> torch.Tensor:
        return self.type_net(h + self.aircraft_emb(aircraft)).float()

    def value_params(self, h: torch.Tensor, aircraft: torch.Tensor, type_: torch.Tensor) -> torch.Tensor:
        return self.value_net(h + self.aircraft_emb(aircraft) + self.type_emb(type_)).float()

    def value_log_prob(self, params: torch.Tensor, type_: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """log-density of ``value`` in the type's unit."""
        raise NotImplementedError

    def value_sample(self, params: torch.Tensor, type_: torch.Tensor,
                     generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def value_mode(self, params: torch.Tensor, type_: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def value_term(self, params: torch.Tensor, type_: torch.Tensor, value: torch.Tensor,
                   objective: bool) -> torch.Tensor:
        """The value's per-sample term: its log-density, or (``objective``, in the training loss) the head's
        training objective for it; the same for heads trained by maximum likelihood."""
        return self.value_log_prob(params, type_, value)

    # -- the head interface ----------------------------------------------------------------------
    def p_act(self, ctx: torch.Tensor) -> torch.Tensor:
        """P(act now) (B,), float32: the one place the probability of acting is computed."""
        return torch.softmax(self.act_logits(ctx).float(), -1)[:, 1]

    def terms(self, ctx: torch.Tensor, dec: Decisions, objective: bool = False) -> dict[str, torch.Tensor]:
        """Per-sample log-probability terms (B,): act, aircraft, type, value (0 where they do not apply);
        ``objective``: the value term is the head's training objective (:meth:`value_term`)."""
        h = self.body(ctx)
        acting = dec.act == 1
        aircraft = torch.where(acting, dec.aircraft, 0).clamp(0, 1)
        type_ = torch.where(acting, dec.type, 0).clamp(0, N_TYPES - 1)
        has_value = acting & (type_ != RESUME)
        # NaN values are only replaced where no value term applies: a NaN where one does stays loud
        value = torch.where(has_value, dec.value.float(), torch.zeros_like(dec.value, dtype=torch.float32))
        zero = torch.zeros((), device=ctx.device)
        lp_act = torch.log_softmax(self.act_logits(ctx, h).float(), -1).gather(-1, acting.long()[:, None])[:, 0]
        lp_ac = torch.log_softmax(self.aircraft_out(h).float(), -1).gather(-1, aircraft[:, None])[:, 0]
        lp_ty = torch.log_softmax(self.type_logits(h, aircraft), -1).gather(-1, type_[:, None])[:, 0]
        lp_val = self.value_term(self.value_params(h, aircraft, type_), type_, value, objective)
        return {"act": lp_act, "aircraft": torch.where(acting, lp_ac, zero), "type": torch.where(acting, lp_ty, zero),
                "value": torch.where(has_value, lp_val, zero)}

    def log_prob(self, ctx: torch.Tensor, dec: Decisions) -> torch.Tensor:
        t = self.terms(ctx, dec)
        return t["act"] + t["aircraft"] + t["type"] + t["value"]

    def loss(self, ctx: torch.Tensor, dec: Decisions,
             act_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over the batch of the weighted NLL terms (the value's as its training objective); logs hold
        the detached per-term means."""
        t = self.terms(ctx, dec, objective=True)
        nll = {k: -v.mean() for k, v in t.items()}
        loss = act_weight * nll["act"] + nll["aircraft"] + nll["type"] + nll["value"]
        logs = {f"nll_{k}": v.detach() for k, v in nll.items()}
        logs["nll"] = (nll["act"] + nll["aircraft"] + nll["type"] + nll["value"]).detach()   # = sum(nll.values())
        return loss, logs

    def sample(self, ctx: torch.Tensor, n: int, generator: torch.Generator | None = None,
               given_act: bool = False) -> Decisions:
        """n decisions per context (B, n); ``given_act``: from the distribution given that the controller acts."""
        b, dev = ctx.shape[0], ctx.device
        h = self.body(ctx)
        act = sample_index(self.act_logits(ctx, h)[:, None, :].expand(b, n, 2), draw("rand", (b, n), generator, dev))
        if given_act:
            act = torch.ones_like(act)
        aircraft = sample_index(self.aircraft_out(h)[:, None, :].expand(b, n, 2), draw("rand", (b, n), generator, dev))
        hn = h[:, None, :].expand(b, n, h.shape[-1])
        type_ = sample_index(self.type_logits(hn, aircraft), draw("rand", (b, n), generator, dev))
        value = self.value_sample(self.value_params(hn, aircraft, type_), type_, generator)
        return finish(act, aircraft, type_, value)

    def predict(self, ctx: torch.Tensor, given_act: bool = False) -> Decisions:
        """The most likely decision; ``given_act``: the most likely action if the controller acts."""
        h = self.body(ctx)
        act = self.act_logits(ctx, h).argmax(-1)
        if given_act:
            act = torch.ones_like(act)
        aircraft = self.aircraft_out(h).argmax(-1)
        type_ = self.type_logits(h, aircraft).argmax(-1)
        return finish(act, aircraft, type_, self.value_mode(self.value_params(h, aircraft, type_), type_))
