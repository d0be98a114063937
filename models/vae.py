"""History VAE: a latent z summarising the observed history (the non-Markovian part of the model).

q(z | summary) is a diagonal Gaussian (``torch.distributions.Normal``); z is a reparameterised sample
while training and the posterior mean otherwise. A decoder reconstructs the observed, normalised history
of the pair and the geometry (every feature except ``valid``) from z alone, with a mean squared error over
valid entries only, so z must carry what the history says. The policy heads are conditioned on
``concat(summary, z)``.

loss = recon_weight * recon + kl_weight * KL(q(z | summary) || N(0, I))   (KL summed over z, mean over batch)

``predict_future_steps``: the observation histories hold only the past (the data set's no-leakage
contract), so there are no future steps to reconstruct; a value above 0 is refused with a ModelError
rather than silently ignored.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from atc_il.errors import ModelError
from models.config import VAEConfig
from models.encoders import mlp
from models.interface import Observations
from models.normalizer import tensor_shapes


class HistoryVAE(nn.Module):
    def __init__(self, spec: dict, cfg: VAEConfig, enc_dim: int):
        super().__init__()
        if cfg.predict_future_steps > 0:
            raise ModelError("vae.predict_future_steps > 0, but observation histories carry no future steps "
                             "(features use only the past); set vae.predict_future_steps to 0")
        shapes = tensor_shapes(spec)
        self.H, _, f_pose = shapes["pair"]
        f_geom = shapes["geometry"][-1]
        self.f_pose, self.f_geom = f_pose - 1, f_geom - 1        # reconstructed features (without `valid`)
        self.cfg = cfg
        self.latent_dim = cfg.latent_dim
        hidden = max(enc_dim, 2 * cfg.latent_dim)
        self.posterior_net = mlp(enc_dim, hidden, 2 * cfg.latent_dim, 2)
        self.decoder = mlp(cfg.latent_dim, hidden, self.H * (2 * self.f_pose + self.f_geom), 3)

    def posterior(self, summary: torch.Tensor) -> Normal:
        """q(z | summary), in float32 (also under autocast)."""
        mu, log_std = self.posterior_net(summary).float().chunk(2, dim=-1)
        return Normal(mu, torch.nn.functional.softplus(log_std) + 1e-4, validate_args=False)

    def forward(self, summary: torch.Tensor) -> tuple[torch.Tensor, Normal]:
        """(z, q): a reparameterised sample in training mode, the posterior mean otherwise."""
        q = self.posterior(summary)
        z = q.rsample() if self.training else q.mean
        return z, q

    def posterior_mean(self, summary: torch.Tensor) -> torch.Tensor:
        return self.posterior(summary).mean

    def reconstruction_loss(self, z: torch.Tensor, obs_norm: Observations) -> torch.Tensor:
        """Masked MSE between the decoded and the observed normalised pair + geometry histories."""
        b = z.shape[0]
        out = self.decoder(z).float().reshape(b, self.H, 2 * self.f_pose + self.f_geom)
        pair_hat = out[..., :2 * self.f_pose].reshape(b, self.H, 2, self.f_pose)
        geom_hat = out[..., 2 * self.f_pose:]
        pair, geom = obs_norm.pair.float(), obs_norm.geometry.float()
        m_pair = pair[..., -1:].expand_as(pair_hat)
        m_geom = geom[..., -1:].expand_as(geom_hat)
        se = ((pair_hat - pair[..., :-1]) ** 2 * m_pair).sum() + ((geom_hat - geom[..., :-1]) ** 2 * m_geom).sum()
        return se / (m_pair.sum() + m_geom.sum()).clamp(min=1.0)

    def loss(self, z: torch.Tensor, q: Normal, obs_norm: Observations) -> tuple[torch.Tensor, dict]:
        recon = self.reconstruction_loss(z, obs_norm)
        prior = Normal(torch.zeros_like(q.loc), torch.ones_like(q.scale), validate_args=False)
        kl = kl_divergence(q, prior).sum(-1).mean()
        total = self.cfg.recon_weight * recon + self.cfg.kl_weight * kl
        return total, {"vae_recon": recon.detach(), "vae_kl": kl.detach()}
