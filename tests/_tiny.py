"""A real, untrained tiny policy for tests that need a model in a loop (controller, features), with the
feature spec of a data-set configuration and normalisation statistics taken from given feature tensors."""

import torch

from atc_il.config import DatasetConfig
from pipelines.dataset import feature_spec
from pipelines.shards import RunningStats


def untrained_policy(dcfg: DatasetConfig, feats: dict, step_s: float, encoder: str = "mlp", name: str = "tiny",
                     seed: int = 0, vae: bool = False):
    from models.config import ModelConfig
    from models.policy import build_policy
    spec = feature_spec(dcfg, step_s)
    spec["normalisation"] = {}
    for key, t in spec["tensors"].items():
        st = RunningStats(len(t["features"]))
        st.update(feats[key])
        spec["normalisation"][key] = st.result([f["normalise"] for f in t["features"]])
    cfg = ModelConfig(name=name, encoder={"name": encoder, "hidden": 8, "layers": 1}, vae={"enabled": vae, "latent_dim": 4},
                      head={"name": "mdn", "hidden": 8, "components": 2})
    torch.manual_seed(seed)
    return build_policy(cfg, spec)
