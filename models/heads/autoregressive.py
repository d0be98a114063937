"""``autoregressive``: act -> aircraft -> type -> value bin; value bins uniform over ``value_range[type]``,
a piecewise-uniform density: exact within the range; values outside it are counted in the edge bins."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from atc_il.errors import ModelError
from atc_il.schemas import ACTION_TYPES
from models.heads.base import HEADS, Head, HeadConfigBase, default_value_range, draw, sample_index


class AutoregressiveConfig(HeadConfigBase):
    name: Literal["autoregressive"] = "autoregressive"
    value_bins: int = Field(21, ge=3, description="bins per type for the value")
    value_range: dict[str, tuple[float, float]] = Field(
        default_factory=default_value_range, description="value range per type, in the type's unit (the bins)")


@HEADS.register("autoregressive")
class AutoregressiveHead(Head):
    """act -> aircraft -> type -> value bin, each conditioned on the previous choice's embedding; value
    bins uniform over ``value_range[type]`` (``value_bins`` per type), so log p(value) = log p(bin) -
    log(bin width in the type's unit); sampling is uniform within the sampled bin."""

    def __init__(self, ctx_dim: int, cfg: AutoregressiveConfig):
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
