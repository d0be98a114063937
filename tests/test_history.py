"""The controller-history features (pipelines/history.py) on a hand-made clearance log."""

import numpy as np
import pandas as pd
import pytest

from atc_il.config import DatasetConfig
from pipelines.features import GEOM, feature_spec
from pipelines.history import HISTORY, history_features, last_before

T0 = pd.Timestamp("2024-01-01T10:00:00Z")


def _ns(s: float) -> int:
    return (T0 + pd.Timedelta(seconds=s)).value


def _actions() -> pd.DataFrame:
    rows = [("A", 10, "heading"), ("B", 20, "altitude"), ("A", 50, "resume"), ("C", 55, "speed"),
            ("A", 60, "heading")]
    return pd.DataFrame({"time": [T0 + pd.Timedelta(seconds=s) for _, s, _ in rows],
                         "flight_id": [f for f, _, _ in rows], "action_type": [k for _, _, k in rows]})


def test_last_before_is_strictly_before_and_per_flight():
    t = np.array([[_ns(10), _ns(11), _ns(60), _ns(61)]])
    assert last_before(_actions(), np.array([["A"]]), t).tolist() == [[-1, 0, 2, 4]]      # rows of the log
    assert last_before(_actions(), np.array([["Z"]]), t).tolist() == [[-1] * 4]


def test_history_features_by_hand():
    t_steps = np.array([[_ns(15), _ns(58)], [_ns(15), _ns(58)]])
    f1, f2 = np.array(["A", "B"], dtype=object), np.array(["B", "Z"], dtype=object)
    first = np.array([_ns(30), _ns(0)])
    g = history_features(_actions(), t_steps, f1, f2, first, horizon_s=40.0, cap_s=100.0)
    assert g.shape == (2, 2, len(HISTORY))
    f = {n: i for i, (n, _, _) in enumerate(HISTORY)}
    # sample 0, step at 58 s: A last cleared at 50 s (8 s ago), B at 20 s (38 s ago); only A since first detection (30 s)
    assert g[0, 1, f["since_clr_ac1_s"]] == pytest.approx(8.0) and g[0, 1, f["since_clr_ac2_s"]] == pytest.approx(38.0)
    assert g[0, 1, f["cleared_in_conflict_ac1"]] == 1 and g[0, 1, f["cleared_in_conflict_ac2"]] == 0
    # at 15 s: B never cleared yet -> the cap; Z is never cleared
    assert g[0, 0, f["since_clr_ac2_s"]] == 100.0 and g[1, 1, f["since_clr_ac2_s"]] == 100.0
    # sample 1 (first detection at 0 s): B cleared at 20 s, in the conflict
    assert g[1, 1, f["cleared_in_conflict_ac1"]] == 1
    # the airspace's clearances within 40 s before 58 s (18..58): altitude at 20, speed at 55; resume not counted
    assert [g[0, 1, f[f"session_{t}"]] for t in ("heading", "altitude", "speed", "direct_to")] == [0, 1, 1, 0]
    assert g[0, 0, f["session_heading"]] == 1                      # at 15 s: the heading at 10 s


def test_history_features_in_the_spec_before_valid():
    names = [f["name"] for f in feature_spec(DatasetConfig(), 5.0)["tensors"]["geometry"]["features"]]
    assert names == [n for n, _, _ in GEOM[:-1] + HISTORY] + ["valid"]
    off = [f["name"] for f in feature_spec(DatasetConfig(controller_history=False), 5.0)["tensors"]["geometry"]["features"]]
    assert off == [n for n, _, _ in GEOM]


def test_pair_history_features_by_hand():
    """Seconds since each aircraft's last clearance against the pair's other aircraft; clearances against a third
    aircraft, resumes (they resolve nothing), and logs without against_flight_id, do not count."""
    from pipelines.history import PAIR_HISTORY, pair_history_features
    rows = [("A", 10, "B"), ("B", 20, "C"), ("A", 50, "C"), ("B", 55, "A"), ("A", 70, None), ("A", 75, "B")]
    log = pd.DataFrame({"time": [T0 + pd.Timedelta(seconds=s) for _, s, _ in rows], "flight_id": [f for f, _, _ in rows],
                        "action_type": ["heading"] * 5 + ["resume"], "against_flight_id": [o for _, _, o in rows]})
    t_steps = np.array([[_ns(10), _ns(30), _ns(60), _ns(80)]] * 2)
    g = pair_history_features(log, t_steps, np.array(["A", "A"], dtype=object), np.array(["B", "C"], dtype=object),
                              cap_s=100.0)
    assert g.shape == (2, 4, len(PAIR_HISTORY))
    # pair (A, B): A against B at 10 s (strictly before: not yet at 10 s), its resume at 75 s not counted; B
    # against A at 55 s
    assert g[0, :, 0].tolist() == [100.0, 20.0, 50.0, 70.0]
    assert g[0, :, 1].tolist() == [100.0, 100.0, 5.0, 25.0]
    # pair (A, C): A against C at 50 s; C never cleared; A's unlinked clearance at 70 s does not count
    assert g[1, :, 0].tolist() == [100.0, 100.0, 10.0, 30.0] and (g[1, :, 1] == 100.0).all()
    assert (pair_history_features(log.drop(columns="against_flight_id"), t_steps, np.array(["A", "A"], dtype=object),
                                  np.array(["B", "C"], dtype=object), cap_s=100.0) == 100.0).all()


def test_pair_history_in_the_spec_only_when_asked():
    from pipelines.history import PAIR_HISTORY
    names = [f["name"] for f in feature_spec(DatasetConfig(pair_history=True), 5.0)["tensors"]["geometry"]["features"]]
    assert names == [n for n, _, _ in GEOM[:-1] + HISTORY + PAIR_HISTORY] + ["valid"]
