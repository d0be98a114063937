"""The service's ONNX Runtime copy of the context network equals PyTorch's, for every encoder."""

import numpy as np
import pytest
import torch

from atc_il.config import DatasetConfig
from models.interface import OBS_KEYS, Observations
from models.onnx_context import onnx_context
from pipelines.features import feature_spec
from tests.helpers import untrained_policy

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEP = 5.0


def _features(n: int, seed: int = 0) -> dict:
    """Random feature tensors of the default spec's shapes, with partly valid histories and neighbours."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, t in feature_spec(DatasetConfig(), STEP)["tensors"].items():
        x = rng.normal(size=(n, *t["shape"])).astype(np.float32)
        x[..., -1] = rng.random(x.shape[:-1]) < 0.7
        out[k] = x
    out["pair"][:, -1, :, -1] = 1.0          # both aircraft seen at the decision time
    out["geometry"][:, -1, -1] = 1.0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("encoder,vae", [("mlp", False), ("gru", True), ("transformer", False)])
def test_onnx_context_equals_the_pytorch_context_at_any_batch_size(encoder, vae):
    feats = _features(7)
    policy = untrained_policy(DatasetConfig(), feats, STEP, encoder=encoder, vae=vae)
    fast, why = onnx_context(policy, [{k: v[:1] for k, v in feats.items()}])
    assert fast is not None, why
    with torch.inference_mode():
        for b in (1, 3, 7):
            obs = Observations.from_dict({k: feats[k][:b] for k in OBS_KEYS})
            np.testing.assert_allclose(fast(obs).tensor.numpy(), policy.encode(obs).tensor.numpy(), rtol=0, atol=1e-5)
