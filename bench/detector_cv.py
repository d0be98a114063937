"""Cross-validation of the learned detector on the training seeds only (never the test set), with and without plans.

    .venv/bin/python bench/detector_cv.py [--work /tmp/det-work] [--folds 3]

Uses the training workspaces that ``bench/extraction.py`` left in ``--work`` (``ws/train-*``, the training set's
``clearances.parquet``, ``flight_plans.parquet`` and ``ignore.parquet``); the labelled candidates are cached in
``--work/cv-candidates.parquet`` (delete it after changing the candidates or their features). Folds are whole
scenarios. Per held-out fold the candidates are scored as they are (with plans) and with the plan's features
withheld (no plans: direct-to folded into heading, as a heading is all that a track shows without the plan).
Candidate-level precision / recall per type at each interval (recall over the labelled positive candidates).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from atc_il.io import read_table
from atc_il.schemas import TRACK_SCHEMA
from pipelines.actions import read_clearance_log, read_flight_plans
from pipelines.detector_model import PLAN_FEATURES, train
from pipelines.detector_training import labelled_candidates, read_ignore

TYPES = ("altitude", "speed", "heading", "direct_to")


def candidates(work: Path) -> pd.DataFrame:
    cache = work / "cv-candidates.parquet"
    if cache.exists():
        return pd.read_parquet(cache)
    data = work / "train"
    plans = read_flight_plans(data / "flight_plans.parquet")
    ign = read_ignore(data / "ignore.parquet")
    parts = []
    for ws in sorted((work / "ws").glob("train-*")):
        tracks = read_table(ws / "tracks", TRACK_SCHEMA)
        log = read_clearance_log(data / "clearances.parquet", None, tracks, flight_plans=plans)
        c, lab = labelled_candidates(tracks, log, plans, 120.0, ign)
        parts.append(c.assign(label=lab.to_numpy(), ws=ws.name))
        print(ws.name, len(c), flush=True)
    out = pd.concat(parts, ignore_index=True)
    out.to_parquet(cache, index=False)
    return out


def score(pred: np.ndarray, lab: np.ndarray) -> dict:
    keep = lab != "ignore"
    pred, lab = pred[keep], lab[keep]
    out = {}
    for k in TYPES:
        tp = int(np.sum((pred == k) & (lab == k)))
        out[k] = (tp, int(np.sum(pred == k)), int(np.sum(lab == k)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/det-work"))
    ap.add_argument("--folds", type=int, default=3)
    args = ap.parse_args(argv)
    cand = candidates(args.work)
    scen = cand["flight_id"].str.split("/").str[0]
    fold = np.array([int(hashlib.sha1(s.encode()).hexdigest()[:8], 16) % args.folds for s in scen])
    tot: dict = {}
    for f in range(args.folds):
        tr, te = cand[fold != f], cand[fold == f]
        model, _ = train(tr.drop(columns=["label", "ws"]), tr["label"].reset_index(drop=True).set_axis(tr.index))
        for cond in ("plans", "no plans"):
            c = te.copy()
            lab = c["label"].to_numpy(object)
            if cond == "no plans":
                c.loc[:, list(PLAN_FEATURES)] = np.nan
                lab = np.where(lab == "direct_to", "heading", lab)
            kind, conf = model.classify(c)
            thr = model.thresholds_for(c)
            pred = np.where((kind != "none") & (conf >= thr), kind, "none").astype(object)
            if cond == "no plans":
                pred = np.where(pred == "direct_to", "heading", pred)
            for ws in sorted(c["ws"].unique()):
                m = (c["ws"] == ws).to_numpy()
                for k, v in score(pred[m], lab[m]).items():
                    key = (cond, ws.split("-")[1], k)
                    tot[key] = tuple(a + b for a, b in zip(tot.get(key, (0, 0, 0)), v))
    print("| condition | interval | " + " | ".join(f"{k} P / R" for k in TYPES) + " |")
    for cond in ("plans", "no plans"):
        for iv in ("4s", "10s", "30s"):
            cells = []
            for k in TYPES:
                tp, nd, nt = tot.get((cond, iv, k), (0, 0, 0))
                cells.append(f"{tp / nd:.2f} / {tp / nt:.2f}" if nd and nt else "-")
            print(f"| {cond} | {iv} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
