"""atc-il conflict detection against BlueSky's own detection, side by side on identical states.

    .venv/bin/python bench/conflicts_bench.py [--sizes 100 1000 5000] [--lookahead 600] [--no-statebased-max]

One process: BlueSky 1.1.1 (``prefer_compiled = False``, Python geometry) is initialised once in a temporary
workdir. For each traffic size, aircraft are created in BlueSky (en-route, FL200-400 uniform, 25 %
climbing or descending at 1000-3000 fpm, 240-300 kt CAS, random tracks), flown 5 s with detection off,
and then the same state is handed to
- BlueSky CSTATEBASED and STATEBASED: ``bs.traf.cd.detect(bs.traf, bs.traf, cd.rpz, cd.hpz, cd.dtlookahead)``
  (the detection call only; not the simulation step, not ``cd.update``'s set bookkeeping);
- atc-il ``pipelines.conflicts.detect_snapshot`` (the state converted to ft/kt/fpm, returning its DataFrame).
Calls alternate (BlueSky, atc-il, BlueSky, ...) so that machine noise hits both; the median per call is
reported. Results must be identical: the same conflict and LoS pairs (CSTATEBASED reports LoS only for
pairs also in conflict, which all LoS pairs are). Two densities: the parity test's (600 aircraft per
3 x 3 degrees, the box grows with the count) and a fixed 3 x 3 degree box (denser at 1000 and 5000).
Appends the table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import append_results  # noqa: E402

from atc_il.config import ConflictConfig  # noqa: E402
from atc_il.units import FPM_MPS, FT_M, KT_MPS  # noqa: E402
from pipelines.conflicts import detect_snapshot  # noqa: E402


def init_bluesky(workdir: Path):
    text = (importlib.resources.files("bluesky") / "resources" / "default.cfg").read_text()
    keep = [ln for ln in text.splitlines() if ln.split("=", 1)[0].strip() not in ("prefer_compiled", "enabled_plugins")]
    cfg = workdir / "bench.cfg"
    cfg.write_text("\n".join(keep + ["prefer_compiled = False", "enabled_plugins = []"]) + "\n")
    import bluesky as bs
    bs.init(mode="sim", detached=True, workdir=str(workdir), configfile=str(cfg))
    import bluesky.stack.simstack as ss
    from bluesky.tools import geo
    assert geo.kwikqdrdist.__module__.endswith("_geo"), "compiled geometry in use"
    from simulator_adapters.bluesky_replies import capture_replies
    replies = capture_replies(ss)
    bs.sim.reset()
    return bs, replies


def command(bs, replies, *cmds):
    n = len(replies)
    bs.stack.stack(*cmds)
    bs.stack.process()
    errors = [t for f, t in replies[n:] if f != 0]
    if errors:
        raise RuntimeError(f"BlueSky rejected {cmds}: {errors}")


def make_traffic(bs, replies, n: int, side_deg: float, seed: int):
    from bluesky.tools.aero import fpm, ft, kts
    bs.traf.reset()
    rng = np.random.default_rng(seed)
    alt_ft = rng.uniform(20000.0, 40000.0, n)
    bs.traf.cre([f"AC{i:05d}" for i in range(n)], "A320", rng.uniform(52.0 - side_deg / 2, 52.0 + side_deg / 2, n),
                rng.uniform(5.0 - side_deg / 2, 5.0 + side_deg / 2, n), rng.uniform(0.0, 360.0, n), alt_ft * ft,
                rng.uniform(240.0, 300.0, n) * kts)
    for i in np.flatnonzero(rng.random(n) < 0.25):
        target = float(np.clip(alt_ft[i] + rng.choice([-1.0, 1.0]) * rng.uniform(3000.0, 9000.0), 15000.0, 41000.0))
        bs.traf.ap.selaltcmd(int(i), target * ft, float(rng.uniform(1000.0, 3000.0)) * fpm)
    command(bs, replies, "ASAS OFF")
    for _ in range(5):
        bs.sim.step()
    tr = bs.traf
    return {k: np.array(getattr(tr, k), dtype=float) for k in ("lat", "lon", "alt", "gs", "trk", "vs")} | {"id": list(tr.id)}


def run_case(bs, replies, state, cfg: ConflictConfig, reps: int, with_statebased: bool) -> dict:
    from bluesky.traffic.asas import ConflictDetection
    ids = np.array(state["id"])
    args = (ids, state["lat"], state["lon"], state["alt"] / FT_M, state["gs"] / KT_MPS, state["trk"],
            state["vs"] / FPM_MPS, cfg)
    out = {"n": len(ids)}
    mine = detect_snapshot(*args)
    mine_c = {frozenset(p) for p in zip(mine.flight_id_1[mine.conflict], mine.flight_id_2[mine.conflict])}
    mine_l = {frozenset(p) for p in zip(mine.flight_id_1[mine.los], mine.flight_id_2[mine.los])}
    out.update(conflicts=len(mine_c), los=len(mine_l))
    t_atc = []
    for method in ("CSTATEBASED", "STATEBASED") if with_statebased else ("CSTATEBASED",):
        # selecting a method makes a new detector with the default zone and look-ahead: set them after it
        command(bs, replies, f"ASAS {method}", f"DTLOOK {cfg.lookahead_s}", f"ZONER {cfg.rpz_nm}", f"ZONEDH {cfg.hpz_ft}")
        cd = bs.traf.cd
        assert (cd.dtlookahead == cfg.lookahead_s).all() and (cd.rpz == cfg.rpz_nm * 1852).all(), "zone/look-ahead"
        assert ConflictDetection.selected().__name__.upper() == method, ConflictDetection.selected()
        t_bs = []
        for _ in range(reps if method == "CSTATEBASED" else max(1, reps // 3)):
            t = time.perf_counter()
            res = cd.detect(bs.traf, bs.traf, cd.rpz, cd.hpz, cd.dtlookahead)
            t_bs.append(time.perf_counter() - t)
            t = time.perf_counter()
            detect_snapshot(*args)
            t_atc.append(time.perf_counter() - t)
        theirs_c = {frozenset(p) for p in res[0]}
        theirs_l = {frozenset(p) for p in res[1]}
        out[method] = {"ms": 1e3 * float(np.median(t_bs)), "reps": len(t_bs),
                       "differ": len(theirs_c ^ mine_c) + len(theirs_l ^ mine_l)}
    out["atc_ms"] = 1e3 * float(np.median(t_atc))
    out["atc_reps"] = len(t_atc)
    return out


def run_sequence(bs, replies, n: int, side: float, seed: int, cfg: ConflictConfig, snapshots: int, every_s: int) -> dict:
    """The whole-day path on a short "day": ``snapshots`` states ``every_s`` seconds apart of the same traffic.
    BlueSky CSTATEBASED's detection is timed on each state as the simulation reaches it (summed); atc-il's
    ``pipelines.conflicts.detect`` (what the conflicts stage runs) is timed on all states at once, as a track
    table (time, flight_id, state columns), DataFrame in and out. Pairs are compared snapshot by snapshot."""
    import pandas as pd

    from pipelines.conflicts import detect
    make_traffic(bs, replies, n, side, seed)
    command(bs, replies, "ASAS CSTATEBASED", f"DTLOOK {cfg.lookahead_s}", f"ZONER {cfg.rpz_nm}", f"ZONEDH {cfg.hpz_ft}")
    cd = bs.traf.cd              # (the simulation's own detection also runs while stepping: not timed)
    assert (cd.dtlookahead == cfg.lookahead_s).all() and (cd.rpz == cfg.rpz_nm * 1852).all(), "zone/look-ahead"
    t0 = pd.Timestamp("2026-01-01T10:00:00Z")
    frames, theirs, t_bs = [], [], 0.0
    for k in range(snapshots):
        for _ in range(every_s):
            bs.sim.step()
        tr = bs.traf
        cd = tr.cd
        t = time.perf_counter()
        res = cd.detect(tr, tr, cd.rpz, cd.hpz, cd.dtlookahead)
        t_bs += time.perf_counter() - t
        theirs.append(({frozenset(p) for p in res[0]}, {frozenset(p) for p in res[1]}))
        frames.append(pd.DataFrame({"time": t0 + pd.Timedelta(seconds=k * every_s), "flight_id": list(tr.id),
                                    "lat_deg": np.array(tr.lat), "lon_deg": np.array(tr.lon),
                                    "alt_ft": np.array(tr.alt) / FT_M, "gs_kt": np.array(tr.gs) / KT_MPS,
                                    "trk_deg": np.array(tr.trk), "vs_fpm": np.array(tr.vs) / FPM_MPS}))
    tracks = pd.concat(frames, ignore_index=True)
    detect(tracks.iloc[: 2 * n], cfg)                       # warm (first-call costs are not the day's)
    t_atc = []
    for _ in range(3):
        t = time.perf_counter()
        out = detect(tracks, cfg)
        t_atc.append(time.perf_counter() - t)
    differ = 0
    for k, (c_bs, l_bs) in enumerate(theirs):
        o = out[out["time"] == t0 + pd.Timedelta(seconds=k * every_s)]
        c = {frozenset(p) for p in zip(o.flight_id_1[o.conflict], o.flight_id_2[o.conflict])}
        los = {frozenset(p) for p in zip(o.flight_id_1[o.los], o.flight_id_2[o.los])}
        differ += len(c ^ c_bs) + len(los ^ l_bs)
    return {"n": n, "snapshots": snapshots, "rows": len(tracks), "conflict_steps": int(out["conflict"].sum()),
            "bs_ms": 1e3 * t_bs, "atc_ms": 1e3 * float(np.median(t_atc)), "differ": differ}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    ap.add_argument("--lookahead", type=float, default=ConflictConfig().lookahead_s)
    ap.add_argument("--no-statebased-max", action="store_true", help="skip STATEBASED at the largest size (n x n matrices)")
    ap.add_argument("--no-append", action="store_true", help="print only, do not append to bench/RESULTS.md")
    ap.add_argument("--day-sizes", type=int, nargs="*", default=[100, 1000],
                    help="traffic sizes of the whole-day path (detect over many snapshots at once)")
    ap.add_argument("--day-snapshots", type=int, default=40)
    ap.add_argument("--day-every", type=int, default=5, help="seconds between the day's snapshots")
    args = ap.parse_args(argv)
    cfg = ConflictConfig(lookahead_s=args.lookahead)
    with tempfile.TemporaryDirectory(prefix="atc-il-bench-") as tmp:
        bs, replies = init_bluesky(Path(tmp))
        command(bs, replies, "DT 1")
        cases = [(n, 3.0 * np.sqrt(n / 600.0), "parity density") for n in args.sizes]
        cases += [(n, 3.0, "fixed 3x3 deg") for n in args.sizes if n > 600]
        rows = []
        for n, side, label in cases:
            reps = 30 if n <= 200 else 10 if n <= 2000 else 3
            statebased = not (args.no_statebased_max and n == max(args.sizes))
            state = make_traffic(bs, replies, n, side, n)
            r = run_case(bs, replies, state, cfg, reps, statebased)
            r.update(side=side, label=label)
            rows.append(r)
            print(f"{label:15s} n={n:5d}: {r}", flush=True)
        days = []
        for n in args.day_sizes:
            d = run_sequence(bs, replies, n, 3.0 * np.sqrt(n / 600.0), n + 1, cfg, args.day_snapshots, args.day_every)
            days.append(d)
            print(f"whole day n={n:5d}: {d}", flush=True)
    head = ("| aircraft | box (deg) | traffic | conflicts | LoS | BlueSky CSTATEBASED ms | BlueSky STATEBASED ms "
            "| atc-il ms | vs CSTATEBASED | vs STATEBASED | identical |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        c, s = r["CSTATEBASED"], r.get("STATEBASED")
        same = c["differ"] == 0 and (s is None or s["differ"] == 0)
        cells = [r["n"], f"{r['side']:.2f}", r["label"], r["conflicts"], r["los"], f"{c['ms']:.2f}",
                 f"{s['ms']:.1f}" if s else "-", f"{r['atc_ms']:.2f}", f"{c['ms'] / r['atc_ms']:.1f}x",
                 f"{s['ms'] / r['atc_ms']:.1f}x" if s else "-",
                 "yes" if same else f"NO ({c['differ']}/{s['differ'] if s else '-'} pairs differ)"]
        lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    table = "\n".join(lines)
    if days:
        table += ("\n\nThe whole-day path (`pipelines.conflicts.detect` on all snapshots at once, a track table in and "
                  "the conflict table out, as the conflicts stage runs it) against BlueSky CSTATEBASED's detection "
                  "called on each snapshot as its simulation reaches it (sum of the calls):\n\n"
                  "| aircraft | snapshots | track rows | conflict steps | BlueSky CSTATEBASED ms (sum) | atc-il detect ms | "
                  "vs CSTATEBASED | identical |\n|---|---|---|---|---|---|---|---|\n")
        table += "\n".join(f"| {d['n']} | {d['snapshots']} | {d['rows']:,} | {d['conflict_steps']:,} | {d['bs_ms']:.1f} | "
                           f"{d['atc_ms']:.1f} | {d['bs_ms'] / d['atc_ms']:.1f}x | "
                           + ("yes" if d["differ"] == 0 else f"NO ({d['differ']} pairs differ)") + " |" for d in days)
    note = (f"Command: `.venv/bin/python bench/conflicts_bench.py {' '.join(sys.argv[1:])}`. One snapshot detection "
            f"per call, rpz {cfg.rpz_nm} NM, hpz {cfg.hpz_ft} ft, look-ahead {cfg.lookahead_s:.0f} s; BlueSky "
            f"{importlib.metadata.version('bluesky-simulator')} timed on `cd.detect(traf, traf, rpz, hpz, dtlookahead)` "
            "only (Python geometry), atc-il on `detect_snapshot` including unit handling and its DataFrame; median of "
            "alternating calls; 'identical' = same conflict and LoS pair sets as each BlueSky method."
            + (f" Load average at the end: {os.getloadavg()[0]:.1f} (the machine is shared)." if hasattr(os, "getloadavg")
               else ""))
    print("\n" + table + "\n\n" + note)
    if not args.no_append:
        append_results("Conflict detection: atc-il vs BlueSky (bench/conflicts_bench.py)", table + "\n\n" + note)
    return 0 if all(r["CSTATEBASED"]["differ"] == 0 for r in rows) and all(d["differ"] == 0 for d in days) else 1


if __name__ == "__main__":
    sys.exit(main())
