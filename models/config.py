"""Model and training configuration, validated on load (unknown keys are errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from atc_il.config import Section, load_yaml, validate


class EncoderConfig(Section):
    name: Literal["markov", "mlp", "gru", "transformer"] = "gru"
    hidden: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1, description="attention heads (transformer)")
    dropout: float = Field(0.0, ge=0, lt=1)


class VAEConfig(Section):
    enabled: bool = True
    latent_dim: int = Field(16, ge=1)
    kl_weight: float = Field(0.1, ge=0)
    recon_weight: float = Field(1.0, ge=0)
    predict_future_steps: int = Field(0, ge=0, description="also reconstruct this many next steps (training only)")


class HeadConfig(Section):
    name: Literal["deterministic", "mdn", "autoregressive", "cvae", "diffusion"] = "mdn"
    hidden: int = Field(128, ge=8)
    components: int = Field(4, ge=1, description="K: mixture components per type (mdn)")
    value_bins: int = Field(21, ge=3, description="bins per type for the value (autoregressive)")
    latent_dim: int = Field(4, ge=1, description="continuous latent dimensions (cvae, latent = continuous)")
    latent: Literal["continuous", "discrete"] = Field(
        "continuous", description="cvae latent: diagonal Gaussian, or a categorical code over `codes` categories")
    codes: int = Field(3, ge=2, description="categories of the discrete code (cvae, latent = discrete)")
    diffusion_steps: int = Field(50, ge=2, description="T: training noise levels (diffusion)")
    sampling_steps: int = Field(10, ge=1, description="DDIM steps when sampling, at most diffusion_steps (diffusion)")
    beta_schedule: Literal["cosine"] = Field("cosine", description="noise schedule (diffusion)")
    value_range: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"heading": (-60.0, 60.0), "altitude": (-4000.0, 4000.0), "speed": (-40.0, 40.0),
                                 "direct_to": (-90.0, 90.0), "resume": (-1.0, 1.0)},
        description="value range per type, in the type's unit (autoregressive bins; diffusion: predicted values "
                    "clipped at 1.5 times its largest magnitude)")

    @model_validator(mode="after")
    def _sampling_within_training_steps(self):
        if self.sampling_steps > self.diffusion_steps:
            raise ValueError(f"sampling_steps ({self.sampling_steps}) must be at most diffusion_steps "
                             f"({self.diffusion_steps})")
        return self


class TrainConfig(Section):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0
    patience: int = Field(5, ge=1, description="early stopping: epochs without validation improvement")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps (smoke tests, budgets)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = True
    compile: bool = False
    num_workers: int = Field(0, ge=0)
    act_weight: float = Field(1.0, ge=0, description="weight of the act-or-not term")


class ModelConfig(Section):
    name: str = "atc-resolver"
    encoder: EncoderConfig = EncoderConfig()
    vae: VAEConfig = VAEConfig()
    head: HeadConfig = HeadConfig()
    train: TrainConfig = TrainConfig()


def load_model_config(path: str | Path | None = None, **overrides) -> ModelConfig:
    data = load_yaml(path) if path else {}
    for section, values in overrides.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return validate(ModelConfig, data, str(path or "model config"))
