"""The CLI: every stage has --help, errors are one line, and the quickstart runs the whole chain."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from atc_il_cli.cli import app
from pipelines.shards import load_split, read_spec

runner = CliRunner()


@pytest.mark.parametrize("cmd", ["ingest", "conflicts", "actions", "dataset", "sample", "quickstart"])
def test_every_stage_has_help(cmd):
    res = runner.invoke(app, [cmd, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output


def test_bad_config_is_one_line_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("conflicts: {rpz_nm: -5}\n")
    res = runner.invoke(app, ["conflicts", "-w", str(tmp_path), "--config", str(cfg)])
    assert res.exit_code == 2
    lines = [s for s in res.output.splitlines() if s.strip()]
    assert len(lines) == 1 and "conflicts.rpz_nm" in lines[0] and "Traceback" not in res.output


def test_unreadable_input_names_the_file(tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"not a parquet file")
    res = runner.invoke(app, ["ingest", str(bad), "-w", str(tmp_path / "ws")])
    assert "broken.parquet" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_quickstart_runs_the_whole_chain(tmp_path):
    ws = tmp_path / "ws"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}   # the embedded default store
    # fewer scenarios and epochs than the default (the suite's time): the chain, not the model's quality
    # (that is measured by bench/fidelity.py and the quickstart figures in bench/RESULTS.md)
    proc = subprocess.run([sys.executable, "-m", "atc_il_cli.cli", "quickstart", "-w", str(ws), "--scenarios", "6",
                           "--loop-scenarios", "2", "--epochs", "4"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for what in ("radar tracks:", "simulated", "trained", "offline evaluation", "closed loop", "report", "atc-il serve"):
        assert what in proc.stdout, what
    report = json.loads((ws / "radar" / "ingest_report.json").read_text())
    assert report["rows_in"] == report["rows_kept"] + report["rows_quarantined"] > 30000
    train = load_split(ws / "sim" / "dataset", "train")
    spec = read_spec(ws / "sim" / "dataset")
    assert train["pair"].shape[1:] == (24, 2, 10) and len(train["label_act"]) == spec["splits"]["train"]["samples"]
    assert int(train["label_act"].sum()) > 0
    assert (ws / "mlflow.db").exists() and (ws / "eval" / "metrics.json").exists()
    assert json.loads((ws / "simeval" / "results.json").read_text())["results"]
    assert "Closed loop" in (ws / "report" / "index.html").read_text()
