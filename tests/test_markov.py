"""The truly Markovian baseline encoder sees the decision-time state only: no history, no clearances."""

import pytest
import torch

from atc_il.config import DatasetConfig
from models.interface import Observations
from pipelines.features import feature_spec
from pipelines.history import HISTORY
from tests.helpers import untrained_policy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = DatasetConfig(history_steps=5, neighbours=2, recent_clearances=3)


def _feats(n: int = 6, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    spec = feature_spec(CFG, 5.0)
    out = {k: torch.randn((n, *t["shape"]), generator=g) for k, t in spec["tensors"].items()}
    for x in out.values():
        x[..., -1] = 1.0                                     # every entry observed
    return out


def test_markov_encoder_ignores_history_clearances_and_history_features():
    feats = _feats()
    pol = untrained_policy(CFG, {k: v.numpy() for k, v in feats.items()}, 5.0, encoder="markov").eval()
    names = [f["name"] for f in pol.spec["tensors"]["geometry"]["features"]]
    hist = [names.index(n) for n in ["time_in_conflict_s"] + [h for h, _, _ in HISTORY]]
    other = _feats(seed=1)
    changed = {k: v.clone() for k, v in feats.items()}
    for k in ("pair", "neighbours", "geometry"):
        changed[k][:, :-1] = other[k][:, :-1]                # every earlier step
    changed["geometry"][:, -1, hist] = other["geometry"][:, -1, hist]
    changed["clearances"] = other["clearances"]
    with torch.no_grad():
        a = pol.encode(Observations.from_dict(feats)).tensor
        b = pol.encode(Observations.from_dict(changed)).tensor
        assert torch.equal(a, b)
        # ...but the decision-time state matters
        state = {k: v.clone() for k, v in feats.items()}
        state["pair"][:, -1, :, 0] += 3.0
        assert not torch.allclose(a, pol.encode(Observations.from_dict(state)).tensor)


def test_aircraft_contrast_is_antisymmetric_in_the_two_aircraft():
    """encoder.aircraft_contrast: one shared network per aircraft (its state and its own clearance history);
    swapping the two aircraft flips the sign of the difference part and leaves the sum part."""
    from atc_il.feature_spec import FeatureSpec
    from models.config import EncoderConfig
    from models.encoders import MLPEncoder
    base = untrained_policy(CFG, {k: v.numpy() for k, v in _feats().items()}, 5.0)
    enc = MLPEncoder(base.spec, EncoderConfig(name="mlp", hidden=16, layers=1, aircraft_contrast=True)).eval()
    f = _feats()
    names = FeatureSpec.of(base.spec).feature_names("geometry")
    swapped = {k: v.clone() for k, v in f.items()}
    swapped["pair"] = f["pair"][:, :, [1, 0]]
    for a, b in (("since_clr_ac1_s", "since_clr_ac2_s"), ("cleared_in_conflict_ac1", "cleared_in_conflict_ac2")):
        i, j = names.index(a), names.index(b)
        swapped["geometry"][..., i], swapped["geometry"][..., j] = f["geometry"][..., j], f["geometry"][..., i]
    with torch.no_grad():
        h, _ = enc(Observations.from_dict(f))
        h2, _ = enc(Observations.from_dict(swapped))
    assert h.shape == (6, enc.out_dim) == (6, 32)
    assert torch.allclose(h[:, 16:24], -h2[:, 16:24], atol=1e-5) and torch.allclose(h[:, 24:], h2[:, 24:], atol=1e-5)
    assert h[:, 16:24].abs().sum() > 0
