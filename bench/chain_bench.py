"""The whole data chain on at least a million raw track points: ingest -> clean/resample ->
conflicts -> actions -> dataset, with points per second and peak memory per stage.

    .venv/bin/python bench/chain_bench.py [--hours 16] [--workdir /tmp/atc-il-chain]

Each stage runs in a fresh subprocess so that its peak resident memory is its own.
Appends a table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import append_results  # noqa: E402

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


def run_stage(stage: str, work: Path, *extra) -> dict:
    proc = subprocess.run([sys.executable, "-c", STAGE, stage, str(work), *map(str, extra)],
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"stage {stage} failed:\n{proc.stderr[-3000:]}")
    line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")][-1]
    return json.loads(line[7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--hours", type=float, default=4.0, help="hours of traffic per day")
    ap.add_argument("--background", type=int, default=220, help="background flights per hour")
    ap.add_argument("--conflicts", type=int, default=40, help="injected conflict pairs per hour")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/atc-il-chain"))
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    import shutil
    shutil.rmtree(args.workdir, ignore_errors=True)
    s = run_stage("sample", args.workdir, args.days, args.hours, args.background, args.conflicts)
    raw = s["raw_rows"]
    rows, total = [], 0.0
    for stage in ("ingest", "conflicts", "actions", "dataset"):
        r = run_stage(stage, args.workdir)
        total += r["_seconds"]
        rows.append((stage, r["_seconds"], raw / r["_seconds"], r["_peak_rss_mib"], r))
        print(f"{stage:10s} {r['_seconds']:8.1f} s  {raw / r['_seconds']:12,.0f} raw points/s  "
              f"peak {r['_peak_rss_mib']:7.0f} MiB", flush=True)
    ing, con, dat = rows[0][4], rows[1][4], rows[3][4]
    lines = ["| stage | seconds | raw points / s | peak RSS (MiB) |", "|---|---|---|---|"]
    lines += [f"| {n} | {sec:.1f} | {pps:,.0f} | {mem:.0f} |" for n, sec, pps, mem, _ in rows]
    lines.append(f"| **whole chain** | **{total:.1f}** | **{raw / total:,.0f}** | {max(r[3] for r in rows):.0f} (max) |")
    body = (f"`.venv/bin/python bench/chain_bench.py --days {args.days} --hours {args.hours} "
            f"--background {args.background} --conflicts {args.conflicts}`: {raw:,} raw track points "
            f"(synthetic OpenSky CSV, {args.days} days), {ing.get('points_out', '?'):,} grid points after 5 s "
            f"resampling, {con.get('episodes', '?')} conflict episodes, {dat.get('samples', '?'):,} samples.\n\n"
            + "\n".join(lines))
    print(body)
    if not args.no_record:
        append_results("Data chain: ingest -> conflicts -> actions -> dataset", body)


if __name__ == "__main__":
    main()
