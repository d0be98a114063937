"""Action extraction from tracks against ground truth: rules vs the learned detector, per type and sampling interval.

    .venv/bin/python bench/extraction.py [--work /tmp/atc-il-extraction] [--intervals 4 10 30] [--no-append]
                                         [--model pipelines/data/detector.npz] [--save-model PATH]

1. Demonstrations (``atc-il simulate``, dense routes: waypoints 2-4 min apart): training set = the ``varied``
   controller (speed steps 5-20 kt, level changes also while climbing or descending, headings 5-40 deg,
   direct-to the 1st-4th next waypoint) on 30 scenarios (seed 101, density 8) and the synthetic expert ``atco``
   on 8 (seed 102); test set, other scenarios = ``varied`` on 12 (seed 201), ``atco`` on 8 (seed 202), ``mvp`` on 6
   (seed 203); ``varied`` flies dense routes, ``atco`` and ``mvp`` their default straight ones. Ground truth = each
   set's ``clearances.parquet``; a resume counts as a direct-to (back onto the route) after a heading clearance and
   is "don't care" otherwise (``pipelines.detector_model.truth_types``). The main table scores ``varied`` and
   ``atco``; ``mvp`` is shown apart: its "clearances" are the simulator's resolution manoeuvres typed by their
   largest change over 30 s (heading and speed change together), not clearances a controller gave.
2. Each set is re-sampled like a surveillance feed (``pipelines.surveillance.degrade_tracks``) at every interval,
   with ground speed/track/vertical rate given (tracker noise 2 kt, 0.5 deg, 100 ft/min) or only derived from
   positions; position noise 0.01 NM at 4 s, 0.03 NM at 10 s, 0.05 NM at 30 s; altitude quantised to 100 ft.
3. As a user would: ``atc-il ingest plots.parquet -w WS --max-gap-s max(60, 3 x interval)``, ``atc-il conflicts``,
   then ``atc-il actions --flight-plans ... --detector rules`` and ``--detector learned``.
4. The learned model is trained with ``atc-il train-detector`` on the training set's workspaces (all intervals and
   both kinematics), unless ``--model`` names one (e.g. the shipped model, which is trained exactly so).
5. Scoring: a detection matches a true clearance of the same flight and type if its onset lies within
   tol = 60 s + 2 x interval of the clearance's time (one-to-one, nearest first). Precision = matched / detected,
   recall = matched / true; onset error = median |detected - true| over matches. Flights' planned climbs and
   descents (issued at spawn, before the track begins) are "don't care" until 120 s after their level-off:
   altitude detections there that match no clearance are neither right nor wrong.
   Calibration of the learned confidence: every candidate scored (threshold 0), 10 bins, expected calibration
   error against "matches a true clearance of its type".
6. No plans: the same test workspaces once more with ``atc-il actions`` given no ``--flight-plans`` (as on most
   real data), both detectors; a direct-to is then a heading change (nothing names its waypoint), so true
   direct-to and resume clearances count as headings and the rows show altitude, speed and heading only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import append_results  # noqa: E402

from atc_il.io import read_table  # noqa: E402
from atc_il.schemas import ACTION_SCHEMA, TRACK_SCHEMA  # noqa: E402
from pipelines.detector_model import TYPE_OF_LOG, truth_types  # noqa: E402
from pipelines.surveillance import Surveillance, degrade_tracks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLI = str(ROOT / ".venv" / "bin" / "atc-il")
SETS = {"train": [("varied", 30, 101, 8.0), ("atco", 8, 102, 4.0)],
        "test": [("varied", 12, 201, 8.0), ("atco", 8, 202, 4.0), ("mvp", 6, 203, 4.0)]}
POS_NOISE_NM = {4.0: 0.01, 10.0: 0.03, 30.0: 0.05}
TYPES = ("altitude", "speed", "heading", "direct_to")


def sh(*args, log: Path | None = None) -> None:
    t = time.perf_counter()
    res = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if log is not None:
        with open(log, "a") as fh:
            fh.write(" ".join(map(str, args)) + "\n" + res.stdout[-3000:] + res.stderr[-3000:] + "\n")
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({res.returncode}): {res.stderr[-2000:]}")
    print(f"  {Path(str(args[0])).name} {args[1]} ({time.perf_counter() - t:.0f} s)", flush=True)


def simulate(work: Path, name: str) -> Path:
    """The set's simulations (cached), combined: tracks.parquet, clearances.parquet, flight_plans.parquet, ignore.parquet."""
    out = work / name
    if (out / "done.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tracks, logs, plans, ignore, who = [], [], [], [], {}
    for expert, n, seed, density in SETS[name]:
        d = work / f"sim-{name}-{expert}"
        for attempt in (1, 2):       # once more if a worker process died (a shared machine's memory)
            if (d / "simulate_report.json").exists():
                break
            try:
                sh(CLI, "simulate", "-n", n, "--expert", expert, "--seed", seed, "--workers", 2, "--density", density,
                   "--dense-routes" if expert == "varied" else "--straight-routes", "--surveillance", "truth", "--out", d)
            except RuntimeError:
                if attempt == 2:
                    raise
        tr = read_table(d / "tracks", TRACK_SCHEMA)
        tracks.append(tr)
        logs.append(pd.read_parquet(d / "clearances.parquet"))
        plans.append(pd.read_parquet(d / "flight_plans.parquet"))
        ignore.append(planned_climbs(tr, d))
        who.update({f: expert for f in tr["flight_id"].unique()})
    pd.concat(tracks, ignore_index=True).to_parquet(out / "tracks.parquet", index=False)
    pd.concat(logs, ignore_index=True).to_parquet(out / "clearances.parquet", index=False)
    pd.concat(plans, ignore_index=True).to_parquet(out / "flight_plans.parquet", index=False)
    pd.concat(ignore, ignore_index=True).to_parquet(out / "ignore.parquet", index=False)
    (out / "done.json").write_text(json.dumps({"controller_of_flight": who}))
    return out


def planned_climbs(tracks: pd.DataFrame, sim_dir: Path) -> pd.DataFrame:
    """Don't-care intervals: a flight's planned climb or descent (cleared at spawn) until 120 s after its level-off."""
    cleared = {}
    for f in sorted((sim_dir / "scenarios").glob("*.json")):
        sc = json.loads(f.read_text())
        for fl in sc["flights"]:
            if abs(fl["cleared_alt_ft"] - fl["alt_ft"]) >= 100:
                cleared[f"{sc['name']}/{fl['flight_id']}"] = fl["cleared_alt_ft"]
    rows = []
    for fid, g in tracks[tracks["flight_id"].isin(cleared)].groupby("flight_id"):
        g = g.sort_values("time")
        near = np.flatnonzero(np.abs(g["alt_ft"].to_numpy() - cleared[fid]) < 150)
        end = g["time"].iloc[near[0]] if len(near) else g["time"].iloc[-1]
        rows.append((fid, g["time"].iloc[0], end + pd.Timedelta(seconds=120), "altitude"))
    return pd.DataFrame(rows, columns=["flight_id", "start", "end", "signal"])


def workspace(work: Path, data: Path, name: str, surv: Surveillance, seed: int) -> Path:
    ws = work / "ws" / f"{name}-{surv.interval_s:g}s-{surv.kinematics}"
    if (ws / "done").exists():
        return ws
    shutil.rmtree(ws, ignore_errors=True)
    (ws / "raw").mkdir(parents=True)
    dense = pd.read_parquet(data / "tracks.parquet")
    plots = degrade_tracks(dense, surv, np.random.default_rng([seed, int(surv.interval_s * 10)]))
    plots.to_parquet(ws / "raw" / "plots.parquet", index=False)
    log = ws / "commands.log"
    sh(CLI, "ingest", ws / "raw" / "plots.parquet", "-w", ws, "--max-gap-s", max(60.0, 3 * surv.interval_s), log=log)
    sh(CLI, "conflicts", "-w", ws, log=log)
    (ws / "done").write_text("")
    return ws


def actions(ws: Path, data: Path, detector: str, model: Path | None, plans: bool = True) -> pd.DataFrame:
    args = [CLI, "actions", "-w", ws, "--detector", detector]
    if plans:
        args += ["--flight-plans", data / "flight_plans.parquet"]
    if detector == "learned" and model is not None:
        args += ["--detector-model", model]
    sh(*args, log=ws / "commands.log")
    return read_table(ws / "actions", ACTION_SCHEMA)


def fold_direct_to(types: pd.Series) -> pd.Series:
    """Without flight plans a direct-to is a heading change: its type folded into heading."""
    return types.replace({"direct_to": "heading"})


def match(det: pd.DataFrame, truth: pd.DataFrame, tol_s: float, ignore: pd.DataFrame, plans: bool = True) -> dict:
    """Per type: n_true, n_det, tp, onset errors (s); detections in don't-care intervals without a match dropped.
    ``plans`` False: direct-to folded into heading on both sides."""
    det = det.assign(type=det["action_type"].map(TYPE_OF_LOG))
    truth = truth.assign(type=truth_types(truth))
    if not plans:
        det, truth = det.assign(type=fold_direct_to(det["type"])), truth.assign(type=fold_direct_to(truth["type"]))
    dont_care = truth[truth["type"] == "ignore"]
    out = {}
    for k in TYPES:
        d = det[det["type"] == k].reset_index(drop=True)
        t = truth[truth["type"] == k].reset_index(drop=True)
        pairs = d.reset_index().merge(t.reset_index(), on="flight_id", suffixes=("_d", "_t"))
        pairs["err"] = (pairs["time_d"] - pairs["time_t"]).dt.total_seconds()
        pairs = pairs[pairs["err"].abs() <= tol_s].sort_values("err", key=np.abs)
        used_d, used_t, errs = set(), set(), []
        for a, b, e in zip(pairs["index_d"], pairs["index_t"], pairs["err"]):
            if a not in used_d and b not in used_t:
                used_d.add(a)
                used_t.add(b)
                errs.append(e)
        unmatched = d[~d.index.isin(used_d)]
        drop: set = set()
        if k == "altitude" and len(ignore) and len(unmatched):
            m = unmatched.reset_index().merge(ignore, on="flight_id")
            drop |= set(m.loc[(m["time"] >= m["start"]) & (m["time"] <= m["end"]), "index"])
        if len(dont_care) and len(unmatched):      # near a resume that shows nothing certain
            m = unmatched.reset_index().merge(dont_care[["flight_id", "time"]], on="flight_id", suffixes=("", "_t"))
            drop |= set(m.loc[(m["time"] - m["time_t"]).abs().dt.total_seconds() <= tol_s, "index"])
        dropped = len(drop)
        out[k] = {"n_true": len(t), "n_det": len(d) - dropped, "tp": len(used_d), "err": errs}
    return out


def calibration(ws: Path, data: Path, model_path: Path | None, truth: pd.DataFrame, tol_s: float, who: dict,
                plans: bool = True) -> dict:
    from pipelines.actions import read_flight_plans
    from pipelines.detector import detect_actions
    from pipelines.detector_model import DetectorModel, load_default
    model = DetectorModel.load(model_path) if model_path is not None else load_default()
    tracks = read_table(ws / "tracks", TRACK_SCHEMA)
    tracks = tracks[tracks["flight_id"].map(who) != "mvp"]
    det = detect_actions(tracks, read_flight_plans(data / "flight_plans.parquet") if plans else None, model,
                         threshold=0.0)
    det = det.assign(type=det["action_type"].map(TYPE_OF_LOG)).reset_index(drop=True)
    truth = truth.assign(type=truth_types(truth))
    if not plans:
        det, truth = det.assign(type=fold_direct_to(det["type"])), truth.assign(type=fold_direct_to(truth["type"]))
    m = det.reset_index().merge(truth, on=["flight_id", "type"], suffixes=("", "_t"))
    hit = set(m.loc[(m["time"] - m["time_t"]).abs().dt.total_seconds() <= tol_s, "index"])
    y = det.index.isin(hit).astype(float)
    c = det["confidence"].to_numpy()
    bins = np.minimum((c * 10).astype(int), 9)
    ece = sum(abs(y[bins == b].mean() - c[bins == b].mean()) * (bins == b).mean() for b in range(10) if (bins == b).any())
    hi = c >= 0.5
    return {"ece": float(ece), "n": int(len(c)), "mean_conf_kept": float(c[hi].mean()) if hi.any() else np.nan,
            "precision_kept": float(y[hi].mean()) if hi.any() else np.nan}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/atc-il-extraction"))
    ap.add_argument("--intervals", type=float, nargs="+", default=[4.0, 10.0, 30.0])
    ap.add_argument("--kinematics", nargs="+", default=["given", "derived"])
    ap.add_argument("--model", type=Path, default=None, help="learned model to evaluate (default: train one here)")
    ap.add_argument("--save-model", type=Path, default=None, help="also copy the model trained here to this path")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    train_data, test_data = simulate(work, "train"), simulate(work, "test")
    survs = [Surveillance(interval_s=i, pos_noise_nm=POS_NOISE_NM.get(i, 0.05), kinematics=k)
             for i in args.intervals for k in args.kinematics]
    model = args.model
    if model is None:
        train_ws = [workspace(work, train_data, "train", s, 1) for s in survs]
        model = work / "detector.npz"
        sh(CLI, "train-detector", *sum((["-w", w] for w in train_ws), []), "--log", train_data / "clearances.parquet",
           "--flight-plans", train_data / "flight_plans.parquet", "--ignore", train_data / "ignore.parquet",
           "--out", model, log=work / "train.log")
        if args.save_model:
            shutil.copy(model, args.save_model)
    truth = pd.read_parquet(test_data / "clearances.parquet")
    ignore = pd.read_parquet(test_data / "ignore.parquet")
    who = json.loads((test_data / "done.json").read_text())["controller_of_flight"]
    results, calib = [], {}
    for s in survs:
        ws = workspace(work, test_data, "test", s, 2)
        tol = 60.0 + 2 * s.interval_s
        for plans in (True, False):
            for det_name in ("rules", "learned"):
                det = actions(ws, test_data, det_name, model, plans)
                for ctrl in ("all", "varied", "atco", "mvp"):
                    ctrls = ("varied", "atco") if ctrl == "all" else (ctrl,)
                    keep_d = det["flight_id"].map(who).isin(ctrls)
                    keep_t = truth["flight_id"].map(who).isin(ctrls)
                    r = match(det[keep_d], truth[keep_t], tol, ignore, plans)
                    results.append({"interval": s.interval_s, "kin": s.kinematics, "detector": det_name,
                                    "ctrl": ctrl, "plans": plans, **{k: v for k, v in r.items()}})
            lab = s.label + ("" if plans else " no plans")
            calib[lab] = calibration(ws, test_data, model, truth[truth["flight_id"].map(who) != "mvp"], tol, who, plans)
            print(lab, calib[lab], flush=True)

    def cell(r, k):
        x = r[k]
        p = x["tp"] / x["n_det"] if x["n_det"] else float("nan")
        rec = x["tp"] / x["n_true"] if x["n_true"] else float("nan")
        e = float(np.median(np.abs(x["err"]))) if x["err"] else float("nan")
        return p, rec, e

    def f(v, d=2):
        return "-" if v != v else f"{v:.{d}f}"
    lines = ["| interval | speed | type | true | rules P | rules R | rules onset s | learned P | learned R | learned onset s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    by = {(r["interval"], r["kin"], r["detector"], r["ctrl"]): r for r in results if r["plans"]}
    by_np = {(r["interval"], r["kin"], r["detector"], r["ctrl"]): r for r in results if not r["plans"]}
    for s in survs:
        for k in TYPES:
            a, b = by[(s.interval_s, s.kinematics, "rules", "all")], by[(s.interval_s, s.kinematics, "learned", "all")]
            pa, ra, ea = cell(a, k)
            pb, rb, eb = cell(b, k)
            lines.append(f"| {s.interval_s:g} s | {s.kinematics} | {k} | {a[k]['n_true']} | {f(pa)} | {f(ra)} | {f(ea, 0)} "
                         f"| {f(pb)} | {f(rb)} | {f(eb, 0)} |")
    table = "\n".join(lines)
    lines_np = ["| interval | speed | type | true | rules P | rules R | rules onset s | learned P | learned R | learned onset s |",
                "|---|---|---|---|---|---|---|---|---|---|"]
    for s in survs:
        for k in ("altitude", "speed", "heading"):
            a, b = by_np[(s.interval_s, s.kinematics, "rules", "all")], by_np[(s.interval_s, s.kinematics, "learned", "all")]
            pa, ra, ea = cell(a, k)
            pb, rb, eb = cell(b, k)
            name = "heading (+ direct_to)" if k == "heading" else k
            lines_np.append(f"| {s.interval_s:g} s | {s.kinematics} | {name} | {a[k]['n_true']} | {f(pa)} | {f(ra)} "
                            f"| {f(ea, 0)} | {f(pb)} | {f(rb)} | {f(eb, 0)} |")
    table_np = "\n".join(lines_np)
    lines2 = ["| interval | speed | controller | " + " | ".join(f"{k} P / R" for k in TYPES) + " |",
              "|---|---|---|" + "---|" * len(TYPES)]
    for s in survs:
        if s.interval_s != max(args.intervals):
            continue
        for ctrl in ("varied", "atco", "mvp"):
            r = by[(s.interval_s, s.kinematics, "learned", ctrl)]
            cells = []
            for k in TYPES:
                p, rec, _ = cell(r, k)
                cells.append(f"{f(p)} / {f(rec)} (n={r[k]['n_true']})")
            lines2.append(f"| {s.interval_s:g} s | {s.kinematics} | {ctrl} | " + " | ".join(cells) + " |")
    table2 = "\n".join(lines2)
    lines3 = ["| sampling | candidates | ECE | mean confidence (kept) | precision (kept) |", "|---|---|---|---|---|"]
    for lab, c in calib.items():
        lines3.append(f"| {lab} | {c['n']} | {c['ece']:.3f} | {f(c['mean_conf_kept'])} | {f(c['precision_kept'])} |")
    table3 = "\n".join(lines3)
    note = (f"Command: `.venv/bin/python bench/extraction.py {' '.join(sys.argv[1:])}`. Test set: "
            f"{', '.join(f'{e} {n} scenarios (seed {s})' for e, n, s, _ in SETS['test'])}; learned model: "
            f"{'trained here on ' + ', '.join(f'{e} {n} (seed {s})' for e, n, s, _ in SETS['train']) if args.model is None else args.model}. "
            "P = precision, R = recall, onset = median |detected - true| (s) over matches; match window 60 s + 2 x "
            "interval; main table: varied + atco flights. 'derived': the plots carry no ground speed, track or vertical "
            f"rate. Wall time {time.perf_counter() - t_start:.0f} s.")
    body = (table + "\n\nThe same test flights without flight plans (`atc-il actions` given no `--flight-plans`; "
            "direct-to and resume clearances count as headings):\n\n" + table_np
            + "\n\nLearned detector per controller at the longest interval (with plans):\n\n" + table2
            + "\n\nCalibration of the learned confidence (all candidates, 10 bins):\n\n" + table3 + "\n\n" + note)
    print("\n" + body)
    if not args.no_append:
        append_results("Action extraction from tracks: rules vs learned detector (bench/extraction.py)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
