"""The CLI: every stage has --help, errors are one line, and the quickstart runs the whole chain."""

import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_unknown_surveillance_is_one_line_error_and_writes_nothing(tmp_path):
    res = runner.invoke(app, ["simulate", "-n", "1", "--surveillance", "bogus", "--out", str(tmp_path / "sim")])
    lines = [s for s in res.output.splitlines() if s.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and "--surveillance" in lines[0] and "Traceback" not in res.output
    assert not (tmp_path / "sim").exists()


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
    from api.security import check_keys, load_api_keys
    hint = next(line for line in proc.stdout.splitlines() if "atc-il serve" in line)
    assert "change-me" not in hint and f"--api-key-file {ws / 'api_keys.txt'}" in hint
    assert check_keys(load_api_keys(ws / "api_keys.txt", env={}))    # the service accepts the key the hint names


def _all_commands(group, path=()):
    import click
    for name, cmd in sorted(group.commands.items()):
        yield path + (name,)
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, path + (name,))


def test_help_of_every_command_and_subcommand():
    import typer.main
    root = typer.main.get_command(app)
    commands = list(_all_commands(root))
    assert {("predict",), ("serve",), ("ingest",)} <= set(commands)
    for cmd in [()] + commands:
        res = runner.invoke(app, [*cmd, "--help"])
        assert res.exit_code == 0 and "Usage" in res.output and res.exception is None, (cmd, res.output[-500:])


def _readme_pipeline_commands() -> list[str]:
    import re
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## The pipeline, stage by stage", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's pipeline section has no bash block"
    return [c.strip() for c in blocks[0].replace("\\\n", " ").splitlines() if c.strip()]


def test_readme_pipeline_commands_run_as_written(tmp_path):
    """The README's pipeline block, run by bash as written, on a one-day sample (the one substitution)."""
    cmds = _readme_pipeline_commands()
    assert [c.split()[1] for c in cmds] == ["sample", "ingest", "conflicts", "actions", "dataset"]
    cmds[0] = cmds[0].replace(" -w workspace", " -w workspace --days 1", 1)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for cmd in cmds:
        proc = subprocess.run(["bash", "-c", f"set -e; {cmd}"], cwd=tmp_path, capture_output=True, text=True,
                              env=env, timeout=300)
        assert proc.returncode == 0, (cmd, proc.stderr[-2000:])
    for out in ("tracks", "conflicts", "actions", "action_links", "dataset"):
        assert (tmp_path / "workspace" / out / "_RUN_COMPLETE.json").exists(), out


def test_summary_tables_show_counts_by_reason_and_type(tmp_path):
    import pandas as pd
    rows = [{"time": 1_709_287_200 + 5 * i, "flight_id": "A", "lat_deg": 50.0 + 0.01 * i, "lon_deg": 5.0,
             "alt_ft": 30000.0} for i in range(10)]
    rows[3]["alt_ft"] = None
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    res = runner.invoke(app, ["ingest", str(tmp_path / "t.csv"), "-w", str(tmp_path / "ws")])
    assert res.exit_code == 0, res.output
    line = next(s for s in res.output.splitlines() if "quarantined_by_reason" in s)
    assert "missing_required 1" in line and "on_ground" not in line      # zero counts are left out
    from atc_il_cli.cli import _counts
    assert _counts({"heading": 3, "speed": 0, "altitude": 5}) == "altitude 5, heading 3"
    assert _counts({"a": 0}) == "0" and _counts({}) is None and _counts({"f": "text"}) is None
