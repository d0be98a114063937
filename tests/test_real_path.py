"""The README's real-data path (tracks, no clearance log) on a tiny file in the format of traffic's bundled
samples (pandas JSON, gzip): ingest -> conflicts -> inferred actions -> observation histories -> train ->
batch prediction, run as the README writes it, in seconds."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from atc_il.geometry import from_local_nm
from atc_il_cli.cli import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Real radar without a clearance log (traffic's switzerland sample)"
SAMPLE = "switzerland.json.gz"
T0 = pd.Timestamp("2018-08-01T06:00:00")          # naive, as in traffic's samples (UTC)
HOURS = 4                                         # --split hour needs 3 hours at least (train, val, test)


def _flight(icao: str, callsign: str, t0: pd.Timestamp, x0: float, y0: float, trk0: float, turn_at_s: float | None,
            turn_deg: float, alt_ft: float, n: int = 97, dt: float = 10.0, gs_kt: float = 450.0) -> pd.DataFrame:
    """One flight sampled every ``dt`` s like traffic's collections, turning by ``turn_deg`` at 3 deg/s."""
    t = np.arange(n) * dt
    trk = np.full(n, trk0)
    if turn_at_s is not None:
        trk = trk0 + np.clip((t - turn_at_s) * 3.0 * np.sign(turn_deg), min(0, turn_deg), max(0, turn_deg))
    step = gs_kt * dt / 3600.0
    x = x0 + np.r_[0.0, np.cumsum(step * np.sin(np.radians(trk[:-1])))]
    y = y0 + np.r_[0.0, np.cumsum(step * np.cos(np.radians(trk[:-1])))]
    lat, lon = from_local_nm(x, y, 47.0, 8.0)
    return pd.DataFrame({"timestamp": t0 + pd.to_timedelta(t, unit="s"), "icao24": icao, "callsign": callsign,
                         "latitude": lat, "longitude": lon, "altitude": np.round(alt_ft / 25) * 25,
                         "groundspeed": gs_kt, "track": trk % 360.0, "vertical_rate": 0.0})


def write_sample(path: Path) -> pd.DataFrame:
    """Per hour, two crossing pairs at FL350 and FL370 (one aircraft of each turns 30 degrees 3 min in, before
    their closest approach at 8 min), an aircraft on the ground (no altitude, as ADS-B surface reports) and a
    forward-filled (stale) position; columns and encoding as traffic's samples (pandas JSON, gzip)."""
    parts = []
    for h in range(HOURS):
        t0 = T0 + pd.Timedelta(hours=h)
        for k, alt in enumerate((35000.0, 37000.0)):
            parts.append(_flight(f"a{h}{k}0001", f"EAST{h}{k}", t0, -60.0, 2.0 * k, 90.0, 180.0, -30.0, alt))
            parts.append(_flight(f"b{h}{k}0002", f"NRTH{h}{k}", t0, 0.0, -60.0 + 2.0 * k, 0.0, None, 0.0, alt))
        ground = _flight(f"c{h}00003", f"GRND{h}", t0, 30.0, 30.0, 90.0, None, 0.0, 1400.0, n=6, gs_kt=15.0)
        parts.append(ground.assign(altitude=np.nan))
    df = pd.concat(parts, ignore_index=True)
    df["onground"] = df["callsign"].str.startswith("GRND")
    stale = df.index[df["callsign"].eq("NRTH00")][40]
    df.loc[stale, ["latitude", "longitude"]] = df.loc[stale - 1, ["latitude", "longitude"]].to_numpy()
    df.to_json(path, orient="columns", date_format="epoch", date_unit="ms")   # traffic's samples: ms epochs
    return df


def readme_chain() -> list[str]:
    """The commands of the README section's chain block (the bash block whose lines all run atc-il)."""
    text = README.read_text()
    assert SECTION in text, f"README lacks the section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        lines = [c.split("#", 1)[0].strip() for c in block.replace("\\\n", " ").splitlines()]
        lines = [c for c in lines if c]
        if lines and all(c.startswith("atc-il ") for c in lines):
            return lines
    raise AssertionError("the README section has no bash block of atc-il commands")


def test_the_sample_fixture_reads_like_traffics_collections(tmp_path):
    df = write_sample(tmp_path / SAMPLE)
    back = pd.read_json(tmp_path / SAMPLE)
    assert list(back.columns) == list(df.columns) and len(back) == len(df)
    assert pd.api.types.is_datetime64_any_dtype(back["timestamp"])


def test_readme_real_path_runs_as_written_on_a_tiny_sample(tmp_path, monkeypatch):
    cmds = readme_chain()
    assert [c.split()[1] for c in cmds] == ["ingest", "conflicts", "actions", "dataset", "train", "predict"]
    write_sample(tmp_path / SAMPLE)
    monkeypatch.chdir(tmp_path)
    ws = tmp_path / "swiss"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{ws / 'mlflow.db'}")   # predict sets it otherwise
    for cmd in cmds:
        args = shlex.split(cmd)[1:]
        assert SAMPLE in cmd or args[0] != "ingest"
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (cmd, res.output[-3000:])
        if args[0] == "ingest":
            rep = json.loads((ws / "ingest_report.json").read_text())
            q = rep["quarantined_by_reason"]
            assert rep["rows_in"] == rep["rows_kept"] + rep["rows_quarantined"] + rep["rows_merged"]
            assert q["on_ground"] == 6 * HOURS and q["missing_required"] == 0 and q["stale_position"] == 1
            assert "on_ground 24" in res.output                     # the reasons are on the terminal too
        elif args[0] == "conflicts":
            assert "episodes" in res.output
        elif args[0] == "actions":
            summary = json.loads((ws / "actions_summary.json").read_text())
            assert summary["actions_by_type"].get("heading", 0) >= 2 * HOURS and summary["logged_actions"] == 0
            assert "actions_by_type" in res.output
        elif args[0] == "dataset":
            report = json.loads((ws / "dataset" / "dataset_report.json").read_text())
            assert report["train samples"] and report["val samples"] and report["test samples"]
            assert report["positive samples"] > 0 and "split_warning" not in report
    pred = json.loads((ws / "predictions" / "predict_report.json").read_text())
    assert pred["partitions_failed"] == 0 and pred["predictions"] > 0


def test_the_learned_detector_reads_the_same_workspace(tmp_path):
    write_sample(tmp_path / SAMPLE)
    ws = tmp_path / "w"
    for args in (["ingest", str(tmp_path / SAMPLE), "-w", str(ws)], ["conflicts", "-w", str(ws)],
                 ["actions", "-w", str(ws), "--detector", "learned"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (args, res.output[-3000:])
    summary = json.loads((ws / "actions_summary.json").read_text())
    assert summary["detector"] == "learned" and summary["inferred_actions"] >= 1


def test_one_day_split_by_day_warns_and_train_names_the_way_out(tmp_path, monkeypatch):
    write_sample(tmp_path / SAMPLE)
    ws = tmp_path / "w"
    for args in (["ingest", str(tmp_path / SAMPLE), "-w", str(ws)], ["conflicts", "-w", str(ws)],
                 ["actions", "-w", str(ws)]):
        assert runner.invoke(app, args).exit_code == 0
    res = runner.invoke(app, ["dataset", "-w", str(ws)])
    assert res.exit_code == 0 and "--split hour" in res.output
    assert "val and test split(s) are empty" in json.loads((ws / "dataset" / "dataset_report.json").read_text())[
        "split_warning"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{ws / 'mlflow.db'}")
    res = runner.invoke(app, ["train", "--config", "tiny", "-w", str(ws), "--epochs", "1"])
    assert res.exit_code == 2 and "split 'val' has no shards" in res.output and "--split hour" in res.output
