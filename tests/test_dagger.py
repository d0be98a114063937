"""DAgger: the expert labels the states the learner visits, its memory follows what was executed, the labels
reach the data set while the features keep the executed history, and the loop aggregates, retrains and tracks."""

import json

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from atc_il.config import DatasetConfig
from atc_il.errors import ConfigError, DataError
from atc_il.feature_spec import FeatureSpec
from atc_il.schemas import ACTION_TYPES
from pipelines.conflicts import detect_snapshot
from pipelines.features import TrackIndex, build_features
from simulator_adapters.atco import SyntheticAtco, _PairState
from simulator_adapters.controllers import Clearance, Observation
from tests.helpers import (
    FLIGHTS,
    STEP,
    actions_frame,
    grid_tracks,
    pair_samples,
    simulated_dataset,
    untrained_policy,
)

CFG = DatasetConfig(history_steps=4, neighbours=2, recent_clearances=2)
A = {"flight_id": "A", "lat_deg": 50.0, "lon_deg": 5.0, "alt_ft": 35000.0, "trk_deg": 0.0, "vs_fpm": 0.0, "gs_kt": 450.0}
B = {"flight_id": "B", "lat_deg": 50.1, "lon_deg": 5.15, "alt_ft": 35000.0, "trk_deg": 270.0, "vs_fpm": 0.0, "gs_kt": 450.0}
CONF = {"flight_id_1": "A", "flight_id_2": "B", "tcpa_s": 200.0, "dcpa_nm": 1.0, "conflict": True}


def _obs(t):
    return Observation(pd.Timestamp("2024-01-01T00:00Z") + pd.Timedelta(seconds=t), t, pd.DataFrame([A, B]),
                       pd.DataFrame([CONF]), {}, pd.DataFrame())


def _eager_expert(seed=0):
    atco = SyntheticAtco(style="vectoring_first")
    atco.reset("s", seed)
    atco.pairs[("A", "B")] = _PairState(first_shown=-300.0, last_shown=-5.0)    # shown long ago: p_act near h_max
    return atco


def test_propose_then_commit_is_decide():
    plain, split = _eager_expert(), _eager_expert()
    for t in np.arange(0.0, 400.0, 5.0):
        d = plain.decide(_obs(t))
        p, handled = split.propose(_obs(t))
        split.commit(t, p.clearances, handled)
        assert [(c.flight_id, c.action_type, c.value) for c in d.clearances] == \
            [(c.flight_id, c.action_type, c.value) for c in p.clearances]
        assert [r["acted"] for r in d.truth] == [r["acted"] for r in p.truth]
    assert plain.last_cleared == split.last_cleared and any(r for r in plain.last_cleared)


def test_the_experts_memory_follows_what_was_executed():
    atco = _eager_expert()
    proposed = 0
    for t in np.arange(0.0, 200.0, 5.0):            # its proposals are never executed: the conflict stays open
        p, _ = atco.propose(_obs(t))
        atco.commit(t, [])
        proposed += sum(r["acted"] for r in p.truth)
        assert len(p.truth) == 1 and not atco.pairs[("A", "B")].handled
    assert proposed > 10 and atco.last_cleared == {}
    atco.propose(_obs(200.0))                       # another controller clears B: handled, B was cleared
    atco.commit(200.0, [Clearance("B", "heading", 20.0, against="A")])
    assert atco.pairs[("A", "B")].handled and atco.last_cleared["B"] == (200.0, "heading", "A")
    p, _ = atco.propose(_obs(205.0))
    assert [r for r in p.truth if r["kind"] == "conflict"] == []


@pytest.fixture(scope="module")
def loop_frames(tmp_path_factory):
    """A real, untrained tiny policy that acts at almost every step, and a two-aircraft conflict's frames."""
    tracks = grid_tracks("2024-01-01T10:00Z", FLIGHTS, minutes=6)
    feats = build_features(pair_samples(tracks, "2024-01-01T10:05:00Z", "2024-01-01T10:05:00Z"),
                           TrackIndex.build(tracks, STEP), actions_frame([]).iloc[:0], CFG)
    pol = untrained_policy(CFG, feats, STEP, name="dagger-tiny")
    with torch.no_grad():
        pol.head.type_net[-1].bias[ACTION_TYPES.index("direct_to")] -= 20.0
        pol.head.act_out.bias[1] += 6.0
    root = tmp_path_factory.mktemp("dagger")
    pol.save(root / "eager")
    frames = []
    for t, frame in tracks[tracks["flight_id"].isin(["A", "B"])].groupby("time"):
        frame = frame.reset_index(drop=True)
        conf = detect_snapshot(*(frame[c].to_numpy() for c in ("flight_id", "lat_deg", "lon_deg", "alt_ft", "gs_kt",
                                                               "trk_deg", "vs_fpm")))
        frames.append((t, frame, conf))
    return str(root / "eager"), frames


def _drive(ctl, frames):
    ctl.reset("scenario-1", 3)
    cleared, issued, truth = pd.DataFrame(), [], []
    t0 = frames[0][0]
    for t, frame, conf in frames:
        d = ctl.decide(Observation(t, (t - t0).total_seconds(), frame, conf, {}, cleared))
        issued.append([(c.flight_id, c.action_type, round(c.value, 6)) for c in d.clearances])
        truth += d.truth
        if d.clearances:
            rows = [{"action_id": f"{c.flight_id}@{t}", "time": t, "flight_id": c.flight_id,
                     "action_type": c.action_type, "value": c.value, "unit": "", "source": "simulator",
                     "confidence": 1.0, "against_flight_id": c.against} for c in d.clearances]
            cleared = pd.concat([cleared, pd.DataFrame(rows)], ignore_index=True)
    return issued, truth


def test_with_beta_one_the_expert_drives_with_beta_zero_the_learner(loop_frames):
    from simulator_adapters.controller_registry import make_controller
    from simulator_adapters.model_controller import ModelController
    uri, frames = loop_frames
    expert_issued, expert_truth = _drive(SyntheticAtco(), frames)
    issued, truth = _drive(make_controller(f"dagger:{uri}", beta=1.0), frames)
    assert issued == expert_issued and any(issued)
    assert [r["acted"] for r in truth] == [r["acted"] for r in expert_truth]
    assert {r["in_control"] for r in truth} == {"expert"}
    learner_issued, _ = _drive(ModelController(uri), frames)
    issued, truth = _drive(make_controller(f"dagger:{uri}", beta=0.0), frames)
    assert issued == learner_issued and any(issued)
    assert {r["in_control"] for r in truth} == {"learner"} and truth      # the expert labels the learner's states
    assert any(r["learner_aircraft"] >= 0 for r in truth) and all(0 <= r["learner_p_act"] <= 1 for r in truth)
    assert np.mean([r["learner_p_act"] for r in truth]) > 0.9        # the eager policy's P(act)
    # the learner is asked at every conflict the expert considers (the same decision steps)
    assert all(r["learner_asked"] for r in truth if r["kind"] == "conflict")
    with pytest.raises(ConfigError, match="beta"):
        make_controller(f"dagger:{uri}", beta=1.5)


def test_label_log_turns_the_experts_decisions_into_actions():
    from simulator_adapters.dagger import label_log
    t = pd.Timestamp("2024-01-01T00:01Z")
    truth = pd.DataFrame([
        {"time": t, "flight_id_1": "s/A", "flight_id_2": "s/B", "acted": True, "aircraft": 1, "action_type": "altitude",
         "value": 2000.0},
        {"time": t, "flight_id_1": "s/A", "flight_id_2": "s/C", "acted": False, "aircraft": -1, "action_type": None,
         "value": np.nan},
        {"time": t, "flight_id_1": "s/A", "flight_id_2": "s/D", "acted": True, "aircraft": 0, "action_type": "resume",
         "value": 0.0}])
    log = label_log(truth)
    assert log[["flight_id", "action_type", "against_flight_id", "unit"]].values.tolist() == [
        ["s/B", "altitude", "s/A", "ft"], ["s/A", "resume", "s/D", ""]]
    assert (log["source"] == "simulator").all() and log["action_id"].is_unique


def test_onpolicy_metrics_score_the_learner_with_the_experts_probabilities():
    from simulator_adapters.dagger import onpolicy_metrics
    joint = [(0, "heading", 20.0, 0.6), (1, "altitude", 1000.0, 0.4)]
    base = {"kind": "conflict", "in_control": "learner", "p_act": 0.5, "joint": json.dumps(joint), "acted": True,
            "aircraft": 0, "action_type": "heading"}
    same = onpolicy_metrics(pd.DataFrame([{**base, "learner_aircraft": 0, "learner_type": "heading"}]))
    other = onpolicy_metrics(pd.DataFrame([{**base, "learner_aircraft": 1, "learner_type": "speed"}]))
    assert same["onpolicy_nll_gap"] == pytest.approx(0.0)
    assert same["onpolicy_aircraft_agreement"] == pytest.approx(0.6) and same["onpolicy_type_agreement"] == 1.0
    assert other["onpolicy_nll_gap"] > 10 and other["onpolicy_type_agreement"] == 0.0
    kl = [onpolicy_metrics(pd.DataFrame([{**base, "learner_aircraft": -1, "learner_type": None, "learner_p_act": q}]))
          ["onpolicy_act_kl"] for q in (0.5, 0.2, 0.05)]
    assert kl[0] == pytest.approx(0.0, abs=1e-9) and 0 < kl[1] < kl[2]
    assert onpolicy_metrics(pd.DataFrame([{**base, "in_control": "expert", "learner_aircraft": -1,
                                           "learner_type": None}]))["onpolicy_records"] == 0


# -- the loop, end to end (BlueSky, data chain, training, MLflow) --------------------------------------
@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    return simulated_dataset(tmp_path_factory.mktemp("dagger-e2e") / "sim", 4, 7, {"duration_s": 600, "density": 3.0,
                             "conflicts": 4}, workers=2, test_fraction=0.25, val_fraction=0.25)


@pytest.mark.slow
def test_dagger_aggregates_the_learners_states_labelled_by_the_expert(demos, tmp_path, monkeypatch):
    from atc_il_cli.cli import app
    base = demos / "dataset"
    store = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)      # the workspace's store (an earlier test may have set another)
    res = CliRunner().invoke(app, ["dagger", "--data", str(base), "--config", "tiny", "--iterations", "1",
                                   "--scenarios", "2", "--beta", "0.5", "--epochs", "1", "--duration-s", "600",
                                   "--conflicts", "4", "--seed", "40", "-w", str(tmp_path), "--out",
                                   str(tmp_path / "dagger")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "dagger" / "dagger_report.json").read_text())
    it0, it1 = rep["iterations"]
    roll = tmp_path / "dagger" / "iter-01" / "rollouts"
    # labels: the expert's decisions on the states visited (who drove is mixed), the history: what was executed
    truth = pd.read_parquet(roll / "expert_truth.parquet")
    assert set(truth["in_control"]) <= {"expert", "learner"} and 0 < it1["expert_control_share"] < 1
    labels = pd.read_parquet(roll / "labels.parquet")
    assert len(labels) == int((truth["acted"] & (truth["aircraft"] >= 0)).sum()) == it1["expert_labels"]
    report = json.loads((roll / "dataset" / "dataset_report.json").read_text())
    assert report["links"] == len(pq.read_table(roll / "expert_labels" / "action_links")) and report["labels"] > 0
    shard = pd.concat(pd.read_parquet(f) for f in sorted((roll / "dataset" / "split=train").glob("*.parquet")))
    acting = shard[shard["label_act"] == 1]
    lab_t = set(zip(labels["time"].dt.floor("5s"), labels["flight_id"]))
    pair = np.where(acting["label_aircraft"] == 0, acting["flight_id_1"], acting["flight_id_2"])
    assert all((t, f) in lab_t for t, f in zip(acting["time"], pair))
    # aggregation: the demonstrations' train split plus every rollout sample; val and test are the demonstrations'
    agg = tmp_path / "dagger" / "iter-01" / "data" / "dataset"
    spec, base_spec = FeatureSpec.load(agg), FeatureSpec.load(base)
    assert spec.splits["train"]["samples"] == base_spec.splits["train"]["samples"] + report["samples"] == \
        it1["train_samples"]
    assert spec.splits["test"] == base_spec.splits["test"] and spec.normalisation == base_spec.normalisation
    assert (agg.parent / "expert_truth.parquet").exists() and "gap_discrete_nll" in it1
    # MLflow: a dagger run with the per-iteration metrics, the trainings tagged with their iteration
    mlflow.set_tracking_uri(store)
    client = mlflow.tracking.MlflowClient(store)
    hist = client.get_metric_history(rep["mlflow_run_id"], "nll_discrete")
    assert sorted(m.step for m in hist) == [0, 1]
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`dagger.iteration` = '1'")
    assert len(runs) == 1 and it0["policy"] != it1["policy"]


def test_aggregate_refuses_other_features(demos, tmp_path):
    from simulator_adapters.dagger import aggregate
    other = tmp_path / "other"
    import shutil
    shutil.copytree(demos / "dataset", other)
    spec = FeatureSpec.load(other)
    spec.tensors["geometry"].features = spec.tensors["geometry"].features[:-1]
    (other / "feature_spec.json").write_text(spec.to_json())
    with pytest.raises(DataError, match="other features"):
        aggregate(demos / "dataset", [other], tmp_path / "agg")
