"""``atc-il train-detector``: the learned manoeuvre detector retrained on ingested tracks and a clearance log."""

from __future__ import annotations

import time as _time
from pathlib import Path

import pandas as pd

from atc_il.errors import DataError
from atc_il.io import read_table
from atc_il.runs import require_complete
from atc_il.schemas import TRACK_SCHEMA
from pipelines.actions import _read_any, read_clearance_log, read_flight_plans
from pipelines.detector import candidate_table, flight_candidates
from pipelines.detector_model import label_candidates, train


def read_ignore(path) -> pd.DataFrame:
    raw = _read_any(Path(path))
    missing = [c for c in ("flight_id", "start", "end") if c not in raw.columns]
    if missing:
        raise DataError(f"{path}: ignore table missing column(s) {missing}; it has {list(raw.columns)}")
    out = pd.DataFrame({"flight_id": raw["flight_id"].astype(str),
                        "start": pd.to_datetime(raw["start"], utc=True), "end": pd.to_datetime(raw["end"], utc=True)})
    if "signal" in raw:
        out["signal"] = raw["signal"].where(raw["signal"].notna(), None)
    return out


def labelled_candidates(tracks: pd.DataFrame, log: pd.DataFrame, flight_plans: pd.DataFrame | None,
                        tol_s: float, ignore: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.Series]:
    cand = candidate_table(flight_candidates(tracks, flight_plans))
    return cand, label_candidates(cand, log, tol_s, ignore)


def train_from_workspaces(works, log, out, *, log_mapping=None, flight_plans=None, ignore=None, tol_s: float = 120.0,
                          seed: int = 0) -> dict:
    """Candidates of every workspace's tracks, labelled from ``log``, -> a model written to ``out``."""
    t0 = _time.perf_counter()
    plans = read_flight_plans(flight_plans) if flight_plans is not None else None
    ign = read_ignore(ignore) if ignore is not None else None
    cands, labels = [], []
    n_points = 0
    for w in works:
        require_complete(Path(w) / "tracks", "ingest")
        tracks = read_table(Path(w) / "tracks", TRACK_SCHEMA)
        n_points += len(tracks)
        logged = read_clearance_log(log, log_mapping, tracks, flight_plans=plans)
        c, lab = labelled_candidates(tracks, logged, plans, tol_s, ign)
        cands.append(c)
        labels.append(lab)
    cand = pd.concat(cands, ignore_index=True)
    lab = pd.concat(labels, ignore_index=True)
    model, rep = train(cand, lab, seed=seed, meta={"workspaces": [str(w) for w in works], "log": str(log),
                                                   "tol_s": tol_s})
    path = model.save(out)
    return {"workspaces": len(works), "track_points": n_points, "candidates": int(len(cand)),
            "positives": int(((lab != "none") & (lab != "ignore")).sum()), "ignored": int((lab == "ignore").sum()),
            **{f"candidates_{k}": v for k, v in rep["candidates"].items()},
            "max_abs_diff_vs_sklearn": max(rep["sklearn_check"].values()), "model": str(path),
            "model_kb": round(path.stat().st_size / 1024, 1), "seconds": round(_time.perf_counter() - t0, 1)}
