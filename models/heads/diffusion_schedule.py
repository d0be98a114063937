"""A small DDPM / DDIM noise scheduler (the conventions of Ho et al. 2020 and Song et al. 2021, as in
Diffusion Policy's use of diffusers' DDPMScheduler / DDIMScheduler, written out here in ~100 lines).

Indexing: ``t`` runs over 0 .. T-1; ``alpha_bar[t] = prod_{s <= t} (1 - beta[s])``, so ``x_t`` is the sample
after t + 1 noising steps, and "t = -1" is clean data (``alpha_bar = 1``).

- ``q_sample(x0, t, eps)``: the forward process in closed form,
  ``x_t = sqrt(alpha_bar[t]) x0 + sqrt(1 - alpha_bar[t]) eps``, eps ~ N(0, I);
- ``ddim_timesteps(steps)``: the ``steps`` noise levels a DDIM sampler visits, from T-1 down, evenly spaced
  ("trailing" spacing: the first is always T-1, where x is pure noise);
- ``ddim_step(x_t, eps_hat, t, t_prev)``: one DDIM update from level t to level t_prev (-1 = clean) with
  eta = 0 by default (deterministic); ``eta > 0`` adds the DDPM-like noise ``sigma_t z``.

The cosine schedule is Nichol & Dhariwal's (2021): ``alpha_bar(s) = cos^2((s / T + 0.008) / 1.008 * pi / 2)``,
betas clipped at 0.999. All schedule tensors are float64-computed, kept as float32 buffers (not saved in
the state dict: they follow from the configuration), and every method computes in float32.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from atc_il.errors import ModelError


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Betas (T,) of the cosine schedule: ``beta_t = min(1 - abar((t+1)/T) / abar(t/T), max_beta)``."""
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)], dtype=torch.float64)


BETA_SCHEDULES = {"cosine": cosine_betas}


class NoiseScheduler(nn.Module):
    def __init__(self, steps: int, schedule: str = "cosine"):
        super().__init__()
        if schedule not in BETA_SCHEDULES:
            raise ModelError(f"unknown beta schedule {schedule!r}; known: {sorted(BETA_SCHEDULES)}")
        if steps < 2:
            raise ModelError(f"a diffusion needs at least 2 steps, got {steps}")
        self.T = steps
        betas = BETA_SCHEDULES[schedule](steps)
        alpha_bar = torch.cumprod(1 - betas, 0)
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alpha_bar", alpha_bar.float(), persistent=False)

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar at levels ``t`` (any shape, long), with alpha_bar(-1) = 1 (clean data)."""
        t = torch.as_tensor(t, device=self.alpha_bar.device).long()
        return torch.where(t >= 0, self.alpha_bar[t.clamp(min=0)], torch.ones((), device=self.alpha_bar.device))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I) with the given standard normal ``eps``."""
        a = self.abar(t).to(x0.device)
        return a.sqrt() * x0.float() + (1 - a).sqrt() * eps.float()

    def ddim_timesteps(self, steps: int, spacing: str = "leading") -> list[int]:
        """The ``steps`` levels visited by DDIM, decreasing. ``leading`` (diffusers' default): multiples of
        T // steps from (steps - 1) (T // steps) down to 0; ``trailing``: evenly spaced from T-1 down."""
        if not 1 <= steps <= self.T:
            raise ModelError(f"sampling steps must be within 1..{self.T} (the training steps), got {steps}")
        if spacing == "leading":
            return [i * (self.T // steps) for i in reversed(range(steps))]
        if spacing == "trailing":
            return [int(round(self.T - i * self.T / steps)) - 1 for i in range(steps)]
        raise ModelError(f"unknown timestep spacing {spacing!r}; known: leading, trailing")

    def predict_x0(self, x_t: torch.Tensor, eps_hat: torch.Tensor, t, clip: torch.Tensor | float | None = None):
        """x0 implied by ``x_t`` and the predicted noise, optionally clipped to ``[-clip, clip]``."""
        a = self.abar(t).to(x_t.device)
        x0 = (x_t.float() - (1 - a).sqrt() * eps_hat.float()) / a.sqrt()
        if clip is not None:
            clip = torch.as_tensor(clip, dtype=x0.dtype, device=x0.device)
            x0 = torch.maximum(torch.minimum(x0, clip), -clip)
        return x0

    def ddim_step(self, x_t: torch.Tensor, eps_hat: torch.Tensor, t, t_prev, eta: float = 0.0,
                  noise: torch.Tensor | None = None, clip: torch.Tensor | float | None = None) -> torch.Tensor:
        """x at level ``t_prev`` (< t; -1 = clean) from x at level ``t``; with a clipped x0 the noise direction
        is re-derived from it (as diffusers does), so a clip keeps the step consistent."""
        a, a_prev = self.abar(t).to(x_t.device), self.abar(t_prev).to(x_t.device)
        x_t = x_t.float()
        x0 = self.predict_x0(x_t, eps_hat, t, clip)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt() if clip is not None else eps_hat.float()
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).clamp(min=0).sqrt()
        x_prev = a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0:
            if noise is None:
                raise ModelError("ddim_step with eta > 0 needs standard normal `noise`")
            x_prev = x_prev + sigma * noise.float()
        return x_prev
