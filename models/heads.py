"""Policy heads over the hybrid decision (act, aircraft, type, value), conditioned on a context (B, C).

Factorisation shared by every head (robomimic's idea: distributions from ``torch.distributions``):

    p(act) · [act = 1] p(aircraft) · p(type | aircraft) · [type != resume] p(value | aircraft, type)

- when act = 0 only log p(act = 0) counts (aircraft, type and value are -1, -1, NaN);
- ``resume`` has no value (always 0): it carries no likelihood term;
- the value's log-density is in the TYPE'S UNIT (deg, ft, kt): heads that model the scaled value
  ``value / VALUE_SCALE[type]`` subtract ``log VALUE_SCALE[type]``, so NLLs compare across heads.

Heads: ``deterministic`` (argmax / regression, the mode-collapse baseline; its value "density" is a fixed
unit-variance Gaussian in scaled units, not a fitted density model: ``exact_log_prob = False``), ``mdn``
(a K-component Gaussian mixture per type, exact) and ``autoregressive`` (value bins uniform over
``value_range[type]``, a piecewise-uniform density: exact within the range; values outside it are counted
in the edge bins).

Distributions and log-probs are computed in float32, also under autocast. Sampling takes an optional
``torch.Generator`` (on any device: draws are made on the generator's device, then moved).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Categorical, MixtureSameFamily, Normal

from atc_il.errors import ModelError
from atc_il.schemas import ACTION_TYPES
from models.config import HeadConfig
from models.encoders import mlp
from models.interface import HEADS, N_TYPES, VALUE_SCALE_T, Decisions

RESUME = ACTION_TYPES.index("resume")


def draw(kind: str, shape: tuple, generator: torch.Generator | None, device) -> torch.Tensor:
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


class Head(nn.Module):
    """Shared act / aircraft / type parts; subclasses model the value given (context, aircraft, type)."""

    exact_log_prob = True
    n_value_params = 1

    def __init__(self, ctx_dim: int, cfg: HeadConfig):
        super().__init__()
        d = cfg.hidden
        self.cfg = cfg
        self.trunk = nn.Sequential(mlp(ctx_dim, d, d, 2), nn.GELU())
        self.act_out = nn.Linear(d, 2)
        self.aircraft_out = nn.Linear(d, 2)
        self.aircraft_emb = nn.Embedding(2, d)
        self.type_net = mlp(d, d, N_TYPES, 2)
        self.type_emb = nn.Embedding(N_TYPES, d)
        self.value_net = mlp(d, d, self.n_value_params, 2)
        self.register_buffer("log_scale", VALUE_SCALE_T.float().log(), persistent=False)

    # -- building blocks -------------------------------------------------------------------------
    def type_logits(self, h: torch.Tensor, aircraft: torch.Tensor) -> torch.Tensor:
        return self.type_net(h + self.aircraft_emb(aircraft)).float()

    def value_params(self, h: torch.Tensor, aircraft: torch.Tensor, type_: torch.Tensor) -> torch.Tensor:
        return self.value_net(h + self.aircraft_emb(aircraft) + self.type_emb(type_)).float()

    def value_log_prob(self, params: torch.Tensor, type_: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """log-density of ``value`` in the type's unit."""
        raise NotImplementedError

    def value_sample(self, params: torch.Tensor, type_: torch.Tensor, generator) -> torch.Tensor:
        raise NotImplementedError

    def value_mode(self, params: torch.Tensor, type_: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- the head interface ----------------------------------------------------------------------
    def terms(self, ctx: torch.Tensor, dec: Decisions) -> dict[str, torch.Tensor]:
        """Per-sample log-probability terms (B,): act, aircraft, type, value (0 where they do not apply)."""
        h = self.trunk(ctx)
        acting = dec.act == 1
        aircraft = torch.where(acting, dec.aircraft, 0).clamp(0, 1)
        type_ = torch.where(acting, dec.type, 0).clamp(0, N_TYPES - 1)
        has_value = acting & (type_ != RESUME)
        # NaN values are only replaced where no value term applies: a NaN where one does stays loud
        value = torch.where(has_value, dec.value.float(), torch.zeros_like(dec.value, dtype=torch.float32))
        zero = torch.zeros((), device=ctx.device)
        lp_act = torch.log_softmax(self.act_out(h).float(), -1).gather(-1, acting.long()[:, None])[:, 0]
        lp_ac = torch.log_softmax(self.aircraft_out(h).float(), -1).gather(-1, aircraft[:, None])[:, 0]
        lp_ty = torch.log_softmax(self.type_logits(h, aircraft), -1).gather(-1, type_[:, None])[:, 0]
        lp_val = self.value_log_prob(self.value_params(h, aircraft, type_), type_, value)
        return {"act": lp_act, "aircraft": torch.where(acting, lp_ac, zero), "type": torch.where(acting, lp_ty, zero),
                "value": torch.where(has_value, lp_val, zero)}

    def log_prob(self, ctx: torch.Tensor, dec: Decisions) -> torch.Tensor:
        t = self.terms(ctx, dec)
        return t["act"] + t["aircraft"] + t["type"] + t["value"]

    def loss(self, ctx: torch.Tensor, dec: Decisions, act_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
        """Mean over the batch of the weighted NLL terms; logs hold the detached per-term means."""
        t = self.terms(ctx, dec)
        nll = {k: -v.mean() for k, v in t.items()}
        loss = act_weight * nll["act"] + nll["aircraft"] + nll["type"] + nll["value"]
        logs = {f"nll_{k}": v.detach() for k, v in nll.items()}
        logs["nll"] = sum(nll.values()).detach()
        return loss, logs

    def sample(self, ctx: torch.Tensor, n: int, generator: torch.Generator | None = None,
               given_act: bool = False) -> Decisions:
        """n decisions per context (B, n); ``given_act``: from the distribution given that the controller acts."""
        b, dev = ctx.shape[0], ctx.device
        h = self.trunk(ctx)
        act = sample_index(self.act_out(h)[:, None, :].expand(b, n, 2), draw("rand", (b, n), generator, dev))
        if given_act:
            act = torch.ones_like(act)
        aircraft = sample_index(self.aircraft_out(h)[:, None, :].expand(b, n, 2), draw("rand", (b, n), generator, dev))
        hn = h[:, None, :].expand(b, n, h.shape[-1])
        type_ = sample_index(self.type_logits(hn, aircraft), draw("rand", (b, n), generator, dev))
        value = self.value_sample(self.value_params(hn, aircraft, type_), type_, generator)
        return finish(act, aircraft, type_, value)

    def predict(self, ctx: torch.Tensor, given_act: bool = False) -> Decisions:
        """The most likely decision; ``given_act``: the most likely action if the controller acts."""
        h = self.trunk(ctx)
        act = self.act_out(h).argmax(-1)
        if given_act:
            act = torch.ones_like(act)
        aircraft = self.aircraft_out(h).argmax(-1)
        type_ = self.type_logits(h, aircraft).argmax(-1)
        return finish(act, aircraft, type_, self.value_mode(self.value_params(h, aircraft, type_), type_))


@HEADS.register("deterministic")
class DeterministicHead(Head):
    """Argmax / regression baseline: cross-entropy for act, aircraft and type; the scaled value regressed
    with a squared error (the loss is the NLL of a unit-variance Gaussian in scaled units, i.e. half the
    MSE plus a constant). ``sample`` repeats the prediction n times: it cannot represent several modes.
    ``log_prob``: categorical parts exact, the value under that fixed unit-variance Gaussian (in the
    type's unit) - a yardstick, not a fitted density."""

    exact_log_prob = False

    def value_log_prob(self, params, type_, value):
        scaled = value / self.log_scale[type_].exp()
        return Normal(params[..., 0], 1.0, validate_args=False).log_prob(scaled) - self.log_scale[type_]

    def value_mode(self, params, type_):
        return params[..., 0] * self.log_scale[type_].exp()

    def sample(self, ctx, n, generator=None, given_act=False):
        d = self.predict(ctx, given_act=given_act)
        return Decisions(*(x[:, None].expand(-1, n).clone() for x in (d.act, d.aircraft, d.type, d.value)))


@HEADS.register("mdn")
class MDNHead(Head):
    """Mixture density head: per (aircraft, type) a ``MixtureSameFamily(Categorical, Normal)`` with
    ``components`` Gaussians over the scaled value; exact log-likelihood."""

    def __init__(self, ctx_dim: int, cfg: HeadConfig):
        self.n_value_params = 3 * cfg.components
        super().__init__(ctx_dim, cfg)
        # spread the initial component means over [-1.5, 1.5] scaled units (symmetry breaking: components
        # that all start at 0 separate slowly, and a bimodal target is then first fitted by one wide bump)
        k = cfg.components
        with torch.no_grad():
            self.value_net[-1].bias[k:2 * k].copy_(torch.linspace(-1.5, 1.5, k) if k > 1 else torch.zeros(1))

    def mixture(self, params: torch.Tensor) -> MixtureSameFamily:
        logits, mu, raw = params.float().chunk(3, dim=-1)
        scale = torch.nn.functional.softplus(raw) + 1e-3
        return MixtureSameFamily(Categorical(logits=logits, validate_args=False),
                                 Normal(mu, scale, validate_args=False), validate_args=False)

    def value_log_prob(self, params, type_, value):
        return self.mixture(params).log_prob(value / self.log_scale[type_].exp()) - self.log_scale[type_]

    def value_sample(self, params, type_, generator):
        logits, mu, raw = params.float().chunk(3, dim=-1)
        k = sample_index(logits, draw("rand", logits.shape[:-1], generator, params.device))
        mu_k = mu.gather(-1, k[..., None])[..., 0]
        sd_k = (torch.nn.functional.softplus(raw) + 1e-3).gather(-1, k[..., None])[..., 0]
        eps = draw("randn", mu_k.shape, generator, params.device)
        return (mu_k + sd_k * eps) * self.log_scale[type_].exp()

    def value_mode(self, params, type_):
        logits, mu, _ = params.float().chunk(3, dim=-1)
        return mu.gather(-1, logits.argmax(-1, keepdim=True))[..., 0] * self.log_scale[type_].exp()


@HEADS.register("autoregressive")
class AutoregressiveHead(Head):
    """act -> aircraft -> type -> value bin, each conditioned on the previous choice's embedding; value
    bins uniform over ``value_range[type]`` (``value_bins`` per type), so log p(value) = log p(bin) -
    log(bin width in the type's unit); sampling is uniform within the sampled bin."""

    def __init__(self, ctx_dim: int, cfg: HeadConfig):
        self.n_value_params = cfg.value_bins
        super().__init__(ctx_dim, cfg)
        missing = [t for t in ACTION_TYPES if t not in cfg.value_range]
        if missing:
            raise ModelError(f"head.value_range lacks types {missing}; give (low, high) for each of {ACTION_TYPES}")
        lo = torch.tensor([float(cfg.value_range[t][0]) for t in ACTION_TYPES])
        hi = torch.tensor([float(cfg.value_range[t][1]) for t in ACTION_TYPES])
        if not (hi > lo).all():
            raise ModelError(f"head.value_range: every high must exceed its low, got {cfg.value_range}")
        self.register_buffer("lo", lo, persistent=False)
        self.register_buffer("width", (hi - lo) / cfg.value_bins, persistent=False)

    def bin_of(self, type_: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return ((value - self.lo[type_]) / self.width[type_]).floor().clamp(0, self.cfg.value_bins - 1).long()

    def value_log_prob(self, params, type_, value):
        lp = torch.log_softmax(params, -1).gather(-1, self.bin_of(type_, value)[..., None])[..., 0]
        return lp - self.width[type_].log()

    def value_sample(self, params, type_, generator):
        k = sample_index(params, draw("rand", params.shape[:-1], generator, params.device))
        u = draw("rand", k.shape, generator, params.device)
        return self.lo[type_] + (k.float() + u) * self.width[type_]

    def value_mode(self, params, type_):
        return self.lo[type_] + (params.argmax(-1).float() + 0.5) * self.width[type_]


from models import generative  # noqa: E402,F401  (registers cvae and diffusion)
