"""Resume steps: after a clearance against another aircraft, while the pair diverges and until the aircraft's next
clearance; the same steps in the data set (with the resumes as labels) and in the closed loop."""

import numpy as np
import pandas as pd
import pytest

from atc_il.config import DatasetConfig
from atc_il.schemas import ACTION_TYPES, action_id
from pipelines.features import TrackIndex, build_features
from pipelines.resume import outstanding, resume_steps
from tests.helpers import FLIGHTS, STEP, actions_frame, grid_tracks, pair_samples, untrained_policy

T0 = pd.Timestamp("2024-01-01T10:00Z")      # A and B fly head-on: closest approach at 480 s


def _actions(rows):
    df = pd.DataFrame([{"time": T0 + pd.Timedelta(seconds=s), "flight_id": f, "action_type": k, "value": 0.0,
                        "unit": "", "source": "simulator", "confidence": 1.0, "against_flight_id": o}
                       for s, f, k, o in rows])
    df["action_id"] = [action_id(f, t, k) for f, t, k in zip(df["flight_id"], df["time"], df["action_type"])]
    return df


@pytest.fixture(scope="module")
def idx():
    return TrackIndex.build(grid_tracks("2024-01-01T10:00Z", FLIGHTS, minutes=20), STEP)


def test_steps_run_from_divergence_to_the_next_clearance(idx):
    acts = _actions([(300, "A", "heading", "B"), (720, "A", "resume", "B"), (100, "N1", "speed", None)])
    outs = outstanding(acts)
    assert outs["flight_id"].tolist() == ["A"]               # no resume follows a resume or an unknown conflict
    steps = resume_steps(outs, idx, window_s=900)
    sec = (steps["time"] - T0).dt.total_seconds()
    assert sec.min() == 480 and sec.max() == 720 and len(steps) == 49      # diverging, up to the resume (inclusive)
    assert (steps["flight_id_1"] == "A").all() and (steps["first_detection"] == T0 + pd.Timedelta(seconds=300)).all()
    short = resume_steps(outs, idx, window_s=300)
    assert (short["time"] - T0).dt.total_seconds().max() == 600
    b = resume_steps(outstanding(_actions([(300, "B", "altitude", "A")])), idx, window_s=900)
    assert (b["flight_id_1"] == "A").all() and (b["resumer"] == 1).all() and len(b) == 144   # 480 s to the end of the tracks (1195 s)


def test_the_data_set_labels_the_resume_at_its_step(idx):
    from pipelines.dataset import _attach_resume_labels, _with_resume_steps, attach_labels
    acts = _actions([(300, "A", "heading", "B"), (720, "A", "resume", "B")])
    conflict = pair_samples(grid_tracks("2024-01-01T10:00Z", FLIGHTS, 20), "2024-01-01T10:04:00Z",
                            "2024-01-01T10:08:00Z")                  # conflict steps up to 480 s
    samples, n = _with_resume_steps(conflict, acts, idx, DatasetConfig())
    assert n == 48 and len(samples) == len(conflict) + 48            # the step at 480 s is a conflict step already
    lab, _ = attach_labels(samples, pd.DataFrame(columns=["episode_id", "time", "aircraft", "action_type", "value",
                                                          "confidence"]), idx)
    stats = _attach_resume_labels(samples, lab, acts, idx, n)
    assert stats["resume_labels"] == 1 and stats["resumes_without_decision_step"] == 0
    hit = lab[lab["label_act"] == 1]
    assert len(hit) == 1 and hit["label_type"].item() == ACTION_TYPES.index("resume")
    assert hit["label_aircraft"].item() == 0 and samples.loc[hit.index[0], "time"] == T0 + pd.Timedelta(seconds=720)
    assert _with_resume_steps(conflict, acts, idx, DatasetConfig(resume_samples=False))[1] == 0


def test_the_closed_loop_asks_the_policy_at_the_same_steps(tmp_path):
    from simulator_adapters.controllers import Observation
    from simulator_adapters.model_controller import ModelController
    cfg = DatasetConfig(history_steps=4, neighbours=2, recent_clearances=2)
    tracks = grid_tracks("2024-01-01T10:00Z", FLIGHTS, minutes=20)
    feats = build_features(pair_samples(tracks, "2024-01-01T10:05:00Z", "2024-01-01T10:05:00Z"),
                           TrackIndex.build(tracks, STEP), actions_frame([]).iloc[:0], cfg)
    untrained_policy(cfg, feats, STEP, name="resume-tiny").save(tmp_path / "p")
    ctl = ModelController(str(tmp_path / "p"))

    def asked(sec, cleared):
        frame = tracks[tracks["time"] == T0 + pd.Timedelta(seconds=sec)].reset_index(drop=True)
        return ctl.resume_samples(Observation(T0 + pd.Timedelta(seconds=sec), float(sec), frame, pd.DataFrame(), {},
                                              cleared), set())
    cleared = _actions([(300, "A", "heading", "B")])
    assert asked(400, cleared).empty                                   # still converging
    got = asked(600, cleared)
    assert got[["flight_id_1", "flight_id_2"]].values.tolist() == [["A", "B"]]
    assert got["first_detection"].item() == T0 + pd.Timedelta(seconds=300)
    assert asked(600, _actions([(300, "A", "heading", "B"), (550, "A", "resume", "B")])).empty
    assert asked(1300, cleared).empty                                  # past the window
    d = ctl.decide(Observation(T0 + pd.Timedelta(seconds=600), 600.0,
                               tracks[tracks["time"] == T0 + pd.Timedelta(seconds=600)].reset_index(drop=True),
                               pd.DataFrame(), {}, cleared))
    assert isinstance(d.clearances, list) and np.isfinite(len(d.clearances))
