"""Nothing lost when a run is mistyped or killed: staged outputs, run-level completion records,
downstream refusal of interrupted output, and reruns identical to uninterrupted runs (atc_il/runs.py).

A stage is killed for real: a child process runs `atc-il <stage>` with ATC_IL_KILL_AT=<stage>:<n>, which
makes it SIGKILL itself at its n-th checkpoint (after a file, a bucket, an output folder or a shard)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from atc_il.config import PipelineConfig
from atc_il.errors import ConfigError, DataError
from atc_il.runs import RUN_RECORD
from pipelines import actions, conflicts
from pipelines.dataset import build
from pipelines.ingest import ingest
from pipelines.sample import SampleSpec, make_sample

ROOT = Path(__file__).resolve().parents[1]
SPEC = SampleSpec(days=2, hours_per_day=0.5, background_per_hour=8, conflicts_per_hour=8)


def _cli(args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ATC_IL_KILL_AT": kill_at} if kill_at else {k: v for k, v in os.environ.items()
                                                                      if k != "ATC_IL_KILL_AT"}
    return subprocess.run([sys.executable, "-m", "atc_il_cli.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)


def _tables(folder: Path) -> dict[str, pd.DataFrame]:
    """Every parquet file under ``folder`` by relative path (the bytes' content, not their timing)."""
    return {p.relative_to(folder).as_posix(): pd.read_parquet(p) for p in sorted(folder.rglob("*.parquet"))}


def _assert_same_output(a: Path, b: Path) -> None:
    ta, tb = _tables(a), _tables(b)
    assert sorted(ta) == sorted(tb)
    for k in ta:
        pd.testing.assert_frame_equal(ta[k], tb[k], check_like=False)


def _stages(ws: Path, raw: dict, upto: str) -> None:
    cfg = PipelineConfig()
    ingest([Path(p) for p in raw["track_files"]], ws, fmt="opensky", progress=False)
    if upto == "ingest":
        return
    conflicts.run(ws / "tracks", ws, cfg.conflicts, progress=False)
    if upto == "conflicts":
        return
    actions.run(ws / "tracks", ws, cfg.actions, log=Path(raw["clearance_log"]), episodes_dir=ws / "episodes")
    if upto == "actions":
        return
    build(ws, None, cfg, progress=False)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict:
    return make_sample(tmp_path_factory.mktemp("raw"), SPEC)


@pytest.fixture(scope="module")
def reference(raw, tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("reference")
    _stages(ws, raw, "dataset")
    return ws


def _args(stage: str, ws: Path, raw: dict) -> list[str]:
    return {"ingest": ["ingest", *raw["track_files"], "-w", str(ws), "--format", "opensky"],
            "conflicts": ["conflicts", "-w", str(ws)],
            "actions": ["actions", "-w", str(ws), "--log", raw["clearance_log"]],
            "dataset": ["dataset", "-w", str(ws)]}[stage]


DOWNSTREAM = {"ingest": lambda ws: conflicts.run(ws / "tracks", ws),
              "conflicts": lambda ws: actions.run(ws / "tracks", ws, episodes_dir=ws / "episodes"),
              "actions": lambda ws: build(ws, None, PipelineConfig(), progress=False),
              "dataset": lambda ws: __import__("pipelines.shards", fromlist=["x"]).read_spec(ws / "dataset")}
OUTPUTS = {"ingest": ["tracks", "quarantine"], "conflicts": ["conflicts", "episodes"],
           "actions": ["actions", "action_links"], "dataset": ["dataset"]}
RERUN = {"ingest": lambda ws, raw: ingest(raw["track_files"], ws, fmt="opensky", progress=False),
         "conflicts": lambda ws, raw: conflicts.run(ws / "tracks", ws),
         "actions": lambda ws, raw: actions.run(ws / "tracks", ws, log=Path(raw["clearance_log"]),
                                                episodes_dir=ws / "episodes"),
         "dataset": lambda ws, raw: build(ws, None, PipelineConfig(), progress=False)}
BEFORE = {"ingest": None, "conflicts": "ingest", "actions": "conflicts", "dataset": "actions"}


@pytest.mark.parametrize("stage,at,previous", [("ingest", 1, False), ("ingest", 3, True), ("conflicts", 1, True),
                                               ("conflicts", 2, False), ("actions", 1, False), ("dataset", 1, True)])
def test_killed_stage_is_refused_downstream_and_a_rerun_equals_an_uninterrupted_run(
        stage, at, previous, raw, reference, tmp_path):
    ws = tmp_path / "ws"
    if BEFORE[stage] or previous:
        _stages(ws, raw, stage if previous else BEFORE[stage])
    before = {n: _tables(ws / n) for n in OUTPUTS[stage] if (ws / n).exists()}
    proc = _cli(_args(stage, ws, raw), kill_at=f"{stage}:{at}")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert list(ws.glob(f".staging-{stage}-*"))                        # the killed run's leftovers
    for n, tables in before.items():                                    # the previous complete output is intact
        assert sorted(_tables(ws / n)) == sorted(tables)
    if not previous:
        assert not any((ws / n).exists() for n in OUTPUTS[stage])       # nothing that looks complete
    with pytest.raises(DataError, match=f"interrupted.*rerun `atc-il {stage}`"):
        DOWNSTREAM[stage](ws)
    RERUN[stage](ws, raw)
    assert not list(ws.glob(".staging-*")) and not list(ws.glob(".old-*"))
    for n in OUTPUTS[stage]:
        assert (ws / n / RUN_RECORD).exists()
        _assert_same_output(ws / n, reference / n)


def test_cli_refuses_downstream_of_an_interrupted_stage_in_one_line(raw, tmp_path):
    ws = tmp_path / "ws"
    _stages(ws, raw, "ingest")
    assert _cli(_args("conflicts", ws, raw), kill_at="conflicts:1").returncode == -signal.SIGKILL
    proc = _cli(_args("actions", ws, raw))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "atc-il conflicts" in lines[0]


def test_mistyped_input_and_inputs_inside_the_output_leave_the_workspace_untouched(raw, reference, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(reference, ws)
    tracks = _tables(ws / "tracks")
    with pytest.raises(DataError, match="none of the 1 input"):
        ingest([tmp_path / "typo.csv"], ws, progress=False)
    assert sorted(_tables(ws / "tracks")) == sorted(tracks) and (ws / "tracks" / RUN_RECORD).exists()
    for inside in (ws / "tracks", next((ws / "tracks").rglob("*.parquet")), ws / "quarantine"):
        with pytest.raises(ConfigError, match="inside ingest's own output"):
            ingest([inside], ws, progress=False)
    with pytest.raises(ConfigError, match="holds ingest's own output"):
        ingest([ws], ws, progress=False)
    assert sorted(_tables(ws / "tracks")) == sorted(tracks)
    proc = _cli(["ingest", str(tmp_path / "typo.csv"), "-w", str(ws)])
    assert proc.returncode != 0 and "typo.csv" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ bad bytes, loose checks, exit codes
def _opensky_rows(n=30, t0=1709280000, fid="abc123") -> list[str]:
    rows = ["time,icao24,lat,lon,baroaltitude,velocity,heading,vertrate,callsign"]
    rows += [f"{t0 + i * 5},{fid},{50 + i * 0.001},{4 + i * 0.001},10000,200,90,0,KLM{i}" for i in range(n)]
    return rows


def test_undecodable_bytes_quarantine_the_row_not_the_file_and_a_bom_is_harmless(tmp_path):
    data = "\n".join(_opensky_rows()).encode().replace(b"KLM5", b"KL\xff\xfe5")
    (tmp_path / "x.csv").write_bytes(b"\xef\xbb\xbf" + data + b"\n")
    rep = ingest([tmp_path / "x.csv"], tmp_path / "ws", progress=False)
    assert rep.rows_in == 30 == rep.rows_kept + rep.rows_quarantined and rep.rows_quarantined == 1
    q = pd.read_parquet(tmp_path / "ws" / "quarantine")
    assert q["reason"].tolist() == ["unparseable"]
    assert "data row 6" in q["detail"][0] and "field callsign" in q["detail"][0] and r"\xff\xfe" in q["detail"][0]
    assert q["file"][0] == str(tmp_path / "x.csv")


def test_implausible_times_and_tracks_are_quarantined_with_their_reason(tmp_path):
    rows = _opensky_rows()
    rows[3] = rows[3].replace("1709280010", "0", 1)                        # 1970
    rows[4] = rows[4].replace("1709280015", "4102444800", 1)               # 2100
    rows[8] = rows[8].replace(",90,0,", ",720,0,")
    rows[9] = rows[9].replace(",90,0,", ",-90,0,")                          # a sign convention: wrapped to 270
    (tmp_path / "x.csv").write_text("\n".join(rows) + "\n")
    rep = ingest([tmp_path / "x.csv"], tmp_path / "ws", progress=False, resample=False)
    assert rep.quarantined_by_reason["implausible_time"] == 2 and rep.quarantined_by_reason["out_of_range"] == 1
    q = pd.read_parquet(tmp_path / "ws" / "quarantine").set_index("reason")
    assert "1970-01-01" in q.loc["implausible_time", "detail"].iloc[0]
    assert "trk_deg=720" in q.loc["out_of_range", "detail"]
    assert not list((tmp_path / "ws" / "tracks").glob("day=1970*")) and not list((tmp_path / "ws" / "tracks").glob("day=2100*"))


def test_exit_code_is_non_zero_when_every_row_is_quarantined_or_a_file_failed(tmp_path):
    rows = [r.replace(",10000,", ",999999,") for r in _opensky_rows()]
    (tmp_path / "bad.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "good.csv").write_text("\n".join(_opensky_rows(fid="def456")) + "\n")
    proc = _cli(["ingest", str(tmp_path / "bad.csv"), "-w", str(tmp_path / "ws")])
    assert proc.returncode == 1 and "every row was quarantined" in proc.stderr and "out_of_range" in proc.stderr
    proc = _cli(["ingest", str(tmp_path / "good.csv"), str(tmp_path / "missing.csv"), "-w", str(tmp_path / "ws")])
    assert proc.returncode == 1 and "1 of 2 input file(s) could not be read" in proc.stderr
    assert "missing.csv" in proc.stdout + proc.stderr and "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("opt", [["--step-s", "1e-9"], ["--max-gap-s", "1e12"], ["--step-s", "nan"]])
def test_insane_parameters_are_one_line_errors(opt, tmp_path):
    (tmp_path / "x.csv").write_text("\n".join(_opensky_rows()) + "\n")
    proc = _cli(["ingest", str(tmp_path / "x.csv"), "-w", str(tmp_path / "ws"), *opt])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert opt[0].lstrip("-").replace("-", "_") in lines[0]
    assert not (tmp_path / "ws" / "tracks").exists()


def test_corrupt_files_are_one_line_errors_naming_the_file(reference, tmp_path):
    from models.policy import load_policy
    from pipelines.shards import read_spec
    ds = tmp_path / "dataset"
    shutil.copytree(reference / "dataset", ds)
    (ds / "feature_spec.json").write_text('{"tensors": ')
    with pytest.raises(Exception, match="feature_spec.json: corrupt feature spec") as exc:
        read_spec(ds)
    assert "\n" not in str(exc.value)
    proc = _cli(["train", "--config", "tiny", "--data", str(ds), "-w", str(tmp_path), "--no-register"])
    assert proc.returncode == 2 and "feature_spec.json" in proc.stderr and "Traceback" not in proc.stderr
    import numpy as np

    from atc_il.config import DatasetConfig
    from pipelines.features import feature_spec
    from tests.helpers import untrained_policy
    dcfg = DatasetConfig(history_steps=4)
    feats = {k: np.random.default_rng(0).normal(size=(4, *t["shape"]))
             for k, t in feature_spec(dcfg, 5.0)["tensors"].items()}
    pol = tmp_path / "policy"
    untrained_policy(dcfg, feats, 5.0).save(pol)
    (pol / "weights.pt").write_bytes(b"\x80\x04garbage that is not a torch file")
    from atc_il.errors import ModelError
    with pytest.raises(ModelError, match="weights.pt: not a readable weights file") as exc:
        load_policy(pol)
    assert "weights_only=False" not in str(exc.value)


def test_a_malformed_line_with_undecodable_bytes_is_quarantined_not_the_file(tmp_path):
    rows = _opensky_rows(12)
    data = "\n".join(rows).encode().replace(b"KLM4", b"KLM4,\xff\xfe,extra")     # wrong field count and bad bytes
    (tmp_path / "x.csv").write_bytes(data + b"\n")
    rep = ingest([tmp_path / "x.csv"], tmp_path / "ws", progress=False, resample=False)
    assert not rep.files_failed and rep.rows_in == 12 == rep.rows_kept + rep.rows_quarantined
    q = pd.read_parquet(tmp_path / "ws" / "quarantine")
    assert q["reason"].tolist() == ["unparseable"] and "malformed line" in q["detail"][0]


def test_an_actions_log_inside_the_actions_output_is_refused(raw, reference, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(reference, ws)
    log = ws / "actions" / "clearances.csv"
    shutil.copy(raw["clearance_log"], log)
    with pytest.raises(ConfigError, match="inside the actions stage's own output"):
        actions.run(ws / "tracks", ws, log=log, episodes_dir=ws / "episodes")
    assert log.exists() and (ws / "actions" / RUN_RECORD).exists()
