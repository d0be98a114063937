"""Batch prediction: canonical track partitions in, conflicts and the model's decisions out.

It lives in ``models`` because it runs a model (the serving :class:`~models.serving.Predictor`); the data
side it needs (reading partitions, conflicts, the feature builder) comes from ``pipelines``.

The work per partition is one pure function, :func:`predict_partition` (tracks -> decisions: detect at
every grid time, keep the steps in conflict (the data set's decision steps), ``Predictor.predict_samples`` in chunks), so the
same code runs in-process, on a local Dask cluster or on a remote one (:func:`run`, ``atc-il predict``).

Partitions are the leaf folders of ``atc-il ingest`` output (``day=YYYY-MM-DD[/hour=HH]``); the output
mirrors them: ``OUT/<partition>/part-0.parquet`` (:data:`PREDICTION_SCHEMA`, one row per conflict and
decision time) with a completion marker, and ``OUT/predict_report.json``.

History across partition boundaries. A decision at time t reads the H-1 grid steps before t and the
time since the pair's current run of detections began (``first_detection``; a run may be much longer
than H steps). So a partition is read together with the previous partitions' last (H-1) * step_s
seconds (every aircraft), and, for the pairs whose run of detections is already going at the start of
that window, those two aircraft's earlier points back to the run's first detection (a window doubled
until the run's start is found; only these few flights are read). Decisions are emitted only at the
partition's own times. Decisions at the start of a day therefore equal those of processing both days
at once (``tests/test_predict.py``). A partition named otherwise than ``day=...`` has no known
predecessor and is processed on its own.

En-route focus (``enroute``, ``atc-il predict --min-alt-ft/--airspace/--sector``; default: everything is
predicted): a conflict step is predicted only when its pair's run of detections (its episode) is kept by the
conflicts stage's rule, :func:`pipelines.enroute.episode_reasons` (both aircraft at or above the floor and
inside the airspace at first detection, read from the partition's points with their history). The steps left
out are counted by reason in each partition's figures and ``predict_report.json``, beside the settings.

Restartable: a partition with a complete output (marker naming ``part-0.parquet``) is skipped; any
other output folder is cleared and redone; writes are atomic. An output folder records the model and the
en-route settings it was predicted with (``predict_model.json``): a rerun with another model or other
settings is refused, so finished partitions are never reused across them. A failing partition (an
unreadable file, bad data, or an unreadable predecessor needed for its history) is reported with its cause
and the others go on. The model is loaded once per process (worker), never per partition.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time as _time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from atc_il.config import EnRouteConfig, validate
from atc_il.errors import ConfigError, DataError
from atc_il.io import MARKER, atomic_write_table, is_complete, mark_complete, parquet_files, read_table, write_json
from atc_il.progress import track
from atc_il.runs import RUN_RECORD, checkpoint, require_complete
from atc_il.schemas import ACTION_SCHEMA, DECISION_SCHEMA, TIME, TRACK_SCHEMA, conform, to_ns, to_table
from models.serving import Predictor, Prepared, decisions_frame
from pipelines.enroute import REASONS, EnRouteFilter, episode_reasons, reason_counts

PREDICTION_SCHEMA = DECISION_SCHEMA       # the decision contract, one row per conflict and decision time

PART_FILE = "part-0.parquet"
REPORT_FILE = "predict_report.json"
STATS_FILE = "_stats.json"      # per partition: its counts, so predict_report.json's cumulative totals survive restarts
MODEL_FILE = "predict_model.json"
CHUNK_SAMPLES = 8192          # samples per predict_samples call (bounds the feature tensors' memory)
_KEY = re.compile(r"(?:^|/)day=(\d{4}-\d{2}-\d{2})(?:/hour=(\d{2}))?$")

# ------------------------------------------------------------------ the model, once per process
_PREDICTORS: dict = {}
LOADS = {"count": 0}


def get_predictor(uri: str, runtime: str = "auto"):
    """The :class:`models.serving.Predictor` for ``uri`` (and context-network ``runtime``, see
    :func:`choose_runtime`), loaded on first use in this process."""
    if (uri, runtime) not in _PREDICTORS:
        _PREDICTORS[(uri, runtime)] = Predictor.from_uri(uri)
        LOADS["count"] += 1
    return _PREDICTORS[(uri, runtime)]


def load_count() -> int:
    """How many models this process has loaded (for tests: ``client.run(load_count)``)."""
    return LOADS["count"]


RUNTIMES = ("auto", "onnx", "torch")


def choose_runtime(predictor, feats: dict, runtime: str = "auto", model_bytes: bytes | None = None) -> str:
    """Put ``predictor``'s context network on ONNX Runtime (``auto``, ``onnx``) or leave it on PyTorch
    (``torch``), once per predictor. ONNX Runtime ran the default model's context network ~1.3x faster than
    PyTorch on one core (bench/RESULTS.md); it is used only when it reproduces PyTorch on these features
    (:func:`models.onnx_context.onnx_context`), else PyTorch stays (``onnx`` then raises). ``model_bytes``: the
    graph the driver exported (workers open it instead of exporting again). Returns the runtime."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "torch":
        predictor.use_torch()
        return predictor.runtime
    if getattr(predictor, "onnx_tried", False) or predictor.runtime == "onnxruntime":
        return predictor.runtime
    predictor.onnx_tried = True
    why = predictor.use_onnx([{k: v[:8] for k, v in feats.items()}], model_bytes)
    if why and runtime == "onnx":
        raise ConfigError(f"batch prediction on ONNX Runtime is not possible: {why}; use --runtime torch or auto")
    return predictor.runtime


# ------------------------------------------------------------------ the pure function
def on_grid(tracks: pd.DataFrame, step_s: float) -> bool:
    """Every time a multiple of ``step_s`` since the epoch, one point per (flight, time), and mostly
    consecutive grid steps within a flight (a coarser grid, e.g. 10 s for a 5 s model, is not the model's)."""
    ns, step = to_ns(tracks["time"]), int(round(step_s * 1e9))
    if np.any(ns % step):
        return False
    codes = pd.factorize(tracks["flight_id"])[0]
    order = np.lexsort((ns, codes))
    same = codes[order][1:] == codes[order][:-1]
    d = np.diff(ns[order])[same]
    return bool((d > 0).all() and (not len(d) or (d == step).mean() > 0.5))


def enroute_filter(enroute: EnRouteFilter | EnRouteConfig | dict | None) -> EnRouteFilter:
    """``enroute`` as a loaded :class:`~pipelines.enroute.EnRouteFilter` (None: keep everything)."""
    if isinstance(enroute, EnRouteFilter):
        return enroute
    if not isinstance(enroute, EnRouteConfig):
        enroute = validate(EnRouteConfig, enroute or {}, "enroute")
    return EnRouteFilter(enroute)


def predict_partition(tracks: pd.DataFrame, predictor, clearances: pd.DataFrame | None = None, *,
                      start=None, chunk: int = CHUNK_SAMPLES, runtime: str = "auto",
                      enroute: EnRouteFilter | EnRouteConfig | dict | None = None) -> pd.DataFrame:
    """Decisions for every conflict step (``conflict``, as the data set's decision steps) at times >= ``start``.

    ``tracks``: canonical points; off the model's grid they are resampled with ``predictor.grid``.
    Points before ``start`` are history only (see the module doc for how much a caller must pass).
    ``clearances``: issued clearances (ACTION_SCHEMA), features of the decisions after them.
    ``runtime``: the context network's runtime (:func:`choose_runtime`).
    ``enroute``: the en-route focus (module doc; default none: every conflict step); the steps it leaves out
    are not predicted, and the others are predicted exactly as without it.
    Returns :data:`PREDICTION_SCHEMA` rows sorted by (time, flight_id_1, flight_id_2); ``attrs`` count
    the conflict steps at emitted times: predicted or not (``conflict_steps``, those kept by ``enroute``) and
    left out by ``enroute`` (``conflict_steps_left_out``, ``conflict_steps_left_out_by_reason``).
    """
    flt = enroute_filter(enroute)
    out = PREDICTION_SCHEMA.empty_table().to_pandas()
    out.attrs.update(conflict_steps=0, conflict_steps_left_out=0, conflict_steps_left_out_by_reason={})
    if tracks.empty:
        return out
    from pipelines.features import Samples, TrackIndex
    grid = tracks if on_grid(tracks, predictor.step_s) else predictor.grid(tracks)
    grid = grid.reset_index(drop=True)
    conf = predictor.detect(grid)
    if start is not None and len(conf):
        conf = conf[conf["time"] >= pd.Timestamp(start)]
    if conf.empty:
        return out
    steps = conf["conflict"].astype(bool).to_numpy()
    left = _left_out(conf, steps, grid, flt)
    keep = steps & (left == "")
    samples = conf[keep].sort_values(["time", "flight_id_1", "flight_id_2"], kind="stable").reset_index(drop=True)
    out.attrs.update(conflict_steps=int(keep.sum()), conflict_steps_left_out=int((left != "").sum()),
                     conflict_steps_left_out_by_reason=reason_counts(left[left != ""]))
    if samples.empty:
        return out
    acts = None
    if clearances is not None and len(clearances):
        horizon = pd.Timedelta(seconds=predictor.dcfg.clearance_horizon_s)
        acts = conform(clearances, ACTION_SCHEMA, "clearances")
        acts = acts[(acts["time"] >= samples["time"].min() - horizon) & (acts["time"] < samples["time"].max())]
        acts = acts.sort_values("time", kind="stable").reset_index(drop=True)
    idx = TrackIndex.build(grid, predictor.step_s)
    parts = []
    for a in range(0, len(samples), chunk):
        s = Samples.of(samples.iloc[a:a + chunk].reset_index(drop=True), ("tcpa_s", "dcpa_nm"))
        feats = predictor.features(s, idx, acts)
        choose_runtime(predictor, feats, runtime)
        (dec, _), = predictor.infer([Prepared(s, feats)])
        parts.append(decisions_frame(dec))
    res = conform(pd.concat(parts, ignore_index=True), PREDICTION_SCHEMA, "decisions")
    res.attrs.update(out.attrs)
    return res


def _left_out(conf: pd.DataFrame, steps: np.ndarray, grid: pd.DataFrame, flt: EnRouteFilter) -> np.ndarray:
    """Per detection row: '' unless it is a conflict step (``steps``) whose episode (pair and first detection)
    ``flt`` leaves out, then the reason. The rule is evaluated once per episode, on ``grid`` (with history)."""
    left = np.full(len(conf), "", dtype=object)
    if not flt.active or not steps.any():
        return left
    cols = ["flight_id_1", "flight_id_2", "first_detection"]
    runs = conf.loc[steps, cols].reset_index(drop=True)
    episodes = runs.drop_duplicates(ignore_index=True)
    episodes["reason"] = episode_reasons(episodes, grid, flt)
    left[steps] = runs.merge(episodes, on=cols, how="left", validate="many_to_one")["reason"].to_numpy(dtype=object)
    return left


# ------------------------------------------------------------------ partitions
def find_partitions(root: str | Path) -> list[dict]:
    """Leaf folders holding parquet files, oldest first: {key, folder, start, end} (bounds from the name)."""
    root = Path(root).resolve()               # absolute: workers of a cluster may run elsewhere
    folders = sorted({f.parent for f in parquet_files(root)})
    parts = []
    for folder in folders:
        key = folder.relative_to(root).as_posix() if folder != root else "."
        m = _KEY.search(key)
        start = end = None
        if m:
            start = pd.Timestamp(m.group(1), tz="UTC") + pd.Timedelta(hours=int(m.group(2) or 0))
            end = start + pd.Timedelta(hours=1 if m.group(2) else 24)
        parts.append({"key": key, "folder": str(folder), "start": start, "end": end})
    if not parts:
        raise DataError(f"{root}: no parquet track files (expected the day=... folders of `atc-il ingest`)")
    return sorted(parts, key=lambda p: (p["start"] is None, p["start"] or pd.Timestamp(0, tz="UTC"), p["key"]))


def _read_window(previous: list[dict], t_from, t_to, flights=None) -> pd.DataFrame:
    """Points in [t_from, t_to) from the previous partitions (nearest first), optionally of ``flights``."""
    frames = []
    for p in previous:
        if p["end"] <= t_from:
            break
        expr = (pc.field("time") >= pa.scalar(t_from, TIME)) & (pc.field("time") < pa.scalar(t_to, TIME))
        if flights is not None:
            expr &= pc.field("flight_id").isin(pa.array(sorted(flights), pa.string()))
        try:
            frames.append(read_table(p["folder"], TRACK_SCHEMA, filter=expr))
        except Exception as exc:
            raise DataError(f"history from the previous partition {p['key']} is unreadable: {exc}") from None
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else TRACK_SCHEMA.empty_table().to_pandas()


def _grid(df: pd.DataFrame, predictor) -> pd.DataFrame:
    return df if df.empty or on_grid(df, predictor.step_s) else predictor.grid(df)


def _run_history(ctx: pd.DataFrame, t0, previous: list[dict], predictor) -> pd.DataFrame:
    """Points before ``t0`` of the aircraft whose conflict run is already going at ``t0``, back to its start."""
    step = pd.Timedelta(seconds=predictor.step_s)
    gap = pd.Timedelta(seconds=predictor.conflicts.max_episode_gap_s)
    head = ctx[ctx["time"] <= t0 + gap]
    det = predictor.detect(head) if len(head) else head
    det = det[det["time"] <= t0 - step + gap] if len(det) else det      # could continue a detection before t0
    if det.empty:
        return ctx.iloc[:0]
    pairs = set(zip(det["flight_id_1"], det["flight_id_2"]))
    flights = {f for p in pairs for f in p}
    head = head[head["flight_id"].isin(flights)]
    earliest = min(p["start"] for p in previous)
    width = max(8 * gap, 24 * step)
    while True:
        ext = _grid(_read_window(previous, t0 - width, t0, flights), predictor)
        if ext.empty:
            return ext
        d = predictor.detect(pd.concat([ext, head], ignore_index=True))
        mine = np.array([p in pairs for p in zip(d["flight_id_1"], d["flight_id_2"])], dtype=bool)
        d = d[mine & (d["time"] >= t0).to_numpy()]
        run_start = d.groupby(["flight_id_1", "flight_id_2"])["first_detection"].min().min() if len(d) else t0
        if run_start - gap >= t0 - width or t0 - width <= earliest:
            return ext[ext["time"] >= min(run_start, t0)]
        width *= 2


def read_context(part: dict, previous: list[dict], predictor) -> tuple[pd.DataFrame, int]:
    """A partition's points with the history its decisions need (module doc); and its own point count."""
    own = read_table(part["folder"], TRACK_SCHEMA)
    if not previous or part["start"] is None or own.empty:
        return own, len(own)
    start = part["start"]
    t0 = start - pd.Timedelta(seconds=(predictor.dcfg.history_steps - 1) * predictor.step_s)
    tail = _read_window(previous, t0, start)
    ctx = _grid(pd.concat([f for f in (tail, own) if len(f)], ignore_index=True), predictor)
    extra = _run_history(ctx, t0, previous, predictor)
    return (pd.concat([extra, ctx], ignore_index=True) if len(extra) else ctx), len(own)


# ------------------------------------------------------------------ one task
def _clear(folder: Path) -> None:
    """Remove this stage's files (output, marker, temporaries) from an incomplete output folder."""
    for f in (folder / PART_FILE, folder / MARKER, folder / STATS_FILE, *folder.glob(".tmp-*")):
        if f.exists():
            f.unlink()


def finished(folder: str | Path) -> bool:
    folder = Path(folder)
    if not (is_complete(folder) and (folder / PART_FILE).exists()):
        return False
    try:
        return PART_FILE in json.loads((folder / MARKER).read_text() or "[]")
    except ValueError:
        return False


def process_partition(job: dict) -> dict:
    """Read (with history), predict, write atomically, mark complete. Never raises: failures are returned."""
    t = _time.perf_counter()
    res = {"key": job["key"], "status": "done", "points": 0, "conflict_steps": 0, "predictions": 0,
           "conflict_steps_left_out": 0, "conflict_steps_left_out_by_reason": {}}
    folder = Path(job["out"])
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _clear(folder)
        runtime = job.get("runtime", "auto")
        predictor = get_predictor(job["uri"], runtime)
        choose_runtime(predictor, predictor.example_features(), runtime, job.get("onnx"))
        tracks, res["points"] = read_context(job["part"], job["previous"], predictor)
        dec = predict_partition(tracks, predictor, job.get("clearances"), start=job["part"]["start"], runtime=runtime,
                                enroute=job.get("enroute"))
        res["runtime"] = predictor.runtime
        atomic_write_table(to_table(dec, PREDICTION_SCHEMA, "decisions"), folder / PART_FILE)
        res.update(conflict_steps=int(dec.attrs.get("conflict_steps", 0)), predictions=len(dec),
                   conflict_steps_left_out=int(dec.attrs.get("conflict_steps_left_out", 0)),
                   conflict_steps_left_out_by_reason=dict(dec.attrs.get("conflict_steps_left_out_by_reason", {})))
        write_json({k: res[k] for k in ("key", "points", "conflict_steps", "predictions", "conflict_steps_left_out",
                                        "conflict_steps_left_out_by_reason")}, folder / STATS_FILE)
        mark_complete(folder, [PART_FILE])
    except Exception as exc:     # reported per partition; the others go on
        msg = " ".join(str(exc).split()) or type(exc).__name__
        res.update(status="failed", error=f"{type(exc).__name__}: {msg}"[:2000])
    res["seconds"] = round(_time.perf_counter() - t, 3)
    res["pid"] = os.getpid()
    res["peak_rss_mib"] = _peak_rss_mib()       # the process's high-water mark so far (memory per worker)
    return res


def _peak_rss_mib() -> float | None:
    try:
        import resource
    except ImportError:                           # not on Windows
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ------------------------------------------------------------------ the driver
def read_clearances(path: str | Path | None) -> pd.DataFrame | None:
    """A folder of ACTION_SCHEMA parquet (e.g. WORK/actions) or a clearance log file (CSV or parquet)."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        return read_table(path, ACTION_SCHEMA)
    from pipelines.actions import read_clearance_log
    return read_clearance_log(path)


def _jobs(parts: list[dict], out: Path, uri: str, clearances, horizon_s: float, runtime: str = "auto",
          enroute: EnRouteFilter | None = None) -> list[dict]:
    """One job per partition (picklable for Dask): ``enroute`` is the driver's loaded filter, so workers need
    no airspace file and use the polygon the driver checked (None: keep everything)."""
    jobs = []
    for i, p in enumerate(parts):
        prev = [q for q in parts[:i][::-1] if q["start"] is not None] if p["start"] is not None else []
        acts = None
        if clearances is not None and p["start"] is not None:
            acts = clearances[(clearances["time"] >= p["start"] - pd.Timedelta(seconds=horizon_s))
                              & (clearances["time"] < p["end"])].reset_index(drop=True)
        elif clearances is not None:
            acts = clearances
        jobs.append({"key": p["key"], "part": p, "previous": prev, "uri": uri, "clearances": acts, "runtime": runtime,
                     "out": str(out if p["key"] == "." else out / p["key"]), "enroute": enroute})
    return jobs


_NO_ENROUTE = {"min_alt_ft": None, "airspace": None, "sector": None, "airspace_sha256": None}
_ENROUTE_OPTS = {"min_alt_ft": "--min-alt-ft", "airspace_sha256": "--airspace", "sector": "--sector"}


def enroute_settings(flt: EnRouteFilter) -> dict:
    """What an output folder records of the en-route focus: the settings and the airspace file's sha256 (the
    polygon, not its path, is what decides; a file edited in place is another setting)."""
    d = flt.describe()
    sha = hashlib.sha256(Path(d["airspace"]).read_bytes()).hexdigest() if d["airspace"] else None
    return json.loads(json.dumps({**d, "airspace_sha256": sha}))       # as read back from the JSON


def _check_model(out: Path, predictor, enroute: dict | None = None) -> None:
    """Refuse an output folder that holds predictions of another model or of other en-route settings (its
    finished partitions would be reused: skipped, mixed into this run's output); record this run's."""
    enroute = enroute or _NO_ENROUTE
    meta = {"uri": predictor.uri, "spec_hash": predictor.feature_spec.spec_hash,
            "history_steps": predictor.dcfg.history_steps, "step_s": predictor.step_s}
    path = out / MODEL_FILE
    if path.exists():
        old = json.loads(path.read_text())
        if {k: old.get(k) for k in meta} != meta:
            raise ConfigError(f"{out} holds predictions of another model ({old.get('uri')}, spec {old.get('spec_hash')}); "
                              f"choose another --out or remove it")
        was = {**_NO_ENROUTE, **(old.get("enroute") or {})}       # none recorded: predicted before the focus existed
        differ = [k for k in _ENROUTE_OPTS if was.get(k) != enroute.get(k)]
        if differ:
            def show(d: dict, k: str) -> str:
                if k != "airspace_sha256":
                    return f"{_ENROUTE_OPTS[k]} {d.get(k)}"
                return f"--airspace {d.get('airspace')}" + (f" (sha256 {d[k][:12]})" if d.get(k) else "")
            raise ConfigError(f"{out} holds predictions made with other en-route settings: "
                              f"{', '.join(show(was, k) for k in differ)} there, "
                              f"{', '.join(show(enroute, k) for k in differ)} now; its finished partitions are not "
                              f"reused across settings: rerun with the same settings, choose another --out or remove it")
    write_json({**meta, "enroute": enroute}, path)


def _execute(jobs: list[dict], engine: str, workers: int, scheduler: str | None, progress) -> list[dict]:
    if engine == "local":
        results = []
        for j in track(jobs, "predict", show=progress):
            results.append(process_partition(j))
            checkpoint("predict")
        return results
    import logging

    from distributed import Client, LocalCluster, as_completed
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
        client = Client(cluster)
    try:
        futures = client.map(process_partition, jobs, pure=False)
        return [f.result() for f in track(as_completed(futures), "predict", total=len(futures), show=progress)]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run(tracks_dir: str | Path, out_dir: str | Path, model_uri: str, *, engine: str | None = None, workers: int = 1,
        scheduler: str | None = None, clearances: str | Path | pd.DataFrame | None = None,
        progress: bool | None = None, runtime: str = "auto", enroute: EnRouteConfig | dict | None = None) -> dict:
    """Predict every partition of ``tracks_dir`` into ``out_dir``; returns the summary (also in
    OUT/predict_report.json). ``engine``: ``local`` (in-process) or ``dask`` (a LocalCluster of
    ``workers`` single-thread processes, or the cluster at ``scheduler``); default local for one worker.
    ``runtime``: the context network's (``auto``: ONNX Runtime where it reproduces PyTorch; :func:`choose_runtime`).
    ``enroute``: the en-route focus (module doc; default none: every conflict step is predicted); the summary
    records it (``enroute``) and counts the conflict steps it left out (``conflict_steps_left_out``, by reason).
    An ``out_dir`` predicted with other settings is refused."""
    t = _time.perf_counter()
    engine = engine or ("dask" if workers > 1 or scheduler else "local")
    if engine not in ("local", "dask"):
        raise ConfigError(f"unknown engine {engine!r}; choose local or dask")
    require_complete(tracks_dir, "ingest")
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    cfg = enroute if isinstance(enroute, EnRouteConfig) else validate(EnRouteConfig, enroute or {}, "enroute")
    if cfg.airspace:                                   # recorded absolute: reruns from elsewhere compare the same
        cfg = cfg.model_copy(update={"airspace": str(Path(cfg.airspace).resolve())})
    flt = enroute_filter(cfg)                          # an unusable airspace file is refused before anything is written
    predictor = get_predictor(str(model_uri), runtime)   # fails early on a bad URI; reused by the local engine
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _check_model(out, predictor, enroute_settings(flt))
    (out / RUN_RECORD).unlink(missing_ok=True)        # written again when every partition is done
    acts = clearances if isinstance(clearances, pd.DataFrame) or clearances is None else read_clearances(clearances)
    if acts is not None:
        acts = conform(acts, ACTION_SCHEMA, "clearances").sort_values("time", kind="stable").reset_index(drop=True)
    # the context network is exported to ONNX once, here; workers open the same graph (no export per process)
    choose_runtime(predictor, predictor.example_features(), runtime)
    onnx = getattr(predictor.encode, "model_bytes", None) if predictor.runtime == "onnxruntime" else None
    jobs = _jobs(find_partitions(tracks_dir), out, str(model_uri), acts, predictor.dcfg.clearance_horizon_s, runtime,
                 flt if flt.active else None)
    for j in jobs:
        j["onnx"] = onnx
    todo = [j for j in jobs if not finished(j["out"])]
    results = _execute(todo, engine, workers, scheduler, progress) if todo else []
    seconds = _time.perf_counter() - t
    done = [r for r in results if r["status"] == "done"]
    failed = {r["key"]: r["error"] for r in results if r["status"] == "failed"}
    points = sum(r["points"] for r in done)
    report = {
        "model": str(model_uri), "engine": engine,
        "runtime": sorted({r.get("runtime", "") for r in done}) or [runtime], "workers": workers if engine == "dask" and not scheduler else 1,
        "scheduler": scheduler, "partitions": len(jobs), "partitions_done": len(done),
        "partitions_skipped": len(jobs) - len(todo), "partitions_failed": len(failed),
        "track_points": points, "conflict_steps": sum(r["conflict_steps"] for r in done),
        "predictions": sum(r["predictions"] for r in done), "enroute": flt.describe(),
        "conflict_steps_left_out": sum(r["conflict_steps_left_out"] for r in done),
        "conflict_steps_left_out_by_reason": _sum_counts(r["conflict_steps_left_out_by_reason"] for r in done),
        "seconds": round(seconds, 3),
        "points_per_s": round(points / seconds, 1) if seconds > 0 else 0.0, "failed": failed,
        "per_partition": sorted(results, key=lambda r: r["key"]), "out": str(out)}
    report["cumulative"] = _cumulate(jobs)
    write_json(report, out / REPORT_FILE)
    if not failed:
        write_json({"stage": "predict", "model": str(model_uri), "tracks": str(tracks_dir),
                    "files": sorted(f"{j['key']}/{PART_FILE}" if j["key"] != "." else PART_FILE for j in jobs),
                    "predictions": report["cumulative"]["predictions"], "enroute": flt.describe(),
                    **{k: report["cumulative"][k] for k in ("conflict_steps_left_out",
                                                            "conflict_steps_left_out_by_reason")}}, out / RUN_RECORD)
    return report


def _sum_counts(counts: Iterable[dict | None]) -> dict:
    """The sum of {reason: count} dicts, in pipelines.enroute.REASONS order."""
    total: Counter = Counter()
    for c in counts:
        total.update({k: int(v) for k, v in (c or {}).items()})
    return {k: total[k] for k in (*REASONS, *sorted(set(total) - set(REASONS))) if total[k]}


def _cumulate(jobs: list[dict]) -> dict:
    """Totals over every finished partition of the output, whichever run (before a restart or now) did it."""
    parts = {}
    for j in jobs:
        if finished(j["out"]):
            try:
                parts[j["key"]] = json.loads((Path(j["out"]) / STATS_FILE).read_text())
            except (OSError, ValueError):   # finished by a version without the stats file
                parts[j["key"]] = {"key": j["key"], "points": 0, "conflict_steps": 0,
                                   "predictions": pq.ParquetFile(Path(j["out"]) / PART_FILE).metadata.num_rows}
    return {"partitions_done": len(parts), "partitions": len(jobs),
            "track_points": sum(int(v.get("points", 0)) for v in parts.values()),
            **{k: sum(int(v.get(k, 0)) for v in parts.values())
               for k in ("conflict_steps", "predictions", "conflict_steps_left_out")},
            "conflict_steps_left_out_by_reason": _sum_counts(v.get("conflict_steps_left_out_by_reason")
                                                             for v in parts.values())}


def run_predict(model_uri: str, tracks_dir: str | Path, out_dir: str | Path, **kwargs) -> dict:
    """:func:`run` with the model first (as ``atc_il_cli.quickstart`` calls it); ``conflicts`` = conflict steps."""
    rep = run(tracks_dir, out_dir, model_uri, **kwargs)
    return {**rep, "conflicts": rep["conflict_steps"]}
