"""The `atc-il` command line: one subcommand per pipeline stage, plus the quickstart main job.

The composition root: subcommands import their packages lazily so `atc-il --help` stays fast.
Every stage reads and writes a workspace folder (default ./workspace):
  raw/ (sample) -> tracks/, quarantine/ (ingest) -> conflicts/, episodes/ (conflicts)
  -> actions/, action_links/ (actions) -> dataset/ (dataset)
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import List, Optional

import click
import typer

from atc_il.errors import AtcIlError, ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="atc-il: learn how air traffic controllers resolve conflicts, from radar tracks.")
STATE = {"debug": False}

Work = typer.Option(Path("workspace"), "--work", "-w", help="workspace folder holding every stage's output")
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML pipeline configuration (sections: clean, resample, conflicts, actions, dataset, enroute)")
MinAlt = typer.Option(None, "--min-alt-ft", help="en-route focus: leave out what happens below this altitude (ft); "
                      "default none: keep everything")
AirspaceOpt = typer.Option(None, "--airspace", help="en-route focus: keep only what happens inside this polygon "
                           "(GeoJSON Polygon/MultiPolygon/FeatureCollection, or a CSV of lat,lon vertices); "
                           "default none: everywhere")
SectorOpt = typer.Option(None, "--sector", help="the named feature of the --airspace FeatureCollection to use")


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="show tracebacks on errors")):
    STATE["debug"] = debug


def _guard(fn):
    """Print atc-il errors on one line (traceback only under --debug) and exit with status 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AtcIlError as exc:
            if STATE["debug"]:
                raise
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(2) from None
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort,
                KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:   # noqa: BLE001 - an operator gets one line; --debug shows the traceback
            if STATE["debug"]:
                raise
            text = " ".join(str(exc).split())[:300]
            typer.secho(f"error: {type(exc).__name__}: {text} (unexpected; rerun with --debug for the traceback)",
                        fg="red", err=True)
            raise typer.Exit(3) from None
    return wrapper


def _config(path: Optional[Path], **overrides):
    from atc_il.config import load_pipeline_config
    return load_pipeline_config(path, **overrides)


def _counts(value: object) -> Optional[str]:
    """A flat dict of counts (e.g. quarantined_by_reason, actions_by_type) as 'a 3, b 1' (zeros left out, largest
    first); None for anything else, and '0' for counts that are all zero."""
    if not isinstance(value, dict) or not value:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
        return None
    items = sorted(((k, v) for k, v in value.items() if v), key=lambda kv: (-kv[1], str(kv[0])))
    return ", ".join(f"{k} {v:,}" for k, v in items) or "0"


def _table(title: str, rows: dict) -> None:
    from atc_il.progress import summary_table
    shown = {}
    for k, v in rows.items():
        if not isinstance(v, (dict, list)):
            shown[k] = v
        elif _counts(v) is not None:
            shown[k] = _counts(v)
    summary_table(title, shown)
    enroute = rows.get("enroute")
    if isinstance(enroute, dict) and any(v is not None for v in enroute.values()):
        given = ", ".join(f"{k}={v}" for k, v in enroute.items() if v is not None)
        left = ", ".join(f"{k}={v}" for k, v in rows.items() if "_left_out" in k)
        typer.echo(f"en-route focus ({given}): {left}")


def _enroute(min_alt_ft: Optional[float], airspace: Optional[Path], sector: Optional[str]) -> dict:
    return {"min_alt_ft": min_alt_ft, "airspace": str(airspace) if airspace else None, "sector": sector}


@app.command()
@_guard
def ingest(inputs: List[Path] = typer.Argument(..., help="track files or folders (CSV, parquet, JSON, BlueSky logs, "
                                                            "SCAT flight documents or weekly zips)"),
           work: Path = Work, config: Optional[Path] = ConfigOpt,
           fmt: str = typer.Option("auto", "--format", "-f", help="auto, csv, parquet, opensky, traffic, bluesky or scat (auto reads a .zip as SCAT)"),
           mapping: Optional[str] = typer.Option(None, "--mapping", "-m", help="column/unit mapping: YAML file or 'alt_ft=altitude:m,gs_kt=speed:m/s,time=ts:s'"),
           step_s: Optional[float] = typer.Option(None, help="resampling grid step (s), default 5"),
           max_gap_s: Optional[float] = typer.Option(None, help="gaps longer than this are never bridged (s), default 60"),
           resample: bool = typer.Option(True, "--resample/--no-resample", help="resample onto the regular grid"),
           merge_window_s: Optional[float] = typer.Option(
               None, help="merge ADS-B messages of one aircraft that carry position, altitude and velocity "
                          "separately when this close in time (s), default 1; 0 turns merging off"),
           chunk_rows: int = typer.Option(250_000, help="rows per chunk when streaming large files"),
           partition: str = typer.Option("day", help="track partitions: day, or hour (batch prediction over many "
                                                     "workers: one task per partition)")):
    """Read, validate (quarantining bad rows), clean and resample raw tracks into canonical tracks."""
    from pipelines.ingest import ingest as run_ingest
    cfg = _config(config, resample={"step_s": step_s}, clean={"max_gap_s": max_gap_s, "merge_window_s": merge_window_s})
    report = run_ingest(inputs, work, fmt=fmt, mapping=mapping, config=cfg, resample=resample, chunk_rows=chunk_rows,
                        partition=partition)
    _table("ingest", report.to_dict())
    if report.scat:
        s = report.scat
        typer.echo(f"SCAT: {s.get('flights', 0):,} flights, {s.get('clearance_records', 0):,} clearance records -> "
                   f"actions {s['clearance_actions']}, changes left unmapped {s['clearance_changes_unmapped']}; "
                   f"next: atc-il actions -w {work} --log {work / 'scat' / 'clearances.parquet'} "
                   f"--flight-plans {work / 'scat' / 'flight_plans.parquet'}")
    if report.files_failed:
        typer.secho(f"error: {len(report.files_failed)} of {len(report.files_failed) + len(report.files_ok)} input "
                    f"file(s) could not be read (named above); the others were ingested", fg="red", err=True)
        raise typer.Exit(1)
    if report.rows_in and not report.rows_kept:
        reasons = ", ".join(f"{k} {v:,}" for k, v in report.quarantined_by_reason.items() if v)
        typer.secho(f"error: every row was quarantined ({reasons}); see {work / 'quarantine'}", fg="red", err=True)
        raise typer.Exit(1)


@app.command()
@_guard
def conflicts(work: Path = Work, config: Optional[Path] = ConfigOpt,
              rpz_nm: Optional[float] = typer.Option(None, help="protected radius (NM), default 5"),
              hpz_ft: Optional[float] = typer.Option(None, help="protected height (ft), default 1000"),
              lookahead_s: Optional[float] = typer.Option(None, help="look-ahead (s), default 600"),
              min_alt_ft: Optional[float] = MinAlt, airspace: Optional[Path] = AirspaceOpt,
              sector: Optional[str] = SectorOpt):
    """Detect conflicts (state-based, as STCA) on the track grid and group them into episodes. With
    --min-alt-ft/--airspace, an episode is kept only when both aircraft are above the floor and inside the
    airspace at first detection; the episodes left out are counted."""
    from pipelines.conflicts import run
    cfg = _config(config, conflicts={"rpz_nm": rpz_nm, "hpz_ft": hpz_ft, "lookahead_s": lookahead_s},
                  enroute=_enroute(min_alt_ft, airspace, sector))
    _table("conflicts", run(work / "tracks", work, cfg.conflicts, enroute=cfg.enroute))


@app.command()
@_guard
def actions(work: Path = Work, config: Optional[Path] = ConfigOpt,
            log: Optional[Path] = typer.Option(None, help="clearance log (CSV or parquet)"),
            log_mapping: Optional[str] = typer.Option(None, help="column mapping of the clearance log (YAML)"),
            flight_plans: Optional[Path] = typer.Option(None, help="flight-plan waypoint table, enables direct-to detection"),
            infer: bool = typer.Option(True, "--infer/--no-infer", help="infer manoeuvres from tracks"),
            detector: str = typer.Option("rules", help="how manoeuvres are inferred: rules (thresholds on rates, "
                                         "pipelines/manoeuvres.py) or learned (change candidates scored by gradient-"
                                         "boosted trees with a calibrated confidence, pipelines/detector.py)"),
            detector_model: Optional[Path] = typer.Option(None, help="learned detector model (.npz from atc-il "
                                                          "train-detector); default: the one shipped"),
            detector_threshold: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="learned detector: keep "
                                                               "actions whose calibrated confidence is at least this; "
                                                               "default: the model's per-signal threshold (best F1 on "
                                                               "held-out flights when it was trained)"),
            min_alt_ft: Optional[float] = MinAlt, airspace: Optional[Path] = AirspaceOpt,
            sector: Optional[str] = SectorOpt):
    """Extract controller actions (clearance log and/or manoeuvres inferred from tracks) and link them to episodes.
    With --min-alt-ft/--airspace, an action is kept only when its aircraft is above the floor and inside the
    airspace at the action's time; the actions left out are counted."""
    from pipelines.actions import run
    cfg = _config(config, enroute=_enroute(min_alt_ft, airspace, sector))
    episodes = work / "episodes"
    summary = run(work / "tracks", work, cfg.actions, log=log, log_mapping=log_mapping, flight_plans=flight_plans,
                  episodes_dir=episodes if episodes.exists() else None, infer=infer, enroute=cfg.enroute,
                  detector=detector, detector_model=detector_model, detector_threshold=detector_threshold)
    _table("actions", summary)


@app.command("train-detector")
@_guard
def train_detector(work: List[Path] = typer.Option(..., "--work", "-w", help="workspace(s) whose ingested tracks "
                                                   "(WORK/tracks) to learn from; repeat the option"),
                   log: Path = typer.Option(..., help="clearance log of those flights (CSV or parquet, as for "
                                            "atc-il actions --log)"),
                   log_mapping: Optional[str] = typer.Option(None, help="column mapping of the clearance log (YAML)"),
                   flight_plans: Optional[Path] = typer.Option(None, help="flight-plan waypoint table (direct-to)"),
                   ignore: Optional[Path] = typer.Option(None, help="table of intervals (flight_id, start, end[, "
                                                         "signal]) where the log is incomplete: candidates there are "
                                                         "neither positives nor negatives"),
                   tol_s: float = typer.Option(120.0, min=1.0, help="a candidate within this many seconds of a "
                                               "logged clearance of its type on its flight is a positive"),
                   out: Path = typer.Option(Path("detector.npz"), help="where to write the model (.npz)"),
                   seed: int = typer.Option(0)):
    """Train the learned manoeuvre detector on your own tracks and clearance log (for atc-il actions --detector
    learned --detector-model OUT)."""
    from pipelines.detector_training import train_from_workspaces
    rep = train_from_workspaces(work, log, out, log_mapping=log_mapping, flight_plans=flight_plans, ignore=ignore,
                                tol_s=tol_s, seed=seed)
    _table("train-detector", rep)


@app.command()
@_guard
def dataset(work: Path = Work, config: Optional[Path] = ConfigOpt,
            out: Optional[Path] = typer.Option(None, help="output folder (default WORK/dataset)"),
            history_steps: Optional[int] = typer.Option(None, help="H grid steps of history, default 24"),
            neighbours: Optional[int] = typer.Option(None, help="K nearest other aircraft, default 4"),
            split: Optional[str] = typer.Option(None, help="split unit: day (default), hour (whole hours of first "
                                                "detection: for a day or two of tracks) or scenario"),
            min_alt_ft: Optional[float] = MinAlt, airspace: Optional[Path] = AirspaceOpt,
            sector: Optional[str] = SectorOpt):
    """Build observation histories (shards + feature spec) from tracks, episodes and actions. With
    --min-alt-ft/--airspace, only episodes with both aircraft above the floor and inside the airspace at first
    detection give samples; the episodes and samples left out are counted."""
    from pipelines.dataset import build
    cfg = _config(config, dataset={"history_steps": history_steps, "neighbours": neighbours, "split": split},
                  enroute=_enroute(min_alt_ft, airspace, sector))
    summary = build(work, out, cfg)
    _table("dataset", {k: v for k, v in summary.items() if k != "split_warning"})
    if summary.get("split_warning"):
        typer.secho(f"warning: {summary['split_warning']}", fg="yellow", err=True)


@app.command()
@_guard
def sample(work: Path = Work,
           out: Optional[Path] = typer.Option(None, help="where to write the sample (default WORK/raw)"),
           days: int = typer.Option(3, min=1, max=366), seed: int = typer.Option(0)):
    """Write the embedded synthetic sample (OpenSky-format tracks, clearance log, flight plans) in WORK/raw."""
    from pipelines.sample import SampleSpec, make_sample
    info = make_sample(out or work / "raw", SampleSpec(days=days, seed=seed))
    _table("sample", info)


@app.command()
@_guard
def quickstart(work: Path = Work, seed: int = typer.Option(0),
               learn: bool = typer.Option(True, "--learn/--data-only", help="after the radar-track chain, also simulate, train, evaluate, predict and report"),
               scenarios: int = typer.Option(48, min=3, help="simulated scenarios for the demonstrations"),
               loop_scenarios: int = typer.Option(8, min=1, help="new scenarios for the closed-loop evaluation"),
               epochs: int = typer.Option(25, min=1, help="training epochs at most (early stopping on validation)")):
    """The main job on the embedded default: radar-track chain (ingest -> conflicts -> actions -> histories),
    then BlueSky demonstrations -> histories -> train -> offline and closed-loop evaluation -> registered
    model -> batch prediction -> report. Each step prints what it did."""
    from atc_il_cli.quickstart import run
    out = run(work, typer.echo, seed=seed, learn=learn, scenarios=scenarios, sim_scenarios=loop_scenarios, epochs=epochs)
    _table("quickstart", out)


@app.command()
@_guard
def simulate(scenarios: int = typer.Option(4, "--scenarios", "-n", min=1, help="number of generated scenarios"),
             expert: str = typer.Option("atco", help="atco (synthetic controller), mvp (BlueSky's MVP), varied (real-world "
                                        "clearance kinds with exact ground truth, for extraction benchmarks) or none"),
             seed: int = typer.Option(0, help="scenario set and expert seed"),
             workers: int = typer.Option(1, min=1, help="parallel BlueSky processes"),
             scheduler: Optional[str] = typer.Option(None, help="address of a Dask scheduler to run on"),
             duration_s: float = typer.Option(1800.0, help="scenario length (simulated seconds)"),
             density: float = typer.Option(4.0, help="background flights per hour per 10,000 NM^2"),
             conflicts_per_scenario: int = typer.Option(4, "--conflicts", help="injected conflict pairs per scenario"),
             dense_routes: bool = typer.Option(False, "--dense-routes/--straight-routes",
                                               help="flight plans with waypoints 2-4 min apart, a few NM off the straight "
                                                    "line (direct-to then changes the track by a few degrees)"),
             surveillance: str = typer.Option("radar", help="what tracks/ holds: radar (the picture the controller "
                                              "decided on, radar noise included, as a recording holds what the display "
                                              "showed) or truth (the simulator's true states, to add your own "
                                              "surveillance model)"),
             out: Path = typer.Option(Path("workspace/sim"), help="output folder")):
    """Run generated scenarios in BlueSky under an expert controller and write demonstrations
    (tracks, clearances, expert ground truth, scenarios) in the canonical contracts."""
    from simulator_adapters.demonstrations import simulate as run_sim
    client = None
    if scheduler:
        from distributed import Client
        client = Client(scheduler)
    try:
        rep = run_sim(out, scenarios, expert, seed, workers, client,
                      {"duration_s": duration_s, "density": density, "conflicts": conflicts_per_scenario},
                      dense_routes=dense_routes, surveillance=surveillance)
    finally:
        if client is not None:
            client.close()
    _table(f"simulate ({expert})", rep)
    typer.echo(f"next: atc-il conflicts -w {out} && atc-il actions -w {out} --log {out}/clearances.parquet "
               f"--no-infer && atc-il dataset -w {out} --split scenario")


@app.command()
@_guard
def simeval(controller: List[str] = typer.Option(["none", "atco", "mvp"], "--controller", help="atco, mvp, none or model:URI; repeat the option"),
            scenarios: int = typer.Option(4, "--scenarios", "-n", min=1), seed: int = typer.Option(0),
            duration_s: float = typer.Option(1800.0, help="scenario length (simulated seconds)"),
            out: Path = typer.Option(Path("workspace/simeval"), help="output folder (results.json, results.md, results.png)"),
            workers: int = typer.Option(1, min=1, help="parallel BlueSky processes (the scenarios split between them; "
                                        "the same results as with one)")):
    """Closed-loop evaluation: every controller on the identical scenario set in BlueSky."""
    from simulator_adapters.evaluation import simeval as run_eval
    agg = run_eval(controller, scenarios, seed, out, {"duration_s": duration_s}, workers=workers)
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"simeval: {scenarios} scenarios, seed {seed}")
    for c in agg.columns:
        table.add_column(c)
    for row in agg.itertuples(index=False):
        table.add_row(*[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row])
    Console().print(table)
    typer.echo(f"written: {out}/results.json, results.md, results.png, per_scenario.csv")


def _model_config_path(config: Path) -> Path:
    """A YAML path, or a bare name or path inside the project's models/configs."""
    if not config.exists() and not config.is_absolute():
        packaged = Path(__file__).resolve().parents[1] / "models" / "configs"
        config = next((p for p in (packaged / config.name, packaged / f"{config.name}.yaml") if p.exists()), config)
    return config


@app.command()
@_guard
def train(config: Path = typer.Option(Path("models/configs/gru_mdn.yaml"), "--config", "-c",
                                      help="model configuration: YAML file or a name in models/configs (gru_mdn, tiny...)"),
          data: Optional[Path] = typer.Option(None, "--data", "-d", help="data set folder (default WORKSPACE/dataset)"),
          workspace: Path = typer.Option(Path("workspace"), "--workspace", "--work", "-w",
                                         help="workspace: mlflow.db and mlartifacts/ live here"),
          out: Optional[Path] = typer.Option(None, "--out", help="run folder: checkpoints/, best/ (default WORKSPACE/runs/NAME)"),
          epochs: Optional[int] = typer.Option(None, min=1, help="override train.epochs"),
          max_steps: Optional[int] = typer.Option(None, min=1, help="override train.max_steps"),
          register: bool = typer.Option(True, "--register/--no-register", help="register the best policy under the config's name"),
          alias: str = typer.Option("champion", help="alias pointed at the new registered version"),
          resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from OUT/checkpoints/last.pt if present")):
    """Train a policy (AdamW, cosine schedule, early stopping; CUDA/bf16 when available, DDP under torchrun),
    tracked in MLflow. See the runs with: mlflow ui --backend-store-uri sqlite:///workspace/mlflow.db"""
    from models.config import load_model_config
    from models.registry import tracking_uri
    from models.train import train as run_train

    config = _model_config_path(config)
    overrides = {k: v for k, v in {"epochs": epochs, "max_steps": max_steps}.items() if v is not None}
    cfg = load_model_config(config, **({"train": overrides} if overrides else {}))
    s = run_train(cfg, data or workspace / "dataset", out or workspace / "runs" / cfg.name, resume=resume,
                  tracking_uri=tracking_uri(workspace), register_as=cfg.name if register else None, alias=alias)
    if s["rank"] != 0:   # torchrun: rank 0 reports
        return
    _table(f"train {cfg.name}", {
        "epochs": s["epochs"], "steps": s["steps"], "best val loss": s["best_val_loss"],
        "early stopped": "yes" if s["early_stopped"] else "no", "samples/s": s["samples_per_s"], "device": s["device"],
        "processes": s["world_size"], "run id": s["run_id"], "best policy": s["best_dir"],
        "model URI": s["model_uri"], "tracking": s["tracking_uri"]})


@app.command()
@_guard
def dagger(data: Path = typer.Option(..., "--data", "-d", help="the expert demonstrations' data set (split by scenario, "
                                     "expert_truth.parquet beside it): its train split starts the aggregate, its test "
                                     "split measures every iteration"),
           config: Path = typer.Option(Path("models/configs/gru_mdn.yaml"), "--config", "-c",
                                       help="model configuration: YAML file or a name in models/configs"),
           init: Optional[Path] = typer.Option(None, "--init", help="a saved policy folder to start from (default: "
                                               "train one on the demonstrations first: iteration 0, behavioural cloning)"),
           iterations: int = typer.Option(3, min=1, help="DAgger iterations"),
           scenarios: int = typer.Option(10, "--scenarios", "-n", min=1, help="new scenarios rolled out per iteration"),
           beta: float = typer.Option(0.5, min=0.0, max=1.0, help="the expert's share of control at iteration 1"),
           beta_decay: float = typer.Option(0.5, min=0.0, max=1.0, help="beta_i = beta * beta_decay^(i-1)"),
           workers: int = typer.Option(2, min=1, help="parallel BlueSky processes for the rollouts"),
           seed: int = typer.Option(1000, help="iteration i rolls out the scenario set of seed + i"),
           warm_start: bool = typer.Option(True, "--warm-start/--from-scratch",
                                           help="retrain each iteration from the last policy's weights"),
           epochs: Optional[int] = typer.Option(None, min=1, help="override train.epochs"),
           duration_s: float = typer.Option(1800.0, help="scenario length (simulated seconds)"),
           conflicts_per_scenario: int = typer.Option(8, "--conflicts", help="injected conflict pairs per scenario"),
           workspace: Path = typer.Option(Path("workspace"), "--workspace", "-w", help="where the MLflow store is"),
           out: Path = typer.Option(Path("workspace/dagger"), "--out", help="output folder (iter-NN/, dagger_report.json)")):
    """DAgger with the synthetic expert: roll the policy out in BlueSky, let the expert label every state it
    visits, aggregate with the demonstrations, retrain; each iteration tracked in MLflow."""
    from models.config import load_model_config
    from models.registry import tracking_uri
    from simulator_adapters.dagger import DaggerConfig, run_dagger

    cfg = load_model_config(_model_config_path(config), **({"train": {"epochs": epochs}} if epochs else {}))
    dcfg = DaggerConfig(iterations=iterations, scenarios=scenarios, beta=beta, beta_decay=beta_decay, workers=workers,
                        seed=seed, warm_start=warm_start, duration_s=duration_s, conflicts=conflicts_per_scenario)
    rep = run_dagger(cfg, data, out, dcfg, init=init, tracking_uri=tracking_uri(workspace), log=typer.echo)
    last = rep["iterations"][-1]
    _table(f"dagger: {iterations} iterations of {scenarios} scenarios", {
        "last policy": rep["policy"], "train samples": last.get("train_samples"),
        "test discrete NLL": last.get("nll_discrete"), "gap to the ceiling": last.get("gap_discrete_nll"),
        "on-policy NLL gap (expert's view)": last.get("onpolicy_nll_gap"), "MLflow run": rep["mlflow_run_id"],
        "report": f"{out}/dagger_report.json"})


@app.command()
@_guard
def adversarial(data: Path = typer.Option(..., "--data", "-d", help="the expert demonstrations' data set: its train "
                                          "split is the discriminator's expert side"),
                init: Path = typer.Option(..., "--init", help="the behavioural-cloning policy folder to start from "
                                          "(Policy.save: weights.pt, config.yaml, feature_spec.json)"),
                objective: str = typer.Option("gail", help="gail (cross-entropy, reward -log(1-D)) or amp (least "
                                              "squares, bounded reward)"),
                state_only: bool = typer.Option(False, "--state-only", help="the discriminator sees the history and "
                                                "the pair's next state, not the clearance (AMP / GAIfO)"),
                iterations: int = typer.Option(3, min=1, help="rollout + discriminator + PPO rounds"),
                scenarios: int = typer.Option(4, "--scenarios", "-n", min=1, help="new scenarios rolled out per iteration"),
                workers: int = typer.Option(2, min=1, help="parallel BlueSky processes for the rollouts"),
                seed: int = typer.Option(2000, help="iteration i rolls out the scenario set of seed + i; also seeds "
                                         "the trainer"),
                disc_steps: int = typer.Option(50, min=1, help="discriminator updates per iteration"),
                ppo_epochs: int = typer.Option(4, min=1, help="PPO passes over each iteration's decision steps"),
                lr: float = typer.Option(1e-4, min=0.0, help="the policy's PPO learning rate"),
                info_weight: float = typer.Option(0.0, min=0.0, help="InfoGAIL: weight of the mutual-information reward "
                                                  "log q(c | history, decision) + log K; needs a policy with a style "
                                                  "code (style.enabled); 0 = off"),
                duration_s: float = typer.Option(1800.0, help="scenario length (simulated seconds)"),
                conflicts_per_scenario: int = typer.Option(8, "--conflicts", help="injected conflict pairs per scenario"),
                workspace: Path = typer.Option(Path("workspace"), "--workspace", "-w", help="where the MLflow store is"),
                out: Path = typer.Option(Path("workspace/adversarial"), "--out", help="output folder (iter-NN/, policy/, "
                                         "adversarial_report.json)")):
    """Adversarial imitation (GAIL or AMP, optionally state-only) in BlueSky: PPO from a behavioural-cloning policy
    on the discriminator's rewards; each iteration tracked in MLflow, the policy saved as a policy folder."""
    from atc_il.errors import ConfigError
    from models.adversarial import AdversarialConfig
    from models.discriminator import OBJECTIVES
    from models.registry import tracking_uri
    from simulator_adapters.adversarial import RolloutPlan, run_adversarial

    if objective not in OBJECTIVES.names():
        raise ConfigError(f"--objective {objective!r}: choose one of {OBJECTIVES.names()}")
    cfg = AdversarialConfig(disc={"objective": objective, "state_only": state_only, "steps": disc_steps},
                            ppo={"epochs": ppo_epochs, "lr": lr}, info={"weight": info_weight}, seed=seed)
    plan = RolloutPlan(scenarios=scenarios, workers=workers, seed=seed, duration_s=duration_s,
                       conflicts=conflicts_per_scenario)
    rep = run_adversarial(init, data, out, cfg, plan, iterations, tracking_uri=tracking_uri(workspace), log=typer.echo)
    last = rep["iterations"][-1]
    _table(f"adversarial ({objective}{', state-only' if state_only else ''}): {iterations} iterations of "
           f"{scenarios} scenarios", {
               "policy": rep["policy"], "decision steps (last iteration)": last.get("transitions"),
               "discriminator accuracy": last.get("disc_accuracy_all"), "mean reward": last.get("reward_mean"),
               "simulated s per wall s": last.get("sim_seconds_per_wall_second"),
               "losses of separation": last.get("rollout_los"), "MLflow run": rep["mlflow_run_id"],
               "report": f"{out}/adversarial_report.json"})


@app.command()
@_guard
def evaluate(model: str = typer.Option(..., "--model", help="models:/NAME@alias, runs:/ID/model or a policy folder"),
             data: Path = typer.Option(..., "--data", help="data-set folder (with feature_spec.json)"),
             split: str = typer.Option("test", help="train, val or test"),
             truth: Optional[Path] = typer.Option(None, help="expert_truth.parquet (default: next to the data set, when there)"),
             workspace: Path = typer.Option(Path("workspace"), "--workspace", "-w", help="where the MLflow store is"),
             out: Optional[Path] = typer.Option(None, help="output folder (default WORKSPACE/eval/<model>)"),
             samples: int = typer.Option(64, help="samples per decision for mode coverage and distances")):
    """Offline evaluation against the demonstrations (and the Bayes ceiling on synthetic data):
    metrics.json, metrics.md and values.png."""
    import os

    from models.evaluate import evaluate as run_eval
    from models.registry import load_policy_uri, tracking_uri
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri(workspace))
    policy = load_policy_uri(model)
    out = out or workspace / "eval" / "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
    m = run_eval(policy, data, split, truth, n_samples=samples, out=out, title=model)
    rows = {k: v for k, v in m.items() if not isinstance(v, dict)}
    rows.update({f"ceiling {k}": v for k, v in m.get("ceiling", {}).items()})
    rows.update({f"gap {k}": v for k, v in m.get("gap", {}).items()})
    _table(f"evaluate {model} on {split}", rows)
    typer.echo(f"written: {out}/metrics.json, metrics.md, values.png")


@app.command()
@_guard
def predict(model: str = typer.Option(..., "--model", help="models:/NAME@alias, runs:/ID/model or a policy folder"),
            tracks: Path = typer.Option(..., "--tracks", help="canonical tracks: the day=... (or day=.../hour=...) folders of atc-il ingest"),
            out: Path = typer.Option(..., "--out", help="output folder: OUT/day=.../part-0.parquet, predict_report.json"),
            engine: Optional[str] = typer.Option(None, help="local (in-process) or dask; default local for 1 worker, else dask"),
            workers: int = typer.Option(1, min=1, help="Dask LocalCluster of N single-thread worker processes"),
            scheduler: Optional[str] = typer.Option(None, help="address of an existing Dask scheduler to run on"),
            runtime: str = typer.Option("auto", help="context network: auto (ONNX Runtime where it reproduces PyTorch), onnx or torch"),
            clearances: Optional[Path] = typer.Option(None, help="issued clearances: a clearance log file or an actions/ folder"),
            workspace: Path = typer.Option(Path("workspace"), "--workspace", "-w", help="where the MLflow store is"),
            config: Optional[Path] = ConfigOpt, min_alt_ft: Optional[float] = MinAlt,
            airspace: Optional[Path] = AirspaceOpt, sector: Optional[str] = SectorOpt):
    """Batch prediction: conflicts and the model's decision at every conflict step, per
    partition (restartable: finished partitions are skipped, broken ones redone). With
    --min-alt-ft/--airspace (or the --config enroute section), a conflict step is predicted only when both
    aircraft were above the floor and inside the airspace at its episode's first detection; the steps left out
    are counted."""
    import os

    from models.batch_predict import run as run_predict
    from models.registry import tracking_uri
    cfg = _config(config, enroute=_enroute(min_alt_ft, airspace, sector))
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri(workspace))
    rep = run_predict(tracks, out, model, engine=engine, workers=workers, scheduler=scheduler, clearances=clearances,
                      runtime=runtime, enroute=cfg.enroute)
    _table(f"predict {model}", {
        "partitions": rep["partitions"], "done": rep["partitions_done"], "skipped (finished before)": rep["partitions_skipped"],
        "failed": rep["partitions_failed"], "track points": rep["track_points"], "conflict steps": rep["conflict_steps"],
        "predictions": rep["predictions"], "enroute": rep["enroute"],
        "conflict_steps_left_out": rep["conflict_steps_left_out"],
        "conflict_steps_left_out_by_reason": rep["conflict_steps_left_out_by_reason"],
        "seconds": rep["seconds"], "points/s": rep["points_per_s"],
        "engine": f"{rep['engine']} ({rep['workers']} worker{'s' if rep['workers'] > 1 else ''})", "report": str(out / "predict_report.json")})
    for key, cause in rep["failed"].items():
        typer.secho(f"failed {key}: {cause}", fg="red", err=True)
    if rep["failed"]:
        typer.secho(f"{rep['partitions_failed']} of {rep['partitions']} partitions failed; fix them and rerun "
                    "(finished partitions are skipped)", fg="red", err=True)
        raise typer.Exit(1)


@app.command()
@_guard
def serve(model: str = typer.Option(..., "--model", help="models:/NAME@alias, runs:/ID/model or a policy folder"),
          host: str = typer.Option("127.0.0.1", help="interface to listen on"),
          port: int = typer.Option(8000, min=1, max=65535),
          workers: int = typer.Option(1, min=1, help="uvicorn worker processes: one per core (each loads the model once)"),
          api_key_file: Optional[Path] = typer.Option(None, "--api-key-file",
                                                      help="API keys, one per line (also: ATC_IL_API_KEYS, comma-separated)"),
          expect_spec_hash: Optional[str] = typer.Option(None, help="refuse a model whose feature spec_hash differs"),
          max_body_bytes: int = typer.Option(2 * 2**20, min=1, help="larger request bodies are refused (413)"),
          max_batch: int = typer.Option(64, min=1, help="most conflicts in one /v1/predict/batch request"),
          n_alternatives_max: int = typer.Option(64, min=0, max=1024, help="most sampled alternatives per conflict"),
          max_conflicts: int = typer.Option(256, min=1, max=100_000, help="most conflicts one /v1/detect request may create (422 beyond)"),
          max_alternative_samples: int = typer.Option(4096, min=1, help="most sampled alternatives in one request, all conflicts together"),
          workspace: Path = typer.Option(Path("workspace"), "--workspace", "-w", help="where the MLflow store is"),
          runtime: str = typer.Option("auto", help="context network on onnx (ONNX Runtime, ~4x faster per request), "
                                                   "torch, or auto (onnx when it reproduces torch, else torch)"),
          log_level: str = typer.Option("info", help="uvicorn log level")):
    """Serve the model over HTTP: /v1/predict, /v1/predict/batch, /v1/detect, /v1/model, health and /metrics
    (OpenAPI at /openapi.json). Every endpoint but /v1/health/live wants a key in the X-API-Key header."""
    import json
    import os

    import uvicorn

    from api.app import SERVE_ENV
    from api.security import load_api_keys
    from models.registry import tracking_uri
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri(workspace))
    from api.service import RUNTIMES
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    keys = load_api_keys(api_key_file)   # refuses to start without a key
    opts = {"max_body_bytes": max_body_bytes, "max_batch": max_batch, "n_alternatives_max": n_alternatives_max,
            "max_conflicts": max_conflicts, "max_alternative_samples": max_alternative_samples,
            "expect_spec_hash": expect_spec_hash, "runtime": runtime}
    if workers == 1:
        from api.app import create_app
        web = create_app(model, api_keys=keys, **opts)
        server = uvicorn.Server(uvicorn.Config(web, host=host, port=port, log_level=log_level, proxy_headers=False))
        try:
            server.run()
        except SystemExit:   # uvicorn exits on a failed startup
            pass
        if web.state.startup_error is not None:
            raise web.state.startup_error
        if not server.started:
            raise typer.Exit(3)
        return
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):   # /metrics aggregates the workers
        import tempfile
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="atc-il-metrics-")
    os.environ[SERVE_ENV] = json.dumps({"model_uri": model, **opts,
                                        "api_key_file": str(api_key_file) if api_key_file else None})
    from uvicorn.supervisors import Multiprocess

    from api.app import tcp_listener
    config = uvicorn.Config("api.app:create_app_from_env", factory=True, host=host, port=port, workers=workers,
                            log_level=log_level, proxy_headers=False)
    sock = tcp_listener(host, port)
    Multiprocess(config, sockets=[sock]).run()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
