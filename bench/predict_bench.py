"""Batch prediction throughput (track points per second) and how Dask scales: in-process, a Dask
LocalCluster of 1 and of ``--workers`` single-thread worker processes, and a scheduler and workers started
separately on loopback (``dask scheduler`` + ``dask worker``, passed as ``scheduler``) with 1 and
``--workers`` workers, side by side in one run on the same dense traffic and the same model.

    .venv/bin/python bench/predict_bench.py [--days 2] [--hours 8] [--background 220] [--conflicts 40]
                                            [--config gru_mdn] [--by-hour] [--workers 2] [--no-dask]
                                            [--workdir /tmp/atc-il-predict] [--peer DIR --peer-name NAME]

Setup (cached in --workdir, not timed): a small sample trains the model (``--config``, one short epoch:
throughput does not depend on the weights), then dense synthetic traffic is sampled and ingested into
day partitions (``--by-hour``: hour partitions). Both engines run ``models.batch_predict.run`` end to end
(partition discovery, reads with history, detection, features, the policy, atomic writes), the Dask
LocalCluster rows including the cluster's start-up; the separately started cluster is up
before its rows are timed (as on a cluster), each worker loading the model in its first task. Appends a table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _machine import append_results  # noqa: E402

os.environ.setdefault("ATC_IL_PROGRESS", "0")
ROOT = Path(__file__).resolve().parents[1]


def make_model(work: Path, config: str) -> Path:
    best = work / "model" / "run" / "best"
    if best.exists():
        return best
    from atc_il.config import PipelineConfig
    from models.config import load_model_config
    from models.train import train
    from pipelines import actions, conflicts
    from pipelines.dataset import build
    from pipelines.ingest import ingest
    from pipelines.sample import SampleSpec, make_sample
    w, cfg = work / "model", PipelineConfig()
    info = make_sample(w / "raw", SampleSpec(days=3))
    ingest([Path(p) for p in info["track_files"]], w, fmt="opensky", config=cfg, progress=False)
    conflicts.run(w / "tracks", w, cfg.conflicts, progress=False)
    actions.run(w / "tracks", w, cfg.actions, log=Path(info["clearance_log"]),
                flight_plans=Path(info["flight_plans"]), episodes_dir=w / "episodes")
    build(w, None, cfg, progress=False)
    mc = load_model_config(ROOT / "models" / "configs" / f"{config}.yaml", train={"epochs": 1, "max_steps": 20, "device": "cpu"})
    train(mc, w / "dataset", w / "run", tracking_uri=False, progress=False)
    return best


def make_traffic(work: Path, days: int, hours: float, background: int, conflicts: int, by_hour: bool) -> dict:
    data = work / f"traffic-d{days}-h{hours:g}-b{background}-c{conflicts}{'-hourly' if by_hour else ''}"
    info_file = data / "info.json"
    if info_file.exists():
        return json.loads(info_file.read_text())
    shutil.rmtree(data, ignore_errors=True)
    from atc_il.io import read_table, write_partitioned
    from atc_il.schemas import TRACK_SCHEMA
    from pipelines.ingest import ingest
    from pipelines.sample import SampleSpec, make_sample
    info = make_sample(data / "raw", SampleSpec(days=days, hours_per_day=hours, background_per_hour=background,
                                                conflicts_per_hour=conflicts, seed=1))
    rep = ingest(sorted((data / "raw").glob("opensky_day*.csv")), data, fmt="opensky", progress=False)
    tracks = data / "tracks"
    if by_hour:
        df = read_table(tracks, TRACK_SCHEMA)
        tracks = data / "tracks_hourly"
        write_partitioned(df, TRACK_SCHEMA, tracks, by_hour=True, what="tracks")
    out = {"tracks": str(tracks), "clearances": info["clearance_log"], "raw_rows": info["raw_rows"],
           "points": rep.points_out}
    info_file.write_text(json.dumps(out))
    return out


PEER = r"""
import json, os, sys, time
os.environ["ATC_IL_PROGRESS"] = "0"
import torch
from models.batch_predict import run
t = time.perf_counter()
rep = run(sys.argv[1], sys.argv[2], sys.argv[3], clearances=sys.argv[4], engine="local")
rep["threads"] = torch.get_num_threads()
print("RESULT " + json.dumps({k: v for k, v in rep.items() if k != "per_partition"} | {
    "busy": sum(r["seconds"] for r in rep["per_partition"])}))
"""


def run_peer(code: Path, tracks: str, out: Path, uri: str, clearances: str) -> dict:
    """``models.batch_predict.run`` (in-process engine) of another checkout, in a fresh process."""
    import subprocess
    env = dict(os.environ, PYTHONPATH=str(code), ATC_IL_PROGRESS="0")
    proc = subprocess.run([sys.executable, "-c", PEER, tracks, str(out), uri, clearances], capture_output=True,
                          text=True, env=env, cwd=str(code))
    if proc.returncode:
        sys.exit(f"peer failed:\n{proc.stderr[-3000:]}")
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])


@contextlib.contextmanager
def external_cluster(workers: int):
    """A scheduler and ``workers`` single-thread worker processes started separately on loopback, as on a
    cluster (``dask scheduler`` + ``dask worker``), all up before the timing starts; stopped afterwards."""
    import socket
    import subprocess
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PYTHONPATH=str(ROOT), ATC_IL_PROGRESS="0")
    procs = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, cwd=str(ROOT), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    try:
        procs.append(subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nthreads", "1", "--nworkers",
                                       str(workers), "--no-dashboard"], env=env, cwd=str(ROOT),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client
        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
        yield address
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs[::-1]:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--hours", type=float, default=8.0, help="hours of traffic per day")
    ap.add_argument("--background", type=int, default=220, help="background flights per hour")
    ap.add_argument("--conflicts", type=int, default=40, help="injected conflict pairs per hour")
    ap.add_argument("--config", default="gru_mdn", help="model configuration in models/configs")
    ap.add_argument("--by-hour", action="store_true", help="hour partitions instead of day partitions")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/atc-il-predict"))
    ap.add_argument("--peer", type=Path, default=None,
                    help="a checkout of another version (e.g. `git archive main | tar -x -C DIR`): its in-process "
                         "run is timed first, in a fresh process, on the same data and model")
    ap.add_argument("--peer-name", default="peer")
    ap.add_argument("--no-dask", action="store_true", help="only the in-process rows")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    uri = str(make_model(args.workdir / args.config, args.config))
    data = make_traffic(args.workdir, args.days, args.hours, args.background, args.conflicts, args.by_hour)
    print(f"setup {time.perf_counter() - t:.1f} s: {data['points']:,} grid points in {data['tracks']}", flush=True)

    import pandas as pd
    import torch

    from models.batch_predict import run
    results = {}
    if args.peer:
        out = args.workdir / "out" / "peer"
        shutil.rmtree(out, ignore_errors=True)
        rep = run_peer(args.peer.resolve(), data["tracks"], out, uri, data["clearances"])
        name = f"{args.peer_name}: in-process, PyTorch ({rep['threads']} threads)"
        results[name] = (rep, rep["busy"], out, 2)
        print(f"{name:40s} {rep['seconds']:7.1f} s  {rep['points_per_s']:10,.0f} points/s", flush=True)
    torch.set_num_threads(1)           # this version in-process: one core (ONNX Runtime and the head, 1 thread each)
    rows = [("in-process, 1 thread", {"engine": "local"}, 1, None)]
    if not args.no_dask:
        rows += [(f"Dask LocalCluster, {n} x 1-thread worker{'s' if n > 1 else ''}",
                  {"engine": "dask", "workers": n}, n, None) for n in sorted({1, args.workers})]
        rows += [(f"dask scheduler + {n} x 1-thread `dask worker` (loopback)", {"engine": "dask"}, n, n)
                 for n in sorted({1, args.workers})]
    for name, kw, cores, external in rows:
        out = args.workdir / "out" / f"{kw['engine']}-{kw.get('workers', 0)}-{external or 0}"
        shutil.rmtree(out, ignore_errors=True)
        with (external_cluster(external) if external else contextlib.nullcontext()) as address:
            if address:
                kw = {**kw, "scheduler": address}
            rep = run(data["tracks"], out, uri, clearances=data["clearances"], **kw)
        if rep["partitions_failed"]:
            sys.exit(f"{name}: partitions failed: {rep['failed']}")
        busy = sum(r["seconds"] for r in rep["per_partition"])
        name = f"{name}, {'/'.join(rep['runtime'])}"
        results[name] = (rep, busy, out, cores)
        print(f"{name:40s} {rep['seconds']:7.1f} s  {rep['points_per_s']:10,.0f} points/s  "
              f"{rep['predictions']:,} predictions  workers' pids {sorted({r['pid'] for r in rep['per_partition']})}",
              flush=True)

    read = lambda o: pd.concat([pd.read_parquet(f) for f in sorted(o.rglob("part-0.parquet"))]).sort_values(
        ["time", "flight_id_1", "flight_id_2"]).reset_index(drop=True)
    outs = [read(o) for _, _, o, _ in results.values()]
    ref = outs[0]
    disc = ["time", "flight_id_1", "flight_id_2", "act", "aircraft", "action_type"]
    same = all(len(o) == len(ref) and (o[disc] == ref[disc]).all().all() for o in outs[1:])
    dp = max((float((o["p_act"] - ref["p_act"]).abs().max()) if len(o) == len(ref) else float("nan"))
             for o in outs[1:])
    first = next(iter(results.values()))[0]
    lines = ["| engine | partitions | track points | conflict steps | predictions | wall s | partition-busy s | "
             "points / s | cores | points / s per core | vs first row | vs 1 worker of its kind | peak RSS per process (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    kind = lambda name: "local" if "LocalCluster" in name else "external" if "dask scheduler" in name else name
    one = {kind(n): r["points_per_s"] for n, (r, _, _, c) in results.items() if c == 1}
    for name, (rep, busy, _, cores) in results.items():
        lines.append(f"| {name} | {rep['partitions']} | {rep['track_points']:,} | {rep['conflict_steps']:,} | "
                     f"{rep['predictions']:,} | {rep['seconds']:.1f} | {busy:.1f} | {rep['points_per_s']:,.0f} | "
                     f"{cores} | {rep['points_per_s'] / cores:,.0f} | {rep['points_per_s'] / first['points_per_s']:.2f}x | "
                     f"{rep['points_per_s'] / one[kind(name)]:.2f}x | "
                     f"{max((r.get('peak_rss_mib') or 0) for r in rep['per_partition']):,.0f} |")
    try:
        load = f" Load average at the end: {os.getloadavg()[0]:.1f} (the machine is shared with other engineers' jobs)."
    except OSError:
        load = ""
    body = (f"`.venv/bin/python bench/predict_bench.py --days {args.days} --hours {args.hours:g} --background "
            f"{args.background} --conflicts {args.conflicts} --config {args.config}{' --by-hour' if args.by_hour else ''}"
            f"{' --peer ' + str(args.peer) + ' --peer-name ' + args.peer_name if args.peer else ''}`: "
            f"{data['points']:,} grid points (5 s) of dense synthetic traffic in {first['partitions']} "
            f"{'hour' if args.by_hour else 'day'} partitions, model `{args.config}` (CPU), clearance log as features. "
            f"Wall time is `models.batch_predict.run` end to end (LocalCluster rows include starting the cluster; "
            f"the separately started workers are up before their rows; the first row of this version includes the "
            f"driver's one ONNX export, which later rows reuse, while every worker opens the graph in its first "
            f"task); partition-busy is the sum of the "
            f"per-partition task times. Same decisions in every row (time, pair, act, aircraft, type): "
            f"{'yes' if same else 'NO'} (max |p_act| difference {dp:.1e}).{load}\n\n" + "\n".join(lines))
    print(body)
    if not args.no_record:
        append_results("Batch prediction: in-process, Dask with 1 and 2 workers (bench/predict_bench.py)", body)


if __name__ == "__main__":
    main()
