"""The generative value heads' shared part: ``cvae`` (models/heads/cvae.py) and ``diffusion``
(models/heads/diffusion.py).

Both subclass the shared :class:`models.heads.base.Head`, so act, aircraft and type stay categorical (exact) and
only the value given (context, aircraft, type) is modelled generatively. Their training objective for the
value is not its log-likelihood: ``loss`` asks ``terms(..., objective=True)`` for the value term, which is
then :meth:`GenerativeHead.value_objective` (the ELBO for the cvae, minus the denoising error for the
diffusion head), while ``terms`` / ``log_prob`` by default give the head's likelihood (exact, or an estimate where ``exact_log_prob`` is False).
So ``nll_value`` in the training logs is -ELBO (cvae: in nats, in the type's unit; an upper bound on the NLL,
except that the discrete code's Gumbel-softmax relaxation makes it an approximate one) or the epsilon mean
squared error (diffusion, not a likelihood).
"""

from __future__ import annotations

import functools
import math

import torch

from models.heads.base import Head

LOG_2PI = math.log(2 * math.pi)


class GenerativeHead(Head):
    """A head whose value term in ``loss`` is a training objective (``value_objective``, a per-sample
    log-likelihood surrogate, higher is better) and in ``terms`` / ``log_prob`` a log-density
    (``value_log_density``, exact or estimated, in the type's unit)."""

    exact_log_prob = False

    def value_objective(self, params: torch.Tensor, type_: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def value_log_density(self, params: torch.Tensor, type_: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def value_log_prob(self, params, type_, value):
        return self.value_log_density(params, type_, value)

    def value_term(self, params, type_, value, objective: bool):
        fn = self.value_objective if objective else self.value_log_density
        return fn(params, type_, value)

    def scale(self, type_: torch.Tensor) -> torch.Tensor:
        """VALUE_SCALE of each type (float32)."""
        return self.log_scale[type_].exp()


def float32(fn):
    """Run a head method ``fn(self, params, ...)`` with autocast off on ``params``' device (float32 math)."""
    @functools.wraps(fn)
    def wrapper(self, params, *args, **kwargs):
        with torch.autocast(params.device.type, enabled=False):
            return fn(self, params.float(), *args, **kwargs)
    return wrapper


def fixed_generator(seed: int = 0) -> torch.Generator:
    """A CPU generator for estimates that must be deterministic functions of their inputs (common random
    numbers: the same draws for every row, so a row's estimate does not depend on its batch)."""
    return torch.Generator().manual_seed(seed)


def normal_log_pdf(x: torch.Tensor, mu: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((x - mu) / sd) ** 2 - sd.log() - 0.5 * LOG_2PI


def kde_bandwidth(samples: torch.Tensor, floor: float, shrink: tuple = (1.0, 0.5, 0.25, 0.125, 0.0625)) -> torch.Tensor:
    """Per row of ``samples`` (..., N): Silverman's rule 0.9 min(sd, IQR / 1.34) N^(-1/5) times the factor
    in ``shrink`` with the highest leave-one-out log-likelihood (Silverman's rule alone over-smooths a
    multimodal sample), at least ``floor``."""
    n = samples.shape[-1]
    sd = samples.std(-1)
    q = torch.quantile(samples, torch.tensor([0.25, 0.75], device=samples.device), dim=-1)
    iqr = (q[1] - q[0]) / 1.34
    spread = torch.where(iqr > 0, torch.minimum(sd, iqr), sd)
    cand = (0.9 * spread[..., None] * n ** -0.2 * torch.tensor(shrink, device=samples.device)).clamp(min=floor)
    lp = normal_log_pdf(samples[..., None, :, None], samples[..., None, None, :], cand[..., :, None, None])
    eye = torch.eye(n, dtype=torch.bool, device=samples.device)
    loo = torch.logsumexp(lp.masked_fill(eye, float("-inf")), -1).sum(-1)                       # (..., len(shrink))
    return cand.gather(-1, loo.argmax(-1, keepdim=True))[..., 0]


def kde_log_prob(samples: torch.Tensor, x: torch.Tensor, floor: float) -> torch.Tensor:
    """log of a Gaussian kernel density of the rows of ``samples`` (..., N) at ``x`` (...,) or (..., M)."""
    bw = kde_bandwidth(samples, floor)
    squeeze = x.dim() == samples.dim() - 1
    xs = x[..., None] if squeeze else x                                       # (..., M)
    lp = normal_log_pdf(xs[..., :, None], samples[..., None, :], bw[..., None, None])
    out = torch.logsumexp(lp, -1) - math.log(samples.shape[-1])
    return out[..., 0] if squeeze else out

