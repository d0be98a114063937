"""head.act_inputs = geometry: P(act) reads the decision-time geometry (and the style code) only, the rest of the
decision the whole context; saved, loaded and exported for the service like any policy."""

import numpy as np
import pytest
import torch

from atc_il.config import DatasetConfig
from atc_il.errors import ModelError
from models.config import ModelConfig
from models.interface import OBS_KEYS, Observations
from models.policy import build_policy, load_policy
from pipelines.features import feature_spec
from tests.helpers import spec_with_stats

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CFG = DatasetConfig(history_steps=5, neighbours=2, recent_clearances=3)
STEP = 5.0


def _feats(n: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for k, t in feature_spec(CFG, STEP)["tensors"].items():
        x = rng.normal(size=(n, *t["shape"])).astype(np.float32)
        x[..., -1] = 1.0
        out[k] = x
    return out


def _policy(encoder: str = "mlp", style: bool = True):
    cfg = ModelConfig(name="hz", encoder={"name": encoder, "hidden": 16}, vae={"enabled": True, "latent_dim": 4},
                      head={"name": "mdn", "hidden": 16, "act_inputs": "geometry"}, style={"enabled": style})
    torch.manual_seed(0)
    return build_policy(cfg, spec_with_stats(CFG, _feats(), STEP)).eval()


@pytest.mark.parametrize("encoder,style", [("mlp", True), ("gru", False)])
def test_p_act_reads_the_decision_time_geometry_only(encoder, style):
    pol = _policy(encoder, style)
    f, other = _feats(), _feats(seed=1)
    obs = Observations.from_dict(f)
    changed = {k: (other[k] if k != "geometry" else f[k].copy()) for k in OBS_KEYS}
    changed["geometry"][:, :-1] = other["geometry"][:, :-1]          # every earlier step
    moved = {k: v.copy() for k, v in f.items()}
    moved["geometry"][:, -1, :-1] = other["geometry"][:, -1, :-1]
    with torch.no_grad():
        p = pol.p_act(obs)
        assert torch.allclose(p, pol.p_act(Observations.from_dict(changed)), atol=1e-6)
        assert not torch.allclose(p, pol.p_act(Observations.from_dict(moved)), atol=1e-4)
        # the rest of the decision still reads everything
        a = pol.predict_action(obs)
        lp = pol.log_prob_terms(obs, a)["aircraft"]
        assert not torch.allclose(lp, pol.log_prob_terms(Observations.from_dict(changed), a)["aircraft"], atol=1e-4)
        if style:                                     # the style code moves P(act)
            assert not torch.allclose(pol.p_act(obs, torch.zeros(6, dtype=torch.long)),
                                      pol.p_act(obs, torch.ones(6, dtype=torch.long)), atol=1e-5)


def test_the_markov_baseline_refuses_it():
    with pytest.raises(ModelError, match="markov"):
        _policy("markov", style=False)


def test_saved_loaded_and_exported_like_any_policy(tmp_path):
    from models.onnx_context import onnx_context
    pol = _policy()
    pol.save(tmp_path / "p")
    back = load_policy(tmp_path / "p")
    f = _feats()
    obs = Observations.from_dict(f)
    with torch.no_grad():
        assert torch.allclose(pol.p_act(obs), back.p_act(obs))
    fast, why = onnx_context(back, [{k: v[:1] for k, v in f.items()}])
    assert fast is not None, why
    with torch.inference_mode():
        np.testing.assert_allclose(fast(obs).tensor.numpy(), back.encode(obs).tensor.numpy(), rtol=0, atol=1e-5)
