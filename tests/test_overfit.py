"""The overfit check: a policy drives the training NLL of a hundred-odd samples near zero. If it cannot, the
trouble is in the model or its inputs, not in the data (the diagnosis of models stuck at the marginals)."""

import pytest
import torch

from atc_il.config import DatasetConfig
from models.config import ModelConfig
from models.interface import Decisions, Observations
from models.policy import build_policy
from pipelines.features import feature_spec
from tests.helpers import untrained_policy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = DatasetConfig(history_steps=3, neighbours=1, recent_clearances=2)
N = 128


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    spec = feature_spec(CFG, 5.0)
    f = {k: torch.randn((N, *t["shape"]), generator=g) for k, t in spec["tensors"].items()}
    for x in f.values():
        x[..., -1] = 1.0
    # the session features are counts of clearances, as in a data set (the style code's posterior reads them as such)
    names = [feat["name"] for feat in spec["tensors"]["geometry"]["features"]]
    session = [i for i, n in enumerate(names) if n.startswith("session_")]
    f["geometry"][..., session] = torch.randint(0, 5, f["geometry"][..., session].shape, generator=g).float()
    x = f["geometry"][:, -1]
    act = (x[:, 0] > 0.5).long()                                   # decisions that are functions of the inputs
    aircraft = torch.where(act == 1, (x[:, 1] > 0).long(), -1)
    typ = torch.where(act == 1, x[:, 2:5].argmax(-1), -1)
    value = torch.where(act == 1, 20.0 * torch.sign(x[:, 5]) * (typ == 0) + 1000.0 * torch.sign(x[:, 5]) * (typ == 1)
                        + 20.0 * torch.sign(x[:, 5]) * (typ == 2), torch.full((N,), float("nan")))
    return f, Decisions(act, aircraft, typ, value)


@pytest.mark.parametrize("style", [False, True])
def test_a_policy_fits_a_few_hundred_samples(style):
    feats, dec = _data()
    base = untrained_policy(CFG, {k: v.numpy() for k, v in feats.items()}, 5.0)
    cfg = ModelConfig(encoder={"name": "mlp", "hidden": 64, "layers": 2}, vae={"enabled": False},
                      head={"name": "mdn", "hidden": 64, "components": 2}, style={"enabled": style})
    torch.manual_seed(0)
    pol = build_policy(cfg, base.spec).train()
    obs = Observations.from_dict(feats)
    opt = torch.optim.Adam(pol.parameters(), 1e-2)
    for _ in range(120):
        loss, _ = pol.loss(obs, dec)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pol.eval()
    with torch.no_grad():
        t = pol.log_prob_terms(obs, dec)
    discrete = -(t["act"] + t["aircraft"] + t["type"]).mean().item()
    assert discrete < 0.1, f"training discrete NLL {discrete:.3f}: the policy cannot fit {N} samples"
