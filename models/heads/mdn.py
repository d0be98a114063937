"""``mdn``: a K-component Gaussian mixture per (aircraft, type) over the scaled value; exact likelihood."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch.distributions import Categorical, MixtureSameFamily, Normal

from models.heads.base import HEADS, Head, HeadConfigBase, draw, sample_index


class MDNConfig(HeadConfigBase):
    name: Literal["mdn"] = "mdn"
    components: int = Field(4, ge=1, description="K: mixture components per type")


@HEADS.register("mdn")
class MDNHead(Head):
    """Mixture density head: per (aircraft, type) a ``MixtureSameFamily(Categorical, Normal)`` with
    ``components`` Gaussians over the scaled value; exact log-likelihood."""

    def __init__(self, ctx_dim: int, cfg: MDNConfig):
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
