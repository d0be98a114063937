"""Model and training configuration, validated on load (unknown keys are errors).

The head's section is the config of the head it names (:data:`models.heads.HeadConfig`, a union
discriminated by ``name``; each head's config lives beside the head in ``models/heads/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from atc_il.config import Section, load_yaml, validate
from models.heads import DEFAULT_HEAD, HeadConfig, MDNConfig, drop_other_heads_fields
from models.style import StyleConfig


class EncoderConfig(Section):
    name: Literal["markov", "mlp", "gru", "transformer"] = "gru"
    hidden: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1, description="attention heads (transformer)")
    dropout: float = Field(0.0, ge=0, lt=1)
    numeric_embedding: Literal["none", "periodic"] = Field(
        "periodic", description="embed every scalar input feature before the encoder's first layer: `periodic` "
        "(sin/cos of learned frequencies, then a per-feature linear map and ReLU; Gorishniy et al. 2022) lets the "
        "network cut sharp thresholds (how long a conflict has been shown, seconds since a clearance) that it "
        "otherwise fits slowly and overfits around; `none` feeds the normalised values as they are")
    embedding_dim: int = Field(8, ge=1, description="per-feature width of the numeric embedding")
    embedding_frequencies: int = Field(8, ge=1, description="learned frequencies per feature (periodic)")
    embedding_sigma: float = Field(1.0, gt=0, description="initial spread of the frequencies, in normalised units")
    aircraft_contrast: bool = Field(False, description="(mlp) each aircraft of the pair at the decision step "
                                    "(its state, its own clearance history and, where the data set has them, its "
                                    "conflicts with third aircraft) through one shared network, the "
                                    "difference and the sum of the two appended to the summary: the choice of "
                                    "aircraft compares the same features of both, which a flat network has to "
                                    "learn twice and slowly (bench/RESULTS.md, the aircraft choice)")


class VAEConfig(Section):
    enabled: bool = True
    latent_dim: int = Field(16, ge=1)
    kl_weight: float = Field(0.1, ge=0)
    recon_weight: float = Field(1.0, ge=0)
    predict_future_steps: int = Field(0, ge=0, description="also reconstruct this many next steps (training only)")


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
    select_on: Literal["loss", "nll", "nll_discrete"] = Field(
        "loss", description="the validation figure that picks the best epoch and drives early stopping: the training "
        "objective (loss: the decision's NLL plus the VAE's reconstruction and KL terms), the decision's NLL (nll: act, "
        "aircraft, type, value) or its discrete part (nll_discrete: act, aircraft, type; what the fidelity gap "
        "measures). The parts stop improving at different epochs: the value NLL and the VAE's terms keep falling "
        "while the aircraft and type terms over-fit (bench/RESULTS.md)")


class ModelConfig(Section):
    name: str = "atc-resolver"
    encoder: EncoderConfig = EncoderConfig()
    vae: VAEConfig = VAEConfig()
    head: HeadConfig = MDNConfig()
    style: StyleConfig = StyleConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="before")
    @classmethod
    def _head_name_defaults_to_mdn(cls, data: Any) -> Any:
        """``head:`` without a ``name`` is the default head (the discriminator of the heads' configs)."""
        if isinstance(data, dict) and isinstance(data.get("head"), dict) and "name" not in data["head"]:
            data = {**data, "head": {"name": DEFAULT_HEAD, **data["head"]}}
        return data


def load_model_config(path: str | Path | None = None, **overrides) -> ModelConfig:
    """The config in ``path`` (or the defaults) with section ``overrides``. An override of the head's ``name``
    keeps only the file's head fields the new head has (``components`` of a file's mdn head does not
    follow a switch to the autoregressive head)."""
    data = load_yaml(path) if path else {}
    for section, values in overrides.items():
        if section == "head" and isinstance(values, dict) and isinstance(data.get("head"), dict) \
                and values.get("name", data["head"].get("name")) != data["head"].get("name", DEFAULT_HEAD):
            data["head"] = {**drop_other_heads_fields({**data["head"], "name": values["name"]}), **values}
        elif isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return validate(ModelConfig, data, str(path or "model config"))
