"""Scenarios, rollouts, demonstrations and closed-loop evaluation on the real BlueSky (no mocks)."""

import pandas as pd
import pytest

from atc_il.config import PipelineConfig
from pipelines import actions as act
from pipelines import conflicts as con
from pipelines.dataset import build
from simulator_adapters.bluesky_sim import BlueSkySim
from simulator_adapters.controller_registry import make_controller
from simulator_adapters.rollout import RolloutConfig, rollout
from simulator_adapters.scenarios import Scenario, generate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim():
    with BlueSkySim() as s:
        yield s


def test_scenario_replays_from_json():
    sc = generate(seed=11, conflicts=3)
    again = Scenario.from_json(sc.to_json())
    assert again == sc and generate(seed=11, conflicts=3) == sc


def test_generated_conflicts_are_there(sim):
    """Every injected pair is a conflict for atc-il's detection and for BlueSky's, with no controller."""
    sc = generate(seed=4, conflicts=4, density=0.0, duration_s=1200, geometries=("crossing", "head_on", "overtaking"))
    res = rollout(sc, make_controller("none"), sim, RolloutConfig(record_bluesky_conflicts=True))
    eps, _ = con.build_episodes(con.detect(res.tracks), res.tracks)
    ours = set(zip(eps["flight_id_1"], eps["flight_id_2"]))
    theirs = set(res.meta["bluesky_conflict_pairs"])
    for c in sc.conflicts:
        pair = tuple(sorted((c.flight_id_1, c.flight_id_2)))
        assert pair in ours, (c, ours)
        assert pair in theirs, (c, theirs)


def test_rollouts_are_reproducible(sim):
    sc = generate(seed=8, conflicts=3, density=2.0, duration_s=900)
    a = rollout(sc, make_controller("atco"), sim)
    b = rollout(sc, make_controller("atco"), sim)
    pd.testing.assert_frame_equal(a.tracks, b.tracks)
    pd.testing.assert_frame_equal(a.actions, b.actions)
    assert len(a.actions) > 0 and a.meta["style"] == b.meta["style"]


def test_experts_lose_separation_less_often_than_no_controller(tmp_path):
    from simulator_adapters.evaluation import simeval
    agg = simeval(["none", "atco", "mvp"], 3, 0, tmp_path, {"duration_s": 1200}, workers=2).set_index("controller")
    assert agg.loc["atco", "los"] < agg.loc["none", "los"]
    assert agg.loc["mvp", "los"] < agg.loc["none", "los"]
    assert agg.loc["atco", "agree_type"] == 1.0                 # the expert agrees with itself
    assert (tmp_path / "results.png").stat().st_size > 1000 and "| controller |" in (tmp_path / "results.md").read_text()


def test_simeval_in_parallel_gives_the_same_results(tmp_path):
    """The scenarios split between BlueSky processes: every row as with one process, in scenario order."""
    from simulator_adapters.evaluation import simeval
    kw = {"duration_s": 300, "conflicts": 2, "density": 2.0}
    simeval(["none", "atco"], 3, 4, tmp_path / "one", kw)
    simeval(["none", "atco"], 3, 4, tmp_path / "two", kw, workers=2)
    one, two = (pd.read_csv(tmp_path / d / "per_scenario.csv").drop(columns="wall_s") for d in ("one", "two"))
    pd.testing.assert_frame_equal(one, two)


def test_demonstrations_feed_the_data_chain_unchanged(tmp_path):
    from simulator_adapters.demonstrations import simulate
    ws = tmp_path / "sim"
    rep = simulate(ws, 3, "atco", seed=2, scenario_kwargs={"duration_s": 900, "density": 2.0})
    assert rep["clearances"] > 0 and (ws / "expert_truth.parquet").exists()
    cfg = PipelineConfig()
    con.run(ws / "tracks", ws, cfg.conflicts)
    act.run(ws / "tracks", ws, cfg.actions, log=ws / "clearances.parquet", infer=False, episodes_dir=ws / "episodes")
    summary = build(ws, None, cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"split": "scenario"})}))
    assert summary["samples"] > 0 and summary["labels"] > 0
    assert summary["train samples"] and summary["val samples"] and summary["test samples"]
    truth = pd.read_parquet(ws / "expert_truth.parquet")
    assert {"style", "p_act", "joint", "log_prob"} <= set(truth.columns)
    # tracks/ is the picture the expert decided on: every conflict it considered is one on the recorded tracks, at
    # the same step (the data set sees what the expert saw), and the true states are kept beside it
    from atc_il.io import read_table
    from atc_il.schemas import TRACK_SCHEMA
    conf = pd.read_parquet(ws / "conflicts", columns=["time", "flight_id_1", "flight_id_2", "conflict"])
    shown = set(zip(conf.loc[conf["conflict"].astype(bool), "time"], conf["flight_id_1"], conf["flight_id_2"]))
    considered = truth[truth["kind"] == "conflict"]
    assert len(considered) > 0
    assert all(k in shown for k in zip(considered["time"], considered["flight_id_1"], considered["flight_id_2"]))
    radar, true = read_table(ws / "tracks", TRACK_SCHEMA), read_table(ws / "true_tracks", TRACK_SCHEMA)
    m = radar.merge(true, on=["time", "flight_id"], suffixes=("", "_true"))
    assert len(m) == len(radar) == len(true) and rep["surveillance"] == "radar"
    err_ft = (m["alt_ft"] - m["alt_ft_true"]).abs()
    assert 5 < err_ft.mean() < 50                                 # RadarNoise.alt_ft = 25 ft


def test_the_rollout_records_the_controllers_picture(sim):
    """``RolloutResult.radar`` is what the controller observed at each step; ``tracks`` the true states."""
    from simulator_adapters.controllers import Controller, Decision

    class Watcher(Controller):
        name = "watcher"

        def __init__(self):
            self.seen = []

        def decide(self, obs):
            self.seen.append(obs.radar)
            return Decision()

    sc = generate(seed=8, conflicts=2, density=1.0, duration_s=300)
    w = Watcher()
    res = rollout(sc, w, sim)
    pd.testing.assert_frame_equal(res.radar, pd.concat(w.seen, ignore_index=True))
    assert len(res.radar) == len(res.tracks) and not res.radar["lat_deg"].equals(res.tracks["lat_deg"])


def test_scenario_from_recorded_tracks_replays_them(sim):
    """Tracks recorded from a run, turned into a scenario and replayed, follow the recording."""
    from simulator_adapters.scenarios import from_tracks
    sc = generate(seed=21, conflicts=1, density=1.0, duration_s=600, geometries=("crossing",))
    rec = rollout(sc, make_controller("none"), sim).tracks
    replay_sc = from_tracks(rec, duration_s=600, name="replay", perturb_pos_nm=0.0)
    assert len(replay_sc.flights) == rec["flight_id"].nunique()
    assert Scenario.from_json(replay_sc.to_json()) == replay_sc
    rep = rollout(replay_sc, make_controller("none"), sim).tracks
    back = {v: k for k, v in replay_sc.spec["flight_ids"].items()}
    rec = rec.assign(flight_id=rec["flight_id"].map(back))
    m = rec.merge(rep, on=["time", "flight_id"], suffixes=("", "_r"))
    assert len(m) > 0.8 * len(rec)
    from atc_il.geometry import haversine_nm
    err = haversine_nm(m["lat_deg"], m["lon_deg"], m["lat_deg_r"], m["lon_deg_r"])
    assert err.max() < 2.0 and (m["alt_ft"] - m["alt_ft_r"]).abs().max() < 200
    perturbed = from_tracks(rec.assign(flight_id=rec["flight_id"]), duration_s=600, perturb_pos_nm=2.0, seed=3)
    assert perturbed.flights[0].lat_deg != replay_sc.flights[0].lat_deg
