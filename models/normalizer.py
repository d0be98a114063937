"""Per-feature normalisation inside the policy, saved with its weights (diffusion_policy's idea).

Statistics come from the feature spec's ``normalisation`` section (mean and std per feature over valid
entries of the training split). A spec without them is an error: the normaliser never passes raw
features through silently. Padding entries (``valid == 0``) stay exactly 0 after normalisation, and the
``valid`` flag itself is kept as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from atc_il.errors import ModelError
from atc_il.feature_spec import FeatureSpec
from models.interface import OBS_KEYS, Observations


def tensor_shapes(spec: FeatureSpec | dict) -> dict[str, tuple[int, ...]]:
    """Per-sample shape of every observation tensor, from the feature spec (raises ModelError if missing)."""
    if isinstance(spec, dict) and not spec.get("tensors"):
        spec = {}
    tensors = FeatureSpec.of(spec, error=ModelError).tensors if spec else None
    if not tensors:
        raise ModelError("feature spec has no `tensors` section; pass the data set's feature_spec.json "
                         "(pipelines.shards.read_spec)")
    missing = [k for k in OBS_KEYS if k not in tensors]
    if missing:
        raise ModelError(f"feature spec lacks tensors {missing}; expected {list(OBS_KEYS)}")
    return {k: tuple(int(s) for s in tensors[k].shape) for k in OBS_KEYS}


class Normalizer(nn.Module):
    """``(x - mean) / std`` per feature, with padding rows forced to 0 and ``valid`` kept as is."""

    def __init__(self, spec: FeatureSpec | dict):
        super().__init__()
        shapes = tensor_shapes(spec)
        stats = FeatureSpec.of(spec, error=ModelError).normalisation
        if not stats:
            raise ModelError("feature spec has no `normalisation` statistics: a policy cannot normalise its "
                             "inputs without them (they are computed on the training split by `atc-il dataset`; "
                             "rebuild the data set, or load a policy directory saved with its feature_spec.json)")
        for name in OBS_KEYS:
            n_feat = shapes[name][-1]
            st = stats.get(name)
            if st is None:
                raise ModelError(f"feature spec normalisation lacks mean/std for tensor {name!r}; rebuild the data set")
            mean = torch.tensor(st.mean, dtype=torch.float32)
            std = torch.tensor(st.std, dtype=torch.float32)
            if mean.shape != (n_feat,) or std.shape != (n_feat,):
                raise ModelError(f"normalisation of {name!r} has {tuple(mean.shape)} means and {tuple(std.shape)} "
                                 f"stds for {n_feat} features; the spec is inconsistent, rebuild the data set")
            if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
                raise ModelError(f"normalisation of {name!r} has non-finite means or non-positive stds")
            # the last feature is `valid`: never shifted or scaled
            mean[-1], std[-1] = 0.0, 1.0
            self.register_buffer(f"{name}_mean", mean)
            self.register_buffer(f"{name}_std", std)

    def normalise(self, name: str, x: torch.Tensor) -> torch.Tensor:
        mean, std = getattr(self, f"{name}_mean"), getattr(self, f"{name}_std")
        valid = x[..., -1:]
        z = (x[..., :-1] - mean[:-1]) / std[:-1]
        # padding (and anything NaN there) becomes exactly 0
        z = torch.where(valid > 0.5, z, torch.zeros((), dtype=z.dtype, device=z.device))
        return torch.cat([z, valid], dim=-1)

    def forward(self, obs: Observations) -> Observations:
        return Observations(*(self.normalise(k, getattr(obs, k)) for k in OBS_KEYS))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}: {getattr(self, f'{k}_mean').numel()} features" for k in OBS_KEYS)
