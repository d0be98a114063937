"""``cvae``: a conditional VAE over the scaled value ``v = value / VALUE_SCALE[type]``.

    p(v | ctx, aircraft, type) = ∫ p(v | ctx, aircraft, type, c) p(c | ctx) dc

- prior ``p(c | ctx)``: LEARNED (from the head's trunk features of the context, not a fixed N(0, I)), so a
  code can stand for a context-dependent style; it does not see aircraft or type;
- recognition ``q(c | ctx, aircraft, type, v)``;
- decoder ``p(v | ctx, aircraft, type, c)``: a Gaussian with learned mean and standard deviation (scaled units).

Latent (``head.latent``): ``continuous``: a diagonal Gaussian of ``latent_dim`` dimensions (prior and
posterior); ``discrete``: a categorical code over ``codes`` categories (InfoGAIL-style interpretable codes),
fed to the decoder as a one-hot vector.

Training: the value term of the loss is -ELBO = -(E_q log p(v | c) - KL(q || p)) + log VALUE_SCALE[type]:
one reparameterised draw for the continuous latent; for the discrete code one Gumbel-softmax (Concrete)
draw, relaxed (soft, temperature ``tau``: the decoder sees near-one-hot mixtures in training, one-hot codes
when sampling and in the likelihood), and the exact categorical KL. Initialisation breaks the symmetry
between codes (as the mdn head spreads its means): linear paths code -> decoder mean and value ->
posterior statistics start as a near-identity v -> c -> v. Without them, and with hard straight-through
codes, the latent collapsed onto the prior on the bimodal toy target (one wide Gaussian, both modes missed).

Likelihood (``terms`` / ``log_prob``): discrete: EXACT by enumerating the codes (``exact_log_prob = True``);
continuous: an importance-sampled ESTIMATE (``exact_log_prob = False``) with q as proposal,
``is_samples`` draws from a fixed generator (the same draws for every row, so the estimate is a
deterministic function of its inputs); in expectation it is a lower bound of log p (Jensen), tight as K grows;
with a poor proposal (an untrained q) one fixed set of draws missed brute-force Monte Carlo by up to 0.3 nats.

Sampling: c from the learned prior, then v from the decoder. ``predict``: the most probable of a few
candidate values (discrete: each code's decoder mean, scored by the exact mixture density; continuous: the
decoder means at ``mode_samples`` prior draws from a fixed generator, scored by the Monte Carlo mixture of
those draws' decoder Gaussians), i.e. a mode of the value density, not its mean (which, for a bimodal
value, lies between the modes).

Likelihood, sampling, ``predict`` and the code distributions run in float32 with autocast off (the head's
embeddings may come from autocast); the training objective may run under autocast.

``code_prior(ctx)`` and ``code_posterior(ctx, aircraft, type, value)`` return the code's distributions,
e.g. to measure whether discrete codes align with controller styles (normalised mutual information).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.distributions import Categorical, Independent, Normal, kl_divergence

from models.heads.base import HEADS, RESUME, HeadConfigBase, draw, sample_index
from models.heads.generative import GenerativeHead, fixed_generator, float32, normal_log_pdf
from models.interface import N_TYPES
from models.layers import mlp


class CVAEConfig(HeadConfigBase):
    name: Literal["cvae"] = "cvae"
    latent_dim: int = Field(4, ge=1, description="continuous latent dimensions (latent = continuous)")
    latent: Literal["continuous", "discrete"] = Field(
        "continuous", description="diagonal Gaussian, or a categorical code over `codes` categories")
    codes: int = Field(3, ge=2, description="categories of the discrete code (latent = discrete)")


@HEADS.register("cvae")
class CVAEHead(GenerativeHead):
    is_samples = 128      # importance samples for the continuous latent's log-likelihood estimate
    mode_samples = 32     # prior draws whose decoder means are the candidate modes (continuous latent)
    tau = 0.5             # Gumbel-softmax temperature (discrete code, training)
    hard = False          # straight-through one-hot codes in training instead (collapsed on the toy target)
    value_gain = 1.0      # initial weight of the value -> posterior path (in units of the code -> mean path)
    min_sd = 1e-3         # floor of the decoder's and the latent Gaussians' standard deviations

    def __init__(self, ctx_dim: int, cfg: CVAEConfig):
        self.n_value_params = cfg.hidden           # value_net's output: the (ctx, aircraft, type) embedding
        super().__init__(ctx_dim, cfg)
        d = cfg.hidden
        self.discrete = cfg.latent == "discrete"
        self.exact_log_prob = self.discrete
        self.code_dim = cfg.codes if self.discrete else cfg.latent_dim
        n_stats = self.code_dim if self.discrete else 2 * self.code_dim
        self.prior_net = mlp(d, d, n_stats, 2)
        self.posterior_net = mlp(d + 1, d, n_stats, 2)
        self.decoder = mlp(d + self.code_dim, d, 2, 3)
        # a linear path from the code to the decoder's mean, initialised so that codes START apart (symmetry
        # breaking, as the mdn head's spread means): a decoder that ignores the code gives the recognition
        # model no gradient and the latent collapses onto the prior (measured on the bimodal toy target)
        self.code_mean = nn.Linear(self.code_dim, 1, bias=False)
        with torch.no_grad():
            w = torch.linspace(-1.5, 1.5, self.code_dim) if self.discrete else torch.eye(self.code_dim)[0]
            self.code_mean.weight.copy_(w[None])
        # and a linear path from the value to the posterior's statistics (code logits, or latent means), the
        # mirror image: at initialisation v -> code -> v is an (approximate) identity through the two paths
        self.value_code = nn.Linear(1, n_stats, bias=False)
        with torch.no_grad():
            self.value_code.weight.zero_()
            self.value_code.weight[:self.code_dim, 0] = self.value_gain * w / (w ** 2).sum().sqrt()

    # -- parts -----------------------------------------------------------------------------------
    def value_params(self, h, aircraft, type_):
        """[trunk features h (the prior's input) | (ctx, aircraft, type) embedding e], float32 (..., 2 hidden)."""
        return torch.cat([h.float(), super().value_params(h, aircraft, type_)], dim=-1)

    @staticmethod
    def _repeat(params: torch.Tensor, k: int) -> torch.Tensor:
        """(..., P) -> (..., k, P) (a view)."""
        return params[..., None, :].expand(*params.shape[:-1], k, params.shape[-1])

    @staticmethod
    def _gaussian(loc: torch.Tensor, sd: torch.Tensor) -> Independent:
        return Independent(Normal(loc, sd, validate_args=False), 1, validate_args=False)

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.cfg.hidden
        return params[..., :d], params[..., d:]

    def _latent(self, stats: torch.Tensor):
        stats = stats.float()
        if self.discrete:
            return Categorical(logits=stats, validate_args=False)
        mu, raw = stats.chunk(2, dim=-1)
        return self._gaussian(mu, F.softplus(raw) + self.min_sd)

    def prior(self, params: torch.Tensor):
        return self._latent(self.prior_net(self._split(params)[0]))

    def posterior(self, params: torch.Tensor, v: torch.Tensor):
        e = self._split(params)[1]
        stats = self.posterior_net(torch.cat([e, v.float()[..., None].to(e.dtype)], dim=-1)).float()
        return self._latent(stats + self.value_code(v.float()[..., None]))

    def decode(self, params: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder mean and standard deviation (scaled units) given a code vector (..., code_dim)."""
        e = self._split(params)[1]
        out = self.decoder(torch.cat([e, code.to(e.dtype)], dim=-1)).float()
        return out[..., 0] + self.code_mean(code.float())[..., 0], F.softplus(out[..., 1]) + self.min_sd

    def _per_code(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Discrete code: the decoder's mean and sd for every code (..., codes)."""
        k = self.code_dim
        return self.decode(self._repeat(params, k), torch.eye(k, device=params.device).expand(*params.shape[:-1], k, k))

    def _codes_log_joint(self, params: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Discrete code: log p(c | ctx) + log p(v | c) for every code (..., codes), v scaled."""
        mu, sd = self._per_code(params)
        return torch.log_softmax(self.prior(params).logits, -1) + normal_log_pdf(v[..., None], mu, sd)

    # -- objective and likelihood (scaled value, minus log VALUE_SCALE: density in the type's unit) ---
    def value_objective(self, params, type_, value):
        v = value.float() / self.scale(type_)
        q, p = self.posterior(params, v), self.prior(params)
        if self.discrete:
            code = F.gumbel_softmax(q.logits, tau=self.tau, hard=self.hard)
        else:
            code = q.rsample()
        mu, sd = self.decode(params, code)
        return normal_log_pdf(v, mu, sd) - kl_divergence(q, p) - self.log_scale[type_]

    @float32
    def value_log_density(self, params, type_, value):
        v = value.float() / self.scale(type_)
        if self.discrete:
            return torch.logsumexp(self._codes_log_joint(params, v), -1) - self.log_scale[type_]
        k = self.is_samples
        q, p = self.posterior(params, v), self.prior(params)
        q_k = self._gaussian(q.base_dist.loc[..., None, :], q.base_dist.scale[..., None, :])         # (..., 1, L)
        p_k = self._gaussian(p.base_dist.loc[..., None, :], p.base_dist.scale[..., None, :])
        code = q_k.base_dist.loc + q_k.base_dist.scale * draw("randn", (k, self.code_dim), fixed_generator(),
                                                              params.device)                   # (..., K, L)
        mu, sd = self.decode(self._repeat(params, k), code)
        log_w = normal_log_pdf(v[..., None], mu, sd) + p_k.log_prob(code) - q_k.log_prob(code)
        return torch.logsumexp(log_w, -1) - math.log(k) - self.log_scale[type_]

    # -- sampling ----------------------------------------------------------------------------------
    def _prior_codes(self, params: torch.Tensor, n_shape: tuple, generator) -> torch.Tensor:
        """Codes drawn from the prior: ``n_shape = ()``: one per row (..., code_dim); ``n_shape = (N,)``: N
        draws common to every row (..., N, code_dim)."""
        p, dev = self.prior(params), params.device
        if self.discrete:
            logits = self._repeat(p.logits, n_shape[0]) if n_shape else p.logits
            u = draw("rand", n_shape if n_shape else logits.shape[:-1], generator, dev)
            return F.one_hot(sample_index(logits, u), self.code_dim).float()
        loc, sd = p.base_dist.loc, p.base_dist.scale
        if n_shape:
            loc, sd = loc[..., None, :], sd[..., None, :]
        eps = draw("randn", (*n_shape, self.code_dim) if n_shape else loc.shape, generator, dev)
        return loc + sd * eps

    @float32
    def value_sample(self, params, type_, generator):
        mu, sd = self.decode(params, self._prior_codes(params, (), generator))
        return (mu + sd * draw("randn", mu.shape, generator, params.device)) * self.scale(type_)

    @float32
    def value_mode(self, params, type_):
        if self.discrete:
            mu, sd = self._per_code(params)
            log_w = torch.log_softmax(self.prior(params).logits, -1)
        else:
            k = self.mode_samples
            code = self._prior_codes(params, (k,), fixed_generator())
            mu, sd = self.decode(self._repeat(params, k), code)
            log_w = torch.full_like(mu, -math.log(k))
        # mixture density at each candidate mean: sum_j w_j N(mu_i; mu_j, sd_j)
        dens = torch.logsumexp(log_w[..., None, :] + normal_log_pdf(mu[..., :, None], mu[..., None, :],
                                                                     sd[..., None, :]), -1)
        best = mu.gather(-1, dens.argmax(-1, keepdim=True))[..., 0]
        return best * self.scale(type_)

    # -- codes, for evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    @float32
    def code_prior(self, ctx: torch.Tensor):
        """The learned prior p(c | ctx): a Categorical over ``codes`` (discrete) or an Independent Normal."""
        return self._latent(self.prior_net(self.body(ctx)))

    @torch.no_grad()
    @float32
    def code_posterior(self, ctx: torch.Tensor, aircraft: torch.Tensor, type_: torch.Tensor, value: torch.Tensor):
        """p(c | ctx, aircraft, type, value), value in the type's unit, (B,) each.

        Discrete: the EXACT posterior by enumeration, p(c | ctx) p(v | ctx, aircraft, type, c) / p(v | ...);
        continuous: the recognition model q (an approximation). Rows without a value (aircraft or type -1,
        ``resume``, or a NaN value) get the prior: there is no evidence about the code."""
        h = self.body(ctx)
        has_value = (aircraft >= 0) & (type_ >= 0) & (type_ != RESUME) & torch.isfinite(value)
        ac, ty = aircraft.clamp(0, 1), type_.clamp(0, N_TYPES - 1)
        params = self.value_params(h, ac, ty)
        v = torch.where(has_value, value.float(), torch.zeros_like(value, dtype=torch.float32)) / self.scale(ty)
        prior = self.prior(params)
        if self.discrete:
            logits = torch.where(has_value[:, None], self._codes_log_joint(params, v), prior.logits)
            return Categorical(logits=logits, validate_args=False)
        q = self.posterior(params, v)
        loc = torch.where(has_value[:, None], q.base_dist.loc, prior.base_dist.loc)
        sd = torch.where(has_value[:, None], q.base_dist.scale, prior.base_dist.scale)
        return self._gaussian(loc, sd)
