"""Discrete-code cvae head: the evaluation's normalised mutual information between the most probable code
and the synthetic controller's style per sample (models.evaluate.code_style_nmi). Tiny untrained policy,
styles looked up from a truth table by scenario as the evaluation does. CPU, one thread."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from models.config import ModelConfig
from models.evaluate import code_style_nmi, codes, true_style
from models.heads import RESUME
from models.policy import build_policy
from tests.helpers import make_dec, make_obs

N = 10


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _policy(spec, latent: str = "discrete"):  # noqa: F811
    torch.manual_seed(0)
    cfg = ModelConfig(encoder={"name": "gru", "hidden": 16, "layers": 1}, vae={"enabled": True, "latent_dim": 4},
                      head={"name": "cvae", "latent": latent, "codes": 3, "hidden": 16})
    return build_policy(cfg, spec).eval()


def _meta_truth(styles: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One scenario per sample (split keys as the simulator writes them), its style in the truth table."""
    meta = pd.DataFrame({"split_key": [f"bluesky:s{i}" for i in range(len(styles))]})
    truth = pd.DataFrame({"scenario": [f"s{i}" for i in range(len(styles))], "style": styles})
    return meta, truth


def test_true_style_lookup_by_scenario():
    meta, truth = _meta_truth(["a", "b", "c"])
    meta.loc[len(meta)] = ["bluesky:unknown"]
    truth = pd.concat([truth, truth.iloc[[0]]])               # one row per decision: duplicates per scenario
    s = true_style(meta, truth)
    assert s.iloc[:3].tolist() == ["a", "b", "c"] and pd.isna(s.iloc[3])


def test_code_style_nmi_matches_sklearn_on_the_codes(spec):  # noqa: F811
    pol, obs, dec = _policy(spec), make_obs(spec, N), make_dec(N)
    c = codes(pol, obs, dec)
    valued = (dec.act == 1).numpy() & (dec.type != RESUME).numpy()
    assert np.array_equal(c["has_value"], valued)
    # the posterior of a row without a value is its prior
    assert np.array_equal(c["posterior"][~valued], c["prior"][~valued])
    with torch.no_grad():
        post = pol.code_posterior(obs, dec).probs.argmax(-1).numpy()
    assert np.array_equal(c["posterior"], post)

    styles = ["vertical_first", "vectoring_first", "speed_first", None, "speed_first",
              "vertical_first", "vectoring_first", "vectoring_first", "speed_first", "vertical_first"]
    meta, truth = _meta_truth(styles)
    m = code_style_nmi(pol, obs, dec, meta, truth)
    known = np.array([s is not None for s in styles])
    y = np.array(styles, dtype=object)
    for k, sel in (("posterior", known & valued), ("prior", known)):
        assert m[f"code_style_samples_{k}"] == sel.sum()
        assert m[f"code_style_nmi_{k}"] == pytest.approx(normalized_mutual_info_score(y[sel], c[k][sel]))
        assert 0.0 <= m[f"code_style_nmi_{k}"] <= 1.0
        assert 1 <= m[f"code_style_codes_used_{k}"] <= 3
    assert m["code_style_styles"] == 3


def test_code_style_nmi_is_one_when_the_style_is_the_code(spec):  # noqa: F811
    pol, obs, dec = _policy(spec), make_obs(spec, N), make_dec(N)
    c = codes(pol, obs, dec)
    v = c["has_value"]
    assert len(set(c["posterior"][v].tolist())) >= 2     # the demonstrated values pick different codes
    meta, truth = _meta_truth([f"style{k}" if ok else None for k, ok in zip(c["posterior"], v)])
    m = code_style_nmi(pol, obs, dec, meta, truth)
    assert m["code_style_nmi_posterior"] == pytest.approx(1.0) and m["code_style_samples_posterior"] == v.sum()
    # no known style, or a single one: no score (NMI would be degenerate)
    meta, truth = _meta_truth(["x"] * N)
    m = code_style_nmi(pol, obs, dec, meta.assign(split_key="bluesky:elsewhere"), truth)
    assert m["code_style_nmi_prior"] is None and m["code_style_samples_prior"] == 0
    m = code_style_nmi(pol, obs, dec, meta, truth)
    assert m["code_style_nmi_prior"] is None and m["code_style_samples_prior"] == N and m["code_style_styles"] == 1
