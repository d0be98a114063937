"""The Bayes ceiling and mode coverage, on hand-made expert records."""

import json

import numpy as np
import pandas as pd
import pytest

from models.ceiling import ceiling_metrics, combine_records, expert_distributions, mode_coverage, sample_modes


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
    # the likelihood factorises as models do, p(aircraft) p(type | aircraft): heading has all of aircraft 1's mass
    assert d["p_type_given_aircraft"][1, 0, 0] == pytest.approx(1.0)
    assert m["positive_discrete_nll"] == pytest.approx(-(np.log(0.8) + np.log(0.8) + np.log(1.0)))
    assert m["discrete_nll"] == pytest.approx(m["act_nll"] - np.log(0.8) / 3)
    assert m["acting_matched_share"] == 1.0


def test_mode_coverage_counts_modes_with_real_mass():
    modes = [[(0, 0, -30.0, 0.6), (0, 0, 30.0, 0.2), (1, 1, 1000.0, 0.2)]]
    both = np.array([[0, 0, -29.0]] * 6 + [[0, 0, 31.0]] * 2 + [[1, 1, 1000.0]] * 2)
    assert mode_coverage(modes, [both]) == 1.0
    collapsed = np.array([[0, 0, 0.0]] * 10)                   # the mean of left and right: no mode
    assert mode_coverage(modes, [collapsed]) == 0.0
    one_side = np.array([[0, 0, -30.0]] * 10)
    assert mode_coverage(modes, [one_side]) == pytest.approx(1 / 3)


def test_a_ceilings_own_draws_cover_its_modes_and_few_draws_do_not():
    """The estimator is sampled: the distribution that defines the modes covers all of them with enough draws,
    while a handful of draws already misses modes of probability 0.1 (why evaluate draws mode_samples apart)."""
    modes = [[(0, 0, -30.0, 0.45), (0, 0, 30.0, 0.45), (1, 1, 1000.0, 0.1)] for _ in range(200)] + [[]]
    draws = sample_modes(modes, 512, seed=1)
    assert draws[-1] is None and draws[0].shape == (512, 3)
    assert mode_coverage(modes, draws) == 1.0
    assert mode_coverage(modes, sample_modes(modes, 8, seed=1)) < 0.9


def _session():
    """Two styles with prior 1/2 each; three records: t=5 acted (heading), t=10 two conflicts (one acted)."""
    def bs(pa_x, pa_y, q_x):
        return {"x": {"prior": 0.5, "p_act": pa_x, "joint": [[0, "heading", 30.0, q_x], [0, "speed", 20.0, 1 - q_x]]},
                "y": {"prior": 0.5, "p_act": pa_y, "joint": [[0, "heading", 30.0, 1 - q_x], [0, "speed", 20.0, q_x]]}}
    t = pd.to_datetime(["2024-01-01T00:00:05Z", "2024-01-01T00:00:10Z", "2024-01-01T00:00:10Z"])
    by = [bs(0.5, 0.25, 0.8), bs(0.4, 0.4, 0.8), bs(0.2, 0.6, 0.9)]
    return pd.DataFrame({"time": t, "scenario": "s", "flight_id_1": ["A", "A", "C"], "flight_id_2": ["B", "B", "D"],
                         "style": "x", "p_act": [b["x"]["p_act"] for b in by], "joint": [b["x"]["joint"] for b in by],
                         "by_style": by, "acted": [True, False, True], "aircraft": [0, -1, 0],
                         "action_type": ["heading", None, "speed"], "value": [30.0, np.nan, 20.0]})


def test_achievable_ceiling_marginalises_the_style_with_its_exact_posterior():
    from models.ceiling import achievable
    a = achievable(_session())
    # first decision: the prior mixture
    assert a["style_posterior"][0] == pytest.approx({"x": 0.5, "y": 0.5})
    assert a["p_act"][0] == pytest.approx(0.5 * 0.5 + 0.5 * 0.25)
    heading0 = dict(((k, t, v), q) for k, t, v, q in a["joint"][0])[(0, "heading", 30.0)]
    assert heading0 == pytest.approx((0.5 * 0.5 * 0.8 + 0.5 * 0.25 * 0.2) / (0.5 * 0.5 + 0.5 * 0.25))
    # after t=5 (acted, heading): P(x) ∝ 0.5 * 0.5 * 0.8, P(y) ∝ 0.5 * 0.25 * 0.2; both t=10 records use it, not each other
    px = 0.5 * 0.8 / (0.5 * 0.8 + 0.25 * 0.2)
    for r in (1, 2):
        assert a["style_posterior"][r]["x"] == pytest.approx(px)
    assert a["p_act"][2] == pytest.approx(px * 0.2 + (1 - px) * 0.6)
    # the oracle knows the style: its numbers are the style's own
    assert _session()["p_act"].tolist() == [0.5, 0.4, 0.2]


def test_achievable_ceiling_needs_per_style_records():
    from atc_il.errors import DataError
    from models.ceiling import achievable
    with pytest.raises(DataError, match="by_style"):
        achievable(_session().drop(columns="by_style"))


def test_both_aircraft_resuming_at_one_step_is_one_pair_decision():
    """The expert decides a resume for each aircraft of a pair separately, so a pair can carry two records at
    one step; the data set keeps one label per pair and step. The ceiling combines them (it kept only the last
    record, which gave the other aircraft's resume probability 0)."""
    p, joint = combine_records([0.3, 0.3], [[(0, "resume", 0.0, 1.0)], [(1, "resume", 0.0, 1.0)]])
    assert p == pytest.approx(1 - 0.7 * 0.7)
    assert sorted(joint) == [(0, "resume", 0.0, pytest.approx(0.5)), (1, "resume", 0.0, pytest.approx(0.5))]
    p, joint = combine_records([0.6, 0.2], [[(0, "resume", 0.0, 1.0)], [(1, "resume", 0.0, 1.0)]])
    w0, w1 = 0.6 * (0.8 + 0.2 / 2), 0.2 * (0.4 + 0.6 / 2)
    assert dict(((k, q) for k, _, _, q in joint)) == pytest.approx({0: w0 / (w0 + w1), 1: w1 / (w1 + w0)})
    t = pd.DataFrame({"time": pd.to_datetime([10, 10], unit="s", utc=True), "flight_id_1": ["A", "A"],
                      "flight_id_2": ["B", "B"], "p_act": [0.3, 0.3],
                      "joint": [[(0, "resume", 0.0, 1.0)], [(1, "resume", 0.0, 1.0)]]})
    d = expert_distributions(np.array([10 * 10**9]), ["A"], ["B"], t)
    assert d["p_act"][0] == pytest.approx(0.51) and d["p_aircraft"][0] == pytest.approx([0.5, 0.5])
