"""The Bayes ceiling on synthetic data: how well any model could do, from the expert's recorded probabilities.

The synthetic expert (simulator_adapters/atco.py) records, at every decision it considered, the exact
distribution of its decision: ``p_act`` and the joint over (aircraft, type, value) given acting.
A data-set sample (conflict pair, decision time) that the expert did not consider (it did not see the
conflict on its noisy radar, or had already handled it) has a deterministic "no action" under the
expert. The ceiling is the expert scored against its own demonstrations: the best accuracy any
predictor can reach (``E[max p]``) and the lowest possible negative log-likelihood (the expert's own),
for the discrete parts of the decision. Its information includes the latent style, which a model can
only infer from history: the gap to the ceiling is what history and latent variables can win back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from atc_il.schemas import ACTION_TYPES, to_ns

# values closer than this (in the type's unit) count as the same mode
MODE_TOLERANCE = {"heading": 5.0, "altitude": 250.0, "speed": 5.0, "direct_to": 5.0, "resume": 1.0}


def load_truth(path: str | Path) -> pd.DataFrame:
    t = pd.read_parquet(path)
    t["joint"] = t["joint"].map(lambda j: json.loads(j) if isinstance(j, str) else j)
    return t


def expert_distributions(time_ns: np.ndarray, f1: list, f2: list, truth: pd.DataFrame) -> dict:
    """Per sample: ``p_act`` (N,), ``p_aircraft`` (N, 2) and ``p_type`` (N, n_types) given acting, the
    ``modes`` [(aircraft, type index, value, probability given acting)], and ``matched`` (N,) bool."""
    n = len(time_ns)
    key = pd.DataFrame({"t": np.asarray(time_ns, dtype=np.int64), "f1": list(f1), "f2": list(f2)})
    tr = pd.DataFrame({"t": to_ns(truth["time"]), "f1": truth["flight_id_1"].astype(str).to_numpy(),
                       "f2": truth["flight_id_2"].astype(str).to_numpy(), "row": np.arange(len(truth))})
    tr = tr.drop_duplicates(["t", "f1", "f2"], keep="last")
    m = key.merge(tr, on=["t", "f1", "f2"], how="left")
    rows = m["row"].to_numpy()
    matched = ~np.isnan(rows)
    p_act = np.zeros(n)
    p_ac = np.full((n, 2), 0.5)
    p_type = np.full((n, len(ACTION_TYPES)), 1.0 / len(ACTION_TYPES))
    modes: list[list] = [[] for _ in range(n)]
    pa = truth["p_act"].to_numpy()
    joint = truth["joint"].to_numpy()
    for i in np.flatnonzero(matched):
        r = int(rows[i])
        p_act[i] = pa[r]
        j = joint[r]
        if not len(j):
            continue
        ac = np.zeros(2)
        ty = np.zeros(len(ACTION_TYPES))
        for k, t, v, q in j:
            ti = ACTION_TYPES.index(t)
            ac[int(k)] += q
            ty[ti] += q
            modes[i].append((int(k), ti, float(v), float(q)))
        p_ac[i], p_type[i] = ac / ac.sum(), ty / ty.sum()
    return {"p_act": p_act, "p_aircraft": p_ac, "p_type": p_type, "modes": modes, "matched": matched}


def ceiling_metrics(dist: dict, act: np.ndarray, aircraft: np.ndarray, typ: np.ndarray) -> dict:
    """The expert's own scores on the demonstrated labels (the best any model can do in expectation)."""
    p_act = np.clip(dist["p_act"], 1e-12, 1 - 1e-12)
    act = np.asarray(act).astype(int)
    pos = act == 1
    out = {"act_accuracy": float(np.mean(np.maximum(dist["p_act"], 1 - dist["p_act"]))),
           "act_nll": float(-np.mean(np.where(pos, np.log(p_act), np.log1p(-p_act)))),
           "matched_share": float(dist["matched"].mean())}
    if pos.any():
        pa = dist["p_aircraft"][pos]
        pt = dist["p_type"][pos]
        ai = np.asarray(aircraft)[pos].astype(int)
        ti = np.asarray(typ)[pos].astype(int)
        out["aircraft_accuracy"] = float(pa.max(1).mean())
        out["type_accuracy"] = float(pt.max(1).mean())
        rows = np.arange(pos.sum())
        with np.errstate(divide="ignore"):
            lp = (np.log(np.clip(p_act[pos], 1e-12, 1)) + np.log(np.clip(pa[rows, ai], 1e-12, 1))
                  + np.log(np.clip(pt[rows, np.clip(ti, 0, None)], 1e-12, 1)))
        out["positive_discrete_nll"] = float(-lp.mean())
        extra = -(lp - np.log(np.clip(p_act[pos], 1e-12, 1)))           # aircraft + type terms
        out["discrete_nll"] = float(out["act_nll"] + extra.sum() / len(act))
    return out


def mode_coverage(modes: list[list], samples: list[np.ndarray], min_q: float = 0.1, share: float = 0.25) -> float:
    """Share of the expert's modes (given acting, probability >= ``min_q``) that the model covers: its
    samples given acting put at least ``share`` of the expert's probability near the mode (same aircraft
    and type, value within MODE_TOLERANCE). ``samples[i]`` is an (n, 3) array of (aircraft, type, value)."""
    covered = total = 0
    for ms, s in zip(modes, samples):
        if not ms or s is None or len(s) == 0:
            total += sum(1 for m in ms if m[3] >= min_q)
            continue
        for k, ti, v, q in ms:
            if q < min_q:
                continue
            total += 1
            tol = MODE_TOLERANCE[ACTION_TYPES[ti]]
            near = (s[:, 0] == k) & (s[:, 1] == ti) & (np.abs(s[:, 2] - v) <= tol)
            covered += int(near.mean() >= share * q)
    return covered / total if total else float("nan")
