"""The Bayes ceiling and mode coverage, on hand-made expert records."""

import json

import numpy as np
import pandas as pd
import pytest

from models.ceiling import ceiling_metrics, expert_distributions, mode_coverage


def _truth():
    t = pd.to_datetime(["2024-01-01T00:00:05Z", "2024-01-01T00:00:10Z"])
    joint = [[0, "heading", -30.0, 0.6], [0, "heading", 30.0, 0.2], [1, "altitude", 1000.0, 0.2]]
    return pd.DataFrame({"time": t, "flight_id_1": ["A", "A"], "flight_id_2": ["B", "B"], "p_act": [0.2, 0.8],
                         "joint": [json.dumps(joint)] * 2})


def test_ceiling_from_recorded_probabilities():
    ns = pd.to_datetime(["2024-01-01T00:00:05Z", "2024-01-01T00:00:10Z", "2024-01-01T00:00:15Z"]).as_unit("ns").asi8
    d = expert_distributions(ns, ["A", "A", "A"], ["B", "B", "B"], _truth().assign(joint=lambda x: x["joint"].map(json.loads)))
    assert d["matched"].tolist() == [True, True, False]
    assert d["p_act"].tolist() == [0.2, 0.8, 0.0]                       # unseen by the expert: no action
    assert d["p_aircraft"][0].tolist() == pytest.approx([0.8, 0.2])
    m = ceiling_metrics(d, act=np.array([0, 1, 0]), aircraft=np.array([-1, 0, -1]), typ=np.array([-1, 0, -1]))
    assert m["act_accuracy"] == pytest.approx((0.8 + 0.8 + 1.0) / 3)
    assert m["act_nll"] == pytest.approx(-(np.log(0.8) + np.log(0.8) + np.log(1 - 1e-12)) / 3)
    assert m["aircraft_accuracy"] == pytest.approx(0.8) and m["type_accuracy"] == pytest.approx(0.8)
    assert m["positive_discrete_nll"] == pytest.approx(-(np.log(0.8) + np.log(0.8) + np.log(0.8)))
    assert m["discrete_nll"] == pytest.approx(m["act_nll"] - 2 * np.log(0.8) / 3)


def test_mode_coverage_counts_modes_with_real_mass():
    modes = [[(0, 0, -30.0, 0.6), (0, 0, 30.0, 0.2), (1, 1, 1000.0, 0.2)]]
    both = np.array([[0, 0, -29.0]] * 6 + [[0, 0, 31.0]] * 2 + [[1, 1, 1000.0]] * 2)
    assert mode_coverage(modes, [both]) == 1.0
    collapsed = np.array([[0, 0, 0.0]] * 10)                   # the mean of left and right: no mode
    assert mode_coverage(modes, [collapsed]) == 0.0
    one_side = np.array([[0, 0, -30.0]] * 10)
    assert mode_coverage(modes, [one_side]) == pytest.approx(1 / 3)
