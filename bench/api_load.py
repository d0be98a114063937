"""Load test of the REST service over real loopback HTTP: `atc-il serve` in a subprocess (uvicorn), a bounded
load generator in this process.

    .venv/bin/python bench/api_load.py [--workers 2] [--seconds 8] [--rate 200] [--repeat 3] [--levels 1,8,32]

- model: the default architecture (models/configs/gru_mdn.yaml) trained briefly (--epochs) on the embedded
  sample; payloads are real conflicts of that sample, each 2 aircraft x 24 track points;
- closed loop: throughput and p50/p95/p99 latency at concurrency 1, 8, 32 for /v1/predict (one conflict) and
  /v1/predict/batch (--batch conflicts), each level bounded by --seconds (in-flight requests are awaited);
- open loop: --rate requests/s on /v1/predict for --repeat windows of --seconds, latency measured from each
  request's scheduled time (no coordinated omission), at most 256 in flight (beyond: counted as dropped); the
  requests go in turn over the 16 keep-alive connections the warm-up opened, as from 16 clients; verdict
  p99 < 25 ms over all windows' requests (one window's p99 moves by several ms on this noisy machine);
- the load generator is a lean asyncio HTTP/1.1 client on uvloop (it shares the cores with the service);
- the peer, side by side: the service's own work (validation, features, forward pass, response) called
  in-process on the same requests (no HTTP), and the ratio.
Prints a markdown table and appends it to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import append_results  # noqa: E402

P99_TARGET_MS = 25.0
MAX_IN_FLIGHT = 256
CLIENTS = 16          # keep-alive connections opened by the warm-up (the service's workers each own some)


def build_model(work: Path, epochs: int) -> Path:
    """The embedded sample through the chain, and the default architecture trained briefly (no MLflow)."""
    best = work / "run" / "best"
    if best.exists():
        return best
    from atc_il.config import PipelineConfig
    from models.config import load_model_config
    from models.train import train
    from pipelines import actions as act
    from pipelines import conflicts as con
    from pipelines.dataset import build
    from pipelines.ingest import ingest
    from pipelines.sample import SampleSpec, make_sample
    cfg = PipelineConfig()
    info = make_sample(work / "raw", SampleSpec(days=3, seed=0))
    ingest([Path(p) for p in info["track_files"]], work, fmt="opensky", config=cfg)
    con.run(work / "tracks", work, cfg.conflicts)
    act.run(work / "tracks", work, cfg.actions, log=Path(info["clearance_log"]),
            flight_plans=Path(info["flight_plans"]), episodes_dir=work / "episodes")
    build(work, None, cfg)
    train(load_model_config(ROOT / "models/configs/gru_mdn.yaml", train={"epochs": epochs, "device": "cpu"}),
          work / "dataset", work / "run", tracking_uri=False, progress=False)
    return best


def payloads(work: Path, n: int, points: int = 24) -> list[dict]:
    """Up to ``n`` real conflicts: both aircraft's last ``points`` grid points, 30 s after first detection."""
    import pandas as pd
    tracks = pd.read_parquet(work / "tracks", columns=["time", "flight_id", "lat_deg", "lon_deg", "alt_ft", "gs_kt",
                                                       "trk_deg", "vs_fpm"])
    out = []
    for ep in pd.read_parquet(work / "episodes").sort_values("first_detection").itertuples():
        at = ep.first_detection + pd.Timedelta(seconds=30)
        win = tracks[(tracks.time <= at) & tracks.flight_id.isin([ep.flight_id_1, ep.flight_id_2])]
        acs = []
        for fid in (ep.flight_id_1, ep.flight_id_2):
            d = win[win.flight_id == fid].sort_values("time").tail(points)
            if len(d) < points or d.time.iloc[-1] != at:
                break
            acs.append({"flight_id": fid, "points": [
                {"time": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "lat_deg": r.lat_deg, "lon_deg": r.lon_deg,
                 "alt_ft": r.alt_ft, "gs_kt": r.gs_kt, "trk_deg": r.trk_deg, "vs_fpm": r.vs_fpm}
                for t, r in zip(d.time, d.itertuples())]})
        if len(acs) == 2:
            out.append({"aircraft": acs})
        if len(out) >= n:
            break
    if not out:
        sys.exit("no conflict with 24 points per aircraft in the sample")
    return out


def in_process_peer(model: Path, bodies: list[dict], n: int, runtime: str = "auto") -> np.ndarray:
    """Latency (ms) of the service's own work called in-process on the same requests, one thread, no HTTP:
    request validation, features, one forward pass, the response dict."""
    import gc

    import torch

    from api import schemas as S
    from api.service import ModelService
    torch.set_num_threads(1)
    svc = ModelService(str(model), torch_threads=1, runtime=runtime)
    svc.load()
    gc.collect()
    gc.freeze()     # as the service does after loading
    request = S.conflict_request_model(S.N_ALTERNATIVES_LIMIT)

    def one(body):
        item = svc.prepare_conflict(request.model_validate(body))
        (result,) = svc.infer([item])
        return svc.conflicts_out(item, result)
    for b in bodies[:5]:
        one(b)
    lat = []
    for i in range(n):
        t = time.perf_counter()
        one(bodies[i % len(bodies)])
        lat.append((time.perf_counter() - t) * 1e3)
    return np.array(lat)


class Service:
    """`atc-il serve` in a subprocess on a free loopback port."""

    def __init__(self, model: Path, workers: int, max_batch: int, runtime: str = "auto"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.key = secrets.token_urlsafe(24)
        env = {**os.environ, "ATC_IL_API_KEYS": self.key, "ATC_IL_PROGRESS": "0"}
        self.proc = subprocess.Popen([sys.executable, "-m", "atc_il_cli.cli", "serve", "--model", str(model),
                                      "--port", str(self.port), "--workers", str(workers), "--max-batch",
                                      str(max_batch), "--runtime", runtime, "--log-level", "warning"], cwd=ROOT,
                                     env=env)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 180.0) -> None:
        import httpx
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                sys.exit(f"the service exited with status {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/v1/health/ready", headers={"X-API-Key": self.key}).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        sys.exit("the service did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RawClient:
    """A lean HTTP/1.1 keep-alive client for the load generator (asyncio streams, pre-encoded bodies): it
    shares the 2 cores with the service, so it must cost far less per request than httpx (~1 ms of CPU).

    Idle connections are reused in turn (first in, first out), as many independent clients would spread
    their requests: the service's workers each own the connections they accepted, and reusing only the most
    recent one or two (last in, first out) would send an open-loop load to one worker."""

    def __init__(self, url: str, key: str, max_connections: int = MAX_IN_FLIGHT):
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        self.host, self.port, self.key = host, int(port), key
        self.idle: collections.deque = collections.deque()
        self.sem = asyncio.Semaphore(max_connections)

    async def post(self, path: str, body: bytes) -> int:
        """POST ``body`` (JSON bytes) and return the status code (the body is read and dropped). A kept-alive
        connection the server closed meanwhile (idle timeout) is replaced once."""
        async with self.sem:
            while self.idle:
                try:
                    return await self._exchange(self.idle.popleft(), path, body)
                except (asyncio.IncompleteReadError, ConnectionError):
                    continue
            return await self._exchange(await asyncio.open_connection(self.host, self.port), path, body)

    async def _exchange(self, conn, path: str, body: bytes) -> int:
        reader, writer = conn
        try:
            writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nX-API-Key: {self.key}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        self.idle.append(conn)
        return status

    async def close(self) -> None:
        for _, w in self.idle:
            w.close()


async def closed_loop(client, path: str, bodies: list[dict], concurrency: int, seconds: float) -> dict:
    """``concurrency`` clients, each sending its next request when the last one is answered, until the deadline."""
    lat, errors, sent = [], 0, [0]
    deadline = time.perf_counter() + seconds

    async def user(u: int):
        nonlocal errors
        i = u
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                status = await client.post(path, bodies[i % len(bodies)])
            except (OSError, asyncio.IncompleteReadError, ValueError):
                status = None
            sent[0] += 1
            if status == 200:
                lat.append((time.perf_counter() - t) * 1e3)
            else:
                errors += 1
            i += concurrency
    t0 = time.perf_counter()
    await asyncio.gather(*(user(u) for u in range(concurrency)))
    return {"lat": np.array(lat), "errors": errors, "requests": sent[0], "wall": time.perf_counter() - t0}


async def open_loop(client, path: str, bodies: list[dict], rate: float, seconds: float) -> dict:
    """Requests scheduled every 1/rate s for ``seconds``; latency from the scheduled time; bounded in flight."""
    lat, errors, dropped, tasks = [], 0, 0, []
    in_flight = [0]

    async def one(body, scheduled):
        nonlocal errors
        in_flight[0] += 1
        try:
            try:
                status = await client.post(path, body)
            except (OSError, asyncio.IncompleteReadError, ValueError):   # counted as an error, the run goes on
                status = None
            if status == 200:
                lat.append((time.perf_counter() - scheduled) * 1e3)
            else:
                errors += 1
        finally:
            in_flight[0] -= 1
    n = int(rate * seconds)
    t0 = time.perf_counter()
    for i in range(n):
        scheduled = t0 + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if in_flight[0] >= MAX_IN_FLIGHT:
            dropped += 1
            continue
        tasks.append(asyncio.create_task(one(bodies[i % len(bodies)], scheduled)))
    await asyncio.gather(*tasks)
    return {"lat": np.array(lat), "errors": errors, "dropped": dropped, "requests": n,
            "wall": time.perf_counter() - t0}


def _open_row(load: str, runs: list[dict]) -> dict:
    lat = np.concatenate([r["lat"] for r in runs])
    wall = sum(r["wall"] for r in runs)
    return {"endpoint": "/v1/predict", "load": load, "requests": sum(r["requests"] for r in runs),
            "errors": sum(r["errors"] for r in runs), "dropped": sum(r["dropped"] for r in runs),
            "req_s": len(lat) / wall, "conflicts_s": len(lat) / wall, "p": pct(lat)}


def pct(lat: np.ndarray) -> tuple:
    return tuple(np.percentile(lat, [50, 95, 99])) if len(lat) else (float("nan"),) * 3


async def run_load(svc: Service, singles, batches, levels, seconds, rate, repeat: int = 1) -> tuple[list, dict]:
    rows = []
    client = RawClient(svc.url, svc.key)
    singles = [json.dumps(b).encode() for b in singles]
    per_batch = len(batches[0]["conflicts"])
    batches = [json.dumps(b).encode() for b in batches]
    try:
        # warm-up; it also opens CLIENTS connections, which the open loop then uses in turn like as many clients
        await closed_loop(client, "/v1/predict", singles, CLIENTS, 2.0)
        for path, bodies, per in (("/v1/predict", singles, 1), ("/v1/predict/batch", batches, per_batch)):
            for c in levels:
                r = await closed_loop(client, path, bodies, c, seconds)
                ok = len(r["lat"])
                rows.append({"endpoint": path, "load": f"closed loop, concurrency {c}", "requests": r["requests"],
                             "errors": r["errors"], "dropped": 0, "req_s": ok / r["wall"],
                             "conflicts_s": ok * per / r["wall"], "p": pct(r["lat"])})
        runs = []
        for k in range(repeat):
            r = await open_loop(client, "/v1/predict", singles, rate, seconds)
            runs.append(r)
            if repeat > 1:
                rows.append(_open_row(f"open loop, {rate:g} req/s offered, window {k + 1} of {repeat}", [r]))
        rate_row = _open_row(f"open loop, {rate:g} req/s offered" + (f", all {repeat} windows" if repeat > 1 else ""),
                             runs)
        rows.append(rate_row)
    finally:
        await client.close()
    return rows, rate_row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/atc-il-api-load"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each load level")
    ap.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s on /v1/predict")
    ap.add_argument("--repeat", type=int, default=3, help="open-loop windows (--seconds each); verdict on all")
    ap.add_argument("--batch", type=int, default=32, help="conflicts per batch request")
    ap.add_argument("--levels", default="1,8,32", help="closed-loop concurrency levels (empty: open loop only)")
    ap.add_argument("--runtime", default="auto", help="the service's --runtime (auto, onnx, torch)")
    ap.add_argument("--no-results", action="store_true", help="do not append to bench/RESULTS.md")
    a = ap.parse_args()
    os.environ.setdefault("ATC_IL_PROGRESS", "0")
    levels = [int(x) for x in a.levels.split(",") if x.strip()]
    t_setup = time.perf_counter()
    model = build_model(a.workdir, a.epochs)
    singles = payloads(a.workdir, 64)
    batches = [{"conflicts": [singles[(k * a.batch + j) % len(singles)] for j in range(a.batch)]} for k in range(4)]
    peer = in_process_peer(model, singles, 200, a.runtime)
    print(f"setup {time.perf_counter() - t_setup:.0f} s; {len(singles)} distinct conflicts; in-process p50 "
          f"{np.median(peer):.1f} ms", flush=True)
    svc = Service(model, a.workers, max(64, a.batch), a.runtime)
    try:
        svc.wait_ready()
        try:   # the generator's own event loop in C too: it shares the 2 cores with the service
            import uvloop
            run = uvloop.run
        except ImportError:
            run = asyncio.run
        rows, rate_row = run(run_load(svc, singles, batches, levels, a.seconds, a.rate, a.repeat))
    finally:
        svc.stop()
    p_peer = pct(peer)
    single1 = next(r for r in rows if r["endpoint"] == "/v1/predict")
    lines = ["| endpoint | load | requests | errors | dropped | req/s | conflicts/s | p50 ms | p95 ms | p99 ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['endpoint']} | {r['load']} | {r['requests']} | {r['errors']} | {r['dropped']} | "
                     f"{r['req_s']:.1f} | {r['conflicts_s']:.1f} | " + " | ".join(f"{v:.1f}" for v in r["p"]) + " |")
    rate_peer = 1e3 / peer.mean()
    lines.append(f"| peer: the service's work in-process (no HTTP) | sequential, 1 thread | {len(peer)} | 0 | 0 | "
                 f"{rate_peer:.1f} | {rate_peer:.1f} | " + " | ".join(f"{v:.1f}" for v in p_peer) + " |")
    ok = rate_row["p"][2] < P99_TARGET_MS and rate_row["dropped"] == 0 and rate_row["errors"] == 0
    verdict = (f"**p99 < {P99_TARGET_MS:g} ms at {a.rate:g} req/s on /v1/predict: {'yes' if ok else 'NO'}** "
               f"(p99 {rate_row['p'][2]:.1f} ms, {rate_row['req_s']:.1f} req/s answered, {rate_row['dropped']} "
               f"dropped at {MAX_IN_FLIGHT} in flight). Served single-conflict p50 at concurrency 1 is "
               f"{single1['p'][0] / p_peer[0]:.2f}x the in-process call's ({single1['p'][0]:.1f} vs "
               f"{p_peer[0]:.1f} ms).")
    body = "\n".join([
        f"`.venv/bin/python bench/api_load.py --workers {a.workers} --seconds {a.seconds:g} --rate {a.rate:g} "
        f"--repeat {a.repeat} --batch {a.batch} --levels {a.levels} --runtime {a.runtime}`: `atc-il serve` (uvicorn, {a.workers} worker(s)) on loopback, "
        f"a lean asyncio keep-alive HTTP/1.1 load generator (pre-encoded bodies) on the same 2 cores; model gru_mdn.yaml trained {a.epochs} epoch(s) on the "
        f"embedded sample; each conflict 2 aircraft x 24 points; batch = {a.batch} conflicts; closed-loop levels "
        f"{a.seconds:g} s each; latency in ms (open loop: from the scheduled send time).", "",
        *lines, "", verdict])
    print(body)
    if not a.no_results:
        append_results("REST service load (bench/api_load.py)", body)


if __name__ == "__main__":
    main()
