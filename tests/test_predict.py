"""Batch prediction (models/batch_predict.py, `atc-il predict`): coverage, engines, loads, restarts, failures,
and decisions across a day boundary."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from atc_il.io import MARKER, read_table, write_partitioned
from atc_il.schemas import ACTION_SCHEMA, TRACK_SCHEMA
from models import batch_predict as P

KEYS = ["time", "flight_id_1", "flight_id_2"]


@pytest.fixture(scope="session")
def ws(tmp_path_factory) -> Path:
    """The quickstart chain on 3 sample days and a tiny model trained for one epoch (about 8 s)."""
    from models.config import load_model_config
    from models.train import train
    from pipelines.sample import radar_chain

    w = tmp_path_factory.mktemp("predict_ws")
    radar_chain(w, progress=False)
    cfg_m = load_model_config(Path(__file__).resolve().parents[1] / "models" / "configs" / "tiny.yaml", train={"epochs": 1})
    train(cfg_m, w / "dataset", w / "run", tracking_uri=False, progress=False)
    return w


@pytest.fixture(scope="session")
def uri(ws) -> str:
    return str(ws / "run" / "best")


@pytest.fixture(scope="session")
def local_out(ws, uri, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pred_local")
    return out, P.run(ws / "tracks", out, uri, clearances=ws / "actions")


def _read(out: Path) -> pd.DataFrame:
    df = pd.concat([pd.read_parquet(f) for f in sorted(out.rglob("part-0.parquet"))], ignore_index=True)
    return df.sort_values(KEYS, kind="stable").reset_index(drop=True)


def _assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    a, b = a.sort_values(KEYS).reset_index(drop=True), b.sort_values(KEYS).reset_index(drop=True)
    assert len(a) == len(b)
    for c in a.columns:
        if a[c].dtype.kind == "f":
            np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=1e-5, atol=1e-5, err_msg=c)
        else:
            assert (a[c].to_numpy() == b[c].to_numpy()).all(), c


def test_outputs_mirror_input_and_cover_every_conflict_step(ws, uri, local_out):
    out, rep = local_out
    src = sorted(p.parent.relative_to(ws / "tracks").as_posix() for p in (ws / "tracks").rglob(MARKER))
    dst = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob(MARKER))
    assert src == dst and len(src) == 3
    assert all((out / k / "part-0.parquet").exists() for k in dst)
    pred = _read(out)
    assert list(pred.columns) == P.PREDICTION_SCHEMA.names
    # every conflict step (detected on all days at once) has exactly one decision
    tracks = read_table(ws / "tracks", TRACK_SCHEMA)
    c = P.get_predictor(uri).detect(tracks)
    want = c[c["conflict"]][KEYS].sort_values(KEYS).reset_index(drop=True)
    assert len(want) > 100
    pd.testing.assert_frame_equal(pred[KEYS], want, check_dtype=False)
    assert pred["p_act"].between(0, 1).all() and pred["action_type"].notna().all()
    assert (pred["flight_id"] == np.where(pred["aircraft"] == 0, pred["flight_id_1"], pred["flight_id_2"])).all()
    saved = json.loads((out / P.REPORT_FILE).read_text())
    assert saved["partitions_done"] == 3 and saved["partitions_failed"] == 0
    assert saved["track_points"] == len(tracks) and saved["predictions"] == len(pred)
    assert saved["conflict_steps"] == int(c["conflict"].sum()) and saved["points_per_s"] > 0


def test_local_model_loaded_once_per_process(ws, uri, tmp_path):
    P._PREDICTORS.clear()
    before = P.load_count()
    rep = P.run(ws / "tracks", tmp_path / "out", uri)
    assert rep["partitions_done"] == 3 and P.load_count() - before == 1


def test_dask_local_cluster_equals_in_process_and_loads_once_per_worker(ws, uri, local_out, tmp_path):
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        rep = P.run(ws / "tracks", tmp_path / "out", uri, engine="dask", scheduler=cluster.scheduler_address,
                    clearances=ws / "actions")
        loads = client.run(P.load_count)
    assert rep["engine"] == "dask" and rep["partitions_done"] == 3
    worker_pids = {r["pid"] for r in rep["per_partition"]}
    assert os.getpid() not in worker_pids                    # the work ran in the worker processes
    assert set(loads.values()) <= {0, 1} and sum(loads.values()) == len(worker_pids)
    _assert_same(_read(tmp_path / "out"), _read(local_out[0]))


def test_rerun_skips_finished_and_redoes_broken(ws, uri, tmp_path):
    out = tmp_path / "out"
    P.run(ws / "tracks", out, uri)
    parts = sorted(p.parent for p in out.rglob("part-0.parquet"))
    first = _read(out)
    mtimes = {p: (p / "part-0.parquet").stat().st_mtime_ns for p in parts}
    broken = parts[1]
    (broken / MARKER).unlink()                               # as if killed between write and marker
    (broken / ".tmp-abc.parquet").write_bytes(b"half a file")
    rep = P.run(ws / "tracks", out, uri)
    assert (rep["partitions_skipped"], rep["partitions_done"]) == (2, 1)
    assert [r["key"] for r in rep["per_partition"]] == [broken.relative_to(out).as_posix()]
    for p in parts:
        same = (p / "part-0.parquet").stat().st_mtime_ns == mtimes[p]
        assert same == (p != broken)
    assert (broken / MARKER).exists() and not list(broken.glob(".tmp-*"))
    _assert_same(_read(out), first)
    assert P.run(ws / "tracks", out, uri)["partitions_skipped"] == 3


def test_corrupt_partition_is_reported_and_the_others_complete(ws, uri, tmp_path):
    from typer.testing import CliRunner

    from atc_il_cli.cli import app
    tracks = tmp_path / "tracks"
    shutil.copytree(ws / "tracks", tracks)
    last = sorted(tracks.glob("day=*"))[-1]
    next(last.glob("*.parquet")).write_bytes(b"PAR1 this is not parquet")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["predict", "--model", uri, "--tracks", str(tracks), "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert last.name in res.output and "failed" in res.output
    rep = json.loads((out / P.REPORT_FILE).read_text())
    assert (rep["partitions_done"], rep["partitions_failed"]) == (2, 1)
    assert "not a readable" in rep["failed"][last.name]
    assert not (out / last.name / "part-0.parquet").exists() and not (out / last.name / MARKER).exists()
    assert all((out / p.name / MARKER).exists() for p in sorted(tracks.glob("day=*"))[:-1])


def _across_midnight(ws, predictor, root: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]:
    """Day 1 shifted so that midnight falls in its busiest minute of long conflict runs; written by day."""
    tracks = read_table(ws / "tracks" / sorted(p.name for p in (ws / "tracks").glob("day=*"))[0], TRACK_SCHEMA)
    c = predictor.detect(tracks)
    c = c[c["conflict"] & (c["time"] - c["first_detection"] > pd.Timedelta(seconds=300))]
    cut = c["time"].value_counts().idxmax()                  # many runs older than 5 min going on here
    shift = cut.floor("D") + pd.Timedelta(days=1) - cut
    tracks["time"] += shift
    acts = read_table(ws / "actions", ACTION_SCHEMA)
    acts["time"] += shift
    write_partitioned(tracks, TRACK_SCHEMA, root, what="tracks")
    return tracks, acts, cut + shift


def test_decisions_at_the_start_of_a_day_equal_processing_both_days_at_once(ws, uri, tmp_path):
    predictor = P.get_predictor(uri)
    tracks, acts, midnight = _across_midnight(ws, predictor, tmp_path / "tracks")
    assert len(list((tmp_path / "tracks").glob("day=*"))) == 2
    rep = P.run(tmp_path / "tracks", tmp_path / "out", uri, clearances=acts)
    assert rep["partitions_done"] == 2
    split = _read(tmp_path / "out")
    whole = P.predict_partition(tracks, predictor, acts)
    _assert_same(split, whole)
    start = split[split["time"] < midnight + pd.Timedelta(minutes=2)]
    assert (start["time"] >= midnight).sum() > 10
    # the check has teeth: with only the H-1 previous steps, runs that began earlier get another
    # time-in-conflict, and the decisions change
    h = pd.Timedelta(seconds=(predictor.dcfg.history_steps - 1) * predictor.step_s)
    naive = P.predict_partition(tracks[tracks["time"] >= midnight - h], predictor, acts, start=midnight)
    naive = naive[naive["time"] < midnight + pd.Timedelta(minutes=2)].reset_index(drop=True)
    ok = start[start["time"] >= midnight].reset_index(drop=True)
    assert (naive[KEYS] == ok[KEYS]).all().all()
    assert np.abs(naive["p_act"] - ok["p_act"]).max() > 1e-4


def test_onnx_runtime_and_sub_batches_give_the_same_decisions_as_pytorch_in_one_pass(ws, uri):
    """The fast path (context network on ONNX Runtime, passes of ENCODE_BATCH rows) decides as PyTorch does
    on a whole chunk in one pass: same aircraft, type and act; p_act and value within float32 rounding."""
    from models import serving
    tracks = read_table(ws / "tracks", TRACK_SCHEMA)
    acts = read_table(ws / "actions", ACTION_SCHEMA)
    torch_pred = P.Predictor.from_uri(uri)
    big = serving.ENCODE_BATCH
    try:
        serving.ENCODE_BATCH = 1 << 30                      # the old path: one pass per chunk
        ref = P.predict_partition(tracks, torch_pred, acts, runtime="torch")
    finally:
        serving.ENCODE_BATCH = big
    fast_pred = P.Predictor.from_uri(uri)
    fast = P.predict_partition(tracks, fast_pred, acts, chunk=1000, runtime="auto")
    assert fast_pred.runtime == "onnxruntime" and len(ref) > 3 * big
    for c in ("time", "flight_id_1", "flight_id_2", "act", "aircraft", "flight_id", "action_type", "unit"):
        assert (fast[c].to_numpy() == ref[c].to_numpy()).all(), c
    for c in ("p_act", "value", "tcpa_s", "dcpa_nm"):
        np.testing.assert_allclose(fast[c].to_numpy(), ref[c].to_numpy(), rtol=1e-4, atol=1e-4, err_msg=c)
    with pytest.raises(Exception, match="unknown runtime"):
        P.predict_partition(tracks, fast_pred, acts, runtime="tpu")


def test_off_grid_tracks_are_resampled_onto_the_model_grid(ws, uri):
    predictor = P.get_predictor(uri)
    tracks = read_table(ws / "tracks" / sorted(p.name for p in (ws / "tracks").glob("day=*"))[0], TRACK_SCHEMA)
    shifted = tracks.assign(time=tracks["time"] + pd.Timedelta(seconds=1))
    assert not P.on_grid(shifted, predictor.step_s)
    dec = P.predict_partition(shifted, predictor)
    assert len(dec) > 0 and (dec["time"].dt.second % 5 == 0).all()


def test_a_coarser_grid_is_not_the_model_grid(ws, uri):
    step = P.get_predictor(uri).step_s
    tracks = read_table(ws / "tracks" / sorted(p.name for p in (ws / "tracks").glob("day=*"))[0], TRACK_SCHEMA)
    assert P.on_grid(tracks, step)
    assert not P.on_grid(tracks[tracks["time"].dt.second % 10 == 0], step)


def test_killed_predict_reruns_to_the_uninterrupted_output_with_cumulative_totals(ws, uri, local_out, tmp_path):
    import signal
    import subprocess
    import sys

    from atc_il.runs import RUN_RECORD
    out = tmp_path / "out"
    env = {**os.environ, "ATC_IL_KILL_AT": "predict:1"}
    proc = subprocess.run([sys.executable, "-m", "atc_il_cli.cli", "predict", "--model", uri, "--tracks", str(ws / "tracks"),
                           "--out", str(out), "--clearances", str(ws / "actions"), "-w", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(list(out.rglob("part-0.parquet"))) == 1 and not (out / RUN_RECORD).exists()   # not complete
    rep = P.run(ws / "tracks", out, uri, clearances=ws / "actions")
    assert (rep["partitions_skipped"], rep["partitions_done"]) == (1, 2)
    assert (out / RUN_RECORD).exists()
    _assert_same(_read(out), _read(local_out[0]))
    cum = json.loads((out / P.REPORT_FILE).read_text())["cumulative"]
    assert cum["predictions"] == local_out[1]["predictions"] == len(_read(out)) and cum["partitions_done"] == 3
    assert cum["conflict_steps"] == local_out[1]["conflict_steps"]


def test_hour_partitions_from_ingest_give_the_same_decisions_as_day_partitions(ws, uri, local_out, tmp_path):
    """`atc-il ingest --partition hour` (many small tasks for many workers): every hour is its own partition, and
    batch prediction over them, each reading the previous hour's history, decides as over day partitions."""
    from pipelines.ingest import ingest
    rep = ingest(sorted((ws / "raw").glob("opensky_day*.csv")), tmp_path / "w", fmt="opensky", partition="hour",
                 progress=False)
    hours = sorted(p.parent.relative_to(tmp_path / "w" / "tracks").as_posix()
                   for p in (tmp_path / "w" / "tracks").rglob(MARKER))
    assert rep.points_out > 0 and len(hours) >= 3 and all("/hour=" in h for h in hours)
    pd.testing.assert_frame_equal(read_table(tmp_path / "w" / "tracks", TRACK_SCHEMA).sort_values(["flight_id", "time"])
                                  .reset_index(drop=True),
                                  read_table(ws / "tracks", TRACK_SCHEMA).sort_values(["flight_id", "time"])
                                  .reset_index(drop=True))
    out = tmp_path / "pred"
    by_hour = P.run(tmp_path / "w" / "tracks", out, uri, clearances=ws / "actions")
    assert by_hour["partitions_done"] == len(hours) and by_hour["partitions_failed"] == 0
    _assert_same(_read(out), _read(local_out[0]))
    with pytest.raises(Exception, match="partition"):
        ingest(sorted((ws / "raw").glob("opensky_day*.csv")), tmp_path / "w2", fmt="opensky", partition="week")


# ------------------------------------------------------------------ en-route focus
def _low_runs(tracks: pd.DataFrame, c: pd.DataFrame) -> tuple[float, pd.DataFrame]:
    """A floor between the lowest and the next-lowest conflict run (the lower aircraft's altitude at first
    detection, read straight off the grid), and the conflict steps of the runs below it."""
    steps = c[c["conflict"]]
    runs = steps[["flight_id_1", "flight_id_2", "first_detection"]].drop_duplicates()
    alt = tracks.set_index(["flight_id", "time"])["alt_ft"]
    low = np.minimum(*(alt.reindex(pd.MultiIndex.from_arrays([runs[f"flight_id_{i}"], runs["first_detection"]]))
                       .to_numpy() for i in (1, 2)))
    assert not np.isnan(low).any()
    lowest, nxt = np.unique(low)[:2]
    floor = float((lowest + nxt) / 2)
    below = runs[low < floor]
    return floor, steps.merge(below, on=["flight_id_1", "flight_id_2", "first_detection"])


def test_en_route_floor_leaves_out_low_conflicts_counted_and_predicts_the_others_as_without_it(ws, uri, local_out,
                                                                                                tmp_path):
    from typer.testing import CliRunner

    from atc_il.runs import RUN_RECORD
    from atc_il_cli.cli import app
    tracks = read_table(ws / "tracks", TRACK_SCHEMA)
    floor, low = _low_runs(tracks, P.get_predictor(uri).detect(tracks))
    assert 0 < low[["flight_id_1", "flight_id_2"]].drop_duplicates().shape[0] <= 2
    cfg = tmp_path / "enroute.yaml"
    cfg.write_text(f"enroute: {{min_alt_ft: {floor}}}\n")          # the --config section, as the other stages
    out = tmp_path / "out"
    args = ["predict", "--model", uri, "--tracks", str(ws / "tracks"), "--out", str(out),
            "--clearances", str(ws / "actions")]
    res = CliRunner().invoke(app, [*args, "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / P.REPORT_FILE).read_text())
    everything = local_out[1]
    # the low conflict's steps are left out and counted, by reason
    assert rep["enroute"] == {"min_alt_ft": floor, "airspace": None, "sector": None}
    assert rep["conflict_steps_left_out"] == len(low) > 0
    assert rep["conflict_steps_left_out_by_reason"] == {"below_floor": len(low)}
    assert rep["conflict_steps"] + rep["conflict_steps_left_out"] == everything["conflict_steps"]
    assert rep["cumulative"]["conflict_steps_left_out_by_reason"] == {"below_floor": len(low)}
    assert json.loads((out / RUN_RECORD).read_text())["conflict_steps_left_out"] == len(low)
    assert f"en-route focus (min_alt_ft={floor})" in res.output and f"conflict_steps_left_out={len(low)}" in res.output
    # the others are predicted exactly as without the filter
    pred, full = _read(out), _read(local_out[0])
    gone = full.merge(low[KEYS], on=KEYS, how="left", indicator=True)["_merge"].eq("both").to_numpy()
    assert gone.sum() > 0 and len(pred) == rep["predictions"] == everything["predictions"] - gone.sum()
    _assert_same(pred, full[~gone])
    # a rerun with other settings does not reuse the finished partitions: refused, naming the setting
    parts = {p: p.stat().st_mtime_ns for p in out.rglob("part-0.parquet")}
    res = CliRunner().invoke(app, [*args, "--min-alt-ft", str(floor + 1000)])
    assert res.exit_code == 2 and "--min-alt-ft" in res.output and "en-route" in res.output, res.output
    with pytest.raises(Exception, match=f"--min-alt-ft {floor} there, --min-alt-ft None now"):
        P.run(ws / "tracks", out, uri, clearances=ws / "actions")          # nor without a floor
    with pytest.raises(Exception, match="--min-alt-ft None there"):
        P.run(ws / "tracks", local_out[0], uri, enroute={"min_alt_ft": floor})   # nor a floor over an unfiltered output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("part-0.parquet")} == parts
    # the same settings reuse them, with the counts of the run that made them
    again = P.run(ws / "tracks", out, uri, clearances=ws / "actions", enroute={"min_alt_ft": floor})
    assert again["partitions_skipped"] == 3 and again["cumulative"]["conflict_steps_left_out"] == len(low)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("part-0.parquet")} == parts


def test_reuse_guard_compares_the_airspace_polygon_and_reads_outputs_from_before_the_focus(uri, tmp_path):
    predictor = P.get_predictor(uri)
    out = tmp_path / "out"
    out.mkdir()
    P._check_model(out, predictor)
    meta = json.loads((out / P.MODEL_FILE).read_text())
    (out / P.MODEL_FILE).write_text(json.dumps({k: v for k, v in meta.items() if k != "enroute"}))   # an older output
    P._check_model(out, predictor, P.enroute_settings(P.enroute_filter(None)))
    square = {"type": "Polygon", "coordinates": [[[0, 40], [20, 40], [20, 60], [0, 60], [0, 40]]]}
    sector = tmp_path / "sector.geojson"
    sector.write_text(json.dumps(square))
    with pytest.raises(Exception, match="--airspace None there, --airspace .*sector.geojson"):
        P._check_model(out, predictor, P.enroute_settings(P.enroute_filter({"airspace": str(sector)})))
    out2 = tmp_path / "out2"
    out2.mkdir()
    P._check_model(out2, predictor, P.enroute_settings(P.enroute_filter({"airspace": str(sector)})))
    square["coordinates"][0][1] = [21, 40]                                   # the same file, edited
    sector.write_text(json.dumps(square))
    with pytest.raises(Exception, match=r"--airspace .*sector.geojson \(sha256 [0-9a-f]{12}\) there"):
        P._check_model(out2, predictor, P.enroute_settings(P.enroute_filter({"airspace": str(sector)})))


def test_predict_help_lists_the_en_route_options():
    from typer.testing import CliRunner

    from atc_il_cli.cli import app
    res = CliRunner().invoke(app, ["predict", "--help"])
    assert res.exit_code == 0
    for opt in ("--min-alt-ft", "--airspace", "--sector", "--config"):
        assert opt in res.output, opt
