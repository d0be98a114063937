"""The whole data chain on at least a million raw track points: ingest -> clean/resample ->
conflicts -> actions -> dataset, with points per second and peak memory per stage.

    .venv/bin/python bench/chain_bench.py [--hours 16] [--workdir /tmp/atc-il-chain] [--peer DIR]

Each stage runs in a fresh subprocess so that its peak resident memory is its own. With ``--peer DIR`` (a
checkout of another version, e.g. ``git archive main | tar -x -C DIR``) every stage also runs with that
version's code on its own copy of the same raw data, alternating stage by stage with this version, so both
columns share the machine's load; the table gives both and the ratio, and the data sets' tensors are compared.
Appends a table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import append_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

STAGE = r"""
import json, resource, sys, time
from pathlib import Path
from atc_il.config import PipelineConfig
work = Path(sys.argv[2]); stage = sys.argv[1]; cfg = PipelineConfig()
t = time.perf_counter()
if stage == "sample":
    from pipelines.sample import SampleSpec, make_sample
    info = make_sample(work / "raw", SampleSpec(days=int(sys.argv[3]), hours_per_day=float(sys.argv[4]),
                       background_per_hour=int(sys.argv[5]), conflicts_per_hour=int(sys.argv[6]), seed=1))
    out = {"raw_rows": info["raw_rows"]}
elif stage == "ingest":
    from pipelines.ingest import ingest
    rep = ingest(sorted((work / "raw").glob("opensky_day*.csv")), work, fmt="opensky", config=cfg)
    out = rep.to_dict()
elif stage == "conflicts":
    from pipelines.conflicts import run
    out = run(work / "tracks", work, cfg.conflicts)
elif stage == "actions":
    from pipelines.actions import run
    out = run(work / "tracks", work, cfg.actions, log=work / "raw" / "clearances.csv",
              flight_plans=work / "raw" / "flight_plans.csv", episodes_dir=work / "episodes")
else:
    from pipelines.dataset import build
    out = build(work, None, cfg)
out = {k: v for k, v in out.items() if isinstance(v, (int, float, str))}
out["_seconds"] = time.perf_counter() - t
out["_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(out))
"""


def run_stage(stage: str, work: Path, *extra, code: Path | None = None) -> dict:
    """One stage in a fresh process; ``code``: the checkout whose packages it imports (default: this one)."""
    env = dict(os.environ, ATC_IL_PROGRESS="0")
    if code is not None:
        env["PYTHONPATH"] = str(code)
    proc = subprocess.run([sys.executable, "-c", STAGE, stage, str(work), *map(str, extra)],
                          capture_output=True, text=True, env=env, cwd=str(code or ROOT))
    if proc.returncode:
        sys.exit(f"stage {stage} failed:\n{proc.stderr[-3000:]}")
    line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")][-1]
    return json.loads(line[7:])


def same_tensors(a: Path, b: Path) -> bool:
    """The data sets under ``a`` and ``b`` hold the same samples and bit-identical tensors and labels."""
    import numpy as np
    import pyarrow.parquet as pq
    for split in ("train", "val", "test"):
        fa, fb = sorted((a / f"split={split}").glob("*.parquet")), sorted((b / f"split={split}").glob("*.parquet"))
        if [f.name for f in fa] != [f.name for f in fb]:
            return False
        for x, y in zip(fa, fb):
            ta, tb = pq.read_table(x), pq.read_table(y)
            if ta.schema != tb.schema or ta.num_rows != tb.num_rows:
                return False
            for c in ta.column_names:
                if ta[c].equals(tb[c]):
                    continue
                u, v = ta[c].to_numpy(), tb[c].to_numpy()          # floats with NaN (label_value of no action)
                if u.dtype.kind != "f" or not np.array_equal(u, v, equal_nan=True):
                    return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--hours", type=float, default=4.0, help="hours of traffic per day")
    ap.add_argument("--background", type=int, default=220, help="background flights per hour")
    ap.add_argument("--conflicts", type=int, default=40, help="injected conflict pairs per hour")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/atc-il-chain"))
    ap.add_argument("--peer", type=Path, default=None, help="a checkout of another version to run side by side")
    ap.add_argument("--peer-name", default="peer")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    s = run_stage("sample", args.workdir, args.days, args.hours, args.background, args.conflicts)
    raw = s["raw_rows"]
    peer_dir = args.workdir.parent / (args.workdir.name + "-peer")
    if args.peer:
        shutil.rmtree(peer_dir, ignore_errors=True)
        peer_dir.mkdir(parents=True)
        shutil.copytree(args.workdir / "raw", peer_dir / "raw")
    rows, total, ptotal = [], 0.0, 0.0
    for stage in ("ingest", "conflicts", "actions", "dataset"):
        p = run_stage(stage, peer_dir, code=args.peer.resolve()) if args.peer else None
        r = run_stage(stage, args.workdir)
        total += r["_seconds"]
        ptotal += p["_seconds"] if p else 0.0
        rows.append((stage, r, p))
        print(f"{stage:10s} {r['_seconds']:8.1f} s  {raw / r['_seconds']:12,.0f} raw points/s  "
              f"peak {r['_peak_rss_mib']:7.0f} MiB" + (f"   peer {p['_seconds']:8.1f} s  peak {p['_peak_rss_mib']:7.0f} MiB"
                                                         if p else ""), flush=True)
    ing, con, dat = rows[0][1], rows[1][1], rows[3][1]
    if args.peer:
        same = same_tensors(args.workdir / "dataset", peer_dir / "dataset")
        lines = [f"| stage | {args.peer_name} s | this s | {args.peer_name} raw points / s | this raw points / s | "
                 f"speed-up | {args.peer_name} peak RSS (MiB) | this peak RSS (MiB) |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {n} | {p['_seconds']:.1f} | {r['_seconds']:.1f} | {raw / p['_seconds']:,.0f} | "
                  f"{raw / r['_seconds']:,.0f} | {p['_seconds'] / r['_seconds']:.2f}x | {p['_peak_rss_mib']:.0f} | "
                  f"{r['_peak_rss_mib']:.0f} |" for n, r, p in rows]
        lines.append(f"| **whole chain** | **{ptotal:.1f}** | **{total:.1f}** | **{raw / ptotal:,.0f}** | "
                     f"**{raw / total:,.0f}** | **{ptotal / total:.2f}x** | {max(p['_peak_rss_mib'] for _, _, p in rows):.0f} "
                     f"(max) | {max(r['_peak_rss_mib'] for _, r, _ in rows):.0f} (max) |")
        extra = (f" Side by side with `{args.peer_name}` (`--peer`), stage by stage in alternation; the data sets "
                 f"hold {'bit-identical' if same else 'DIFFERENT'} tensors and labels.")
    else:
        lines = ["| stage | seconds | raw points / s | peak RSS (MiB) |", "|---|---|---|---|"]
        lines += [f"| {n} | {r['_seconds']:.1f} | {raw / r['_seconds']:,.0f} | {r['_peak_rss_mib']:.0f} |"
                  for n, r, _ in rows]
        lines.append(f"| **whole chain** | **{total:.1f}** | **{raw / total:,.0f}** | "
                     f"{max(r['_peak_rss_mib'] for _, r, _ in rows):.0f} (max) |")
        extra = ""
    try:
        load = f" Load average at the end: {os.getloadavg()[0]:.1f} (the machine is shared)."
    except OSError:
        load = ""
    body = (f"`.venv/bin/python bench/chain_bench.py --days {args.days} --hours {args.hours} "
            f"--background {args.background} --conflicts {args.conflicts}"
            f"{' --peer ' + str(args.peer) + ' --peer-name ' + args.peer_name if args.peer else ''}`: {raw:,} raw "
            f"track points (synthetic OpenSky CSV, {args.days} days), {ing.get('points_out', '?'):,} grid points after "
            f"5 s resampling, {con.get('episodes', '?')} conflict episodes, {dat.get('samples', '?'):,} samples."
            f"{extra}{load}\n\n" + "\n".join(lines))
    print(body)
    if not args.no_record:
        append_results("Data chain: ingest -> conflicts -> actions -> dataset", body)


if __name__ == "__main__":
    main()
