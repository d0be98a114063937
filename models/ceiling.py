"""Two ceilings on synthetic data: how well any model could do, from the expert's recorded probabilities.

The synthetic expert (simulator_adapters/atco.py) records, at every decision it considers (a conflict on
its radar picture, or a resume), the exact distribution of its decision: ``p_act`` and the joint over
(aircraft, type, value) given acting, under its own style and (``by_style``) under every style with the
style prior. A data-set sample (conflict pair, decision time) that the expert did not consider (it did not
see the conflict on its noisy radar, or had already handled it) has a deterministic "no action".

- The **oracle** ceiling scores the expert's own distribution against its demonstrations: it knows the
  session's style, which no model observes.
- The **achievable** ceiling is the Bayes-optimal predictor given the session's earlier observable decisions:
  the style is marginalised with its exact posterior given every decision the expert took (or did not take)
  strictly before the sample's time in the same session, ``P(style | earlier) ∝ prior(style) ·
  Π_r p(decision_r | style)``; the predictive distribution is the posterior mixture of the per-style
  distributions. It uses the expert's own picture at the decision (its radar noise, whether it saw the
  conflict), which the model observes too where the demonstrations record that picture as their tracks
  (``simulate(surveillance="radar")``, the default): then what remains between it and a model is what history
  and latent variables can win back. On demonstrations recorded with ``surveillance="truth"`` the model sees
  the true states and the ceiling knows the radar noise besides (about 0.015 nats per sample with the default
  noise, bench/RESULTS.md). The difference between the two ceilings is what no model can win back (the style
  no history has revealed yet).
Both score the discrete parts of the decision: the best accuracy any predictor can reach (``E[max p]``) and
the lowest possible negative log-likelihood, with p(aircraft) · p(type | aircraft) as models factorise it.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from atc_il.schemas import ACTION_TYPES, to_ns

# values closer than this (in the type's unit) count as the same mode
MODE_TOLERANCE = {"heading": 5.0, "altitude": 250.0, "speed": 5.0, "direct_to": 5.0, "resume": 1.0}


CEILINGS = ("oracle", "achievable")


def load_truth(path: str | Path) -> pd.DataFrame:
    t = pd.read_parquet(path)
    for col in ("joint", "by_style"):
        if col in t:
            t[col] = t[col].map(lambda j: json.loads(j) if isinstance(j, str) else j)
    return t


@functools.lru_cache(maxsize=4)
def _cached(path: str, mtime_ns: int, size: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    truth = load_truth(path)
    return truth, (achievable(truth) if "by_style" in truth else None)


def truth_and_achievable(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The expert's truth table and its achievable-ceiling form (None for tables without per-style records),
    read once per file and process: both take tens of seconds on a few hundred scenarios, and benchmarks
    evaluate many models against the same file. Treat the frames as read-only."""
    st = Path(path).stat()
    return _cached(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


def _log_lik(rec_by_style: dict, acted: bool, aircraft: int, action_type, value: float) -> dict[str, float]:
    """log p(the recorded decision | style) for every style of a record's ``by_style``."""
    out = {}
    for s, d in rec_by_style.items():
        pa = float(d["p_act"])
        if not acted:
            out[s] = math.log(max(1.0 - pa, 1e-300))
            continue
        q = sum(float(j[3]) for j in d["joint"] if int(j[0]) == aircraft and j[1] == action_type
                and abs(float(j[2]) - value) < 1e-6)
        out[s] = math.log(max(pa * q, 1e-300))
    return out


def achievable(truth: pd.DataFrame) -> pd.DataFrame:
    """``truth`` with ``p_act`` and ``joint`` replaced by the achievable ceiling's predictive distribution
    (the style marginalised with its posterior given the session's decisions strictly before each record's
    time) and ``style_posterior`` (style -> probability) added. Sessions are scenarios; records need
    ``by_style`` (truth tables written before it existed raise DataError)."""
    from atc_il.errors import DataError
    if "by_style" not in truth:
        raise DataError("expert truth has no by_style column (per-style distributions): re-simulate the "
                        "demonstrations with this version of atc-il to compute the achievable ceiling")
    out = truth.copy()
    p_act, joints, posts = np.zeros(len(out)), [None] * len(out), [None] * len(out)
    times = to_ns(out["time"])
    for _, rows in out.groupby("scenario", sort=False).indices.items():
        rows = rows[np.argsort(times[rows], kind="stable")]
        styles = list(out["by_style"].iloc[rows[0]])
        prior = np.array([float(out["by_style"].iloc[rows[0]][s].get("prior", 1.0 / len(styles))) for s in styles])
        log_w = np.log(prior)
        i = 0
        while i < len(rows):                      # one distinct decision time at a time
            j = i
            while j < len(rows) and times[rows[j]] == times[rows[i]]:
                j += 1
            w = np.exp(log_w - log_w.max())
            w /= w.sum()
            post = dict(zip(styles, w.tolist()))
            for r in rows[i:j]:
                bs = out["by_style"].iloc[r]
                pa_s = np.array([float(bs[s]["p_act"]) for s in styles])
                pa = float(w @ pa_s)
                mix: dict = {}
                for s, ws, ps in zip(styles, w, pa_s):
                    weight = ws * ps if pa > 0 else ws
                    for k, t, v, q in bs[s]["joint"]:
                        key = (int(k), t, float(v))
                        mix[key] = mix.get(key, 0.0) + weight * float(q)
                total = sum(mix.values())
                p_act[r], posts[r] = pa, post
                joints[r] = [(k, t, v, q / total) for (k, t, v), q in mix.items()] if total > 0 else []
            for r in rows[i:j]:                   # then learn from this time's decisions
                rec = out.iloc[r]
                acted = bool(rec["acted"]) and rec["action_type"] is not None and not pd.isna(rec["action_type"])
                ll = _log_lik(out["by_style"].iloc[r], acted, int(rec["aircraft"]) if acted else -1,
                              rec["action_type"], float(rec["value"]) if acted else 0.0)
                log_w = log_w + np.array([ll[s] for s in styles])
            i = j
    out["p_act"], out["joint"], out["style_posterior"] = p_act, joints, posts
    return out


def combine_records(p_acts: list[float], joints: list) -> tuple[float, list]:
    """One decision step of a pair from the expert's records of it: usually one, but the expert decides a resume
    for each aircraft of a pair separately, so both can be recorded at the same step. The records are
    independent decisions; the data set keeps one label per pair and step (the first action when several
    happened, an order the records do not give: taken as uniform among the acting ones). So P(act) =
    1 - prod(1 - p_i), and given acting record i is the label with probability p_i E[1 / (1 + others acting)]."""
    if len(p_acts) == 1:
        return p_acts[0], joints[0]
    p = np.clip(np.asarray(p_acts, float), 0.0, 1.0)
    weights = []
    for i in range(len(p)):
        dist = np.array([1.0])                     # distribution of the number of other records acting
        for k, pk in enumerate(p):
            if k != i:
                dist = np.convolve(dist, [1 - pk, pk])
        weights.append(p[i] * float(dist @ (1.0 / (1.0 + np.arange(len(dist))))))
    total = sum(weights)
    mix: dict = {}
    for w, j in zip(weights, joints):
        for k, t, v, q in j:
            key = (int(k), t, float(v))
            mix[key] = mix.get(key, 0.0) + (w / total if total > 0 else 1.0 / len(joints)) * float(q)
    return float(1.0 - np.prod(1.0 - p)), [(k, t, v, q) for (k, t, v), q in mix.items()]


def expert_distributions(time_ns: np.ndarray, f1: list, f2: list, truth: pd.DataFrame) -> dict:
    """Per sample: ``p_act`` (N,), ``p_aircraft`` (N, 2), ``p_type`` (N, n_types) and ``p_type_given_aircraft``
    (N, 2, n_types) given acting, the ``modes`` [(aircraft, type index, value, probability given acting)], and
    ``matched`` (N,) bool. ``truth``: the expert's table (the oracle ceiling) or :func:`achievable` of it."""
    n = len(time_ns)
    key = pd.DataFrame({"t": np.asarray(time_ns, dtype=np.int64), "f1": list(f1), "f2": list(f2)})
    tr = pd.DataFrame({"t": to_ns(truth["time"]), "f1": truth["flight_id_1"].astype(str).to_numpy(),
                       "f2": truth["flight_id_2"].astype(str).to_numpy(), "row": np.arange(len(truth))})
    groups = tr.groupby(["t", "f1", "f2"], sort=False)["row"].agg(list).rename("rows").reset_index()
    m = key.merge(groups, on=["t", "f1", "f2"], how="left")
    matched = m["rows"].notna().to_numpy()
    n_types = len(ACTION_TYPES)
    p_act = np.zeros(n)
    p_ac = np.full((n, 2), 0.5)
    p_type = np.full((n, n_types), 1.0 / n_types)
    p_tga = np.full((n, 2, n_types), 1.0 / n_types)
    modes: list[list] = [[] for _ in range(n)]
    pa = truth["p_act"].to_numpy()
    joint = truth["joint"].to_numpy()
    for i in np.flatnonzero(matched):
        p_act[i], j = combine_records([float(pa[r]) for r in m["rows"].iloc[i]], [joint[r] for r in m["rows"].iloc[i]])
        if not len(j):
            continue
        at = np.zeros((2, n_types))
        for k, t, v, q in j:
            ti = ACTION_TYPES.index(t)
            at[int(k), ti] += q
            modes[i].append((int(k), ti, float(v), float(q)))
        total = at.sum()
        ac = at.sum(1)
        p_ac[i], p_type[i] = ac / total, at.sum(0) / total
        for k in (0, 1):
            if ac[k] > 0:
                p_tga[i, k] = at[k] / ac[k]
    return {"p_act": p_act, "p_aircraft": p_ac, "p_type": p_type, "p_type_given_aircraft": p_tga, "modes": modes,
            "matched": matched}


def ceiling_metrics(dist: dict, act: np.ndarray, aircraft: np.ndarray, typ: np.ndarray) -> dict:
    """A ceiling's scores on the demonstrated labels (the best any predictor with its information can do, in
    expectation): accuracies ``E[max p]``, and the negative log-likelihoods of the labels."""
    p_act = np.clip(dist["p_act"], 1e-12, 1 - 1e-12)
    act = np.asarray(act).astype(int)
    pos = act == 1
    out = {"act_accuracy": float(np.mean(np.maximum(dist["p_act"], 1 - dist["p_act"]))),
           "act_nll": float(-np.mean(np.where(pos, np.log(p_act), np.log1p(-p_act)))),
           "matched_share": float(dist["matched"].mean()),
           "acting_matched_share": float(dist["matched"][pos].mean()) if pos.any() else float("nan")}
    if pos.any():
        pa = dist["p_aircraft"][pos]
        pt = dist["p_type"][pos]
        ai = np.asarray(aircraft)[pos].astype(int).clip(0, 1)
        ti = np.asarray(typ)[pos].astype(int).clip(0, None)
        out["aircraft_accuracy"] = float(pa.max(1).mean())
        out["type_accuracy"] = float(pt.max(1).mean())
        rows = np.arange(pos.sum())
        p_t = dist["p_type_given_aircraft"][pos][rows, ai, ti]
        lp_ac = np.log(np.clip(pa[rows, ai], 1e-12, 1))
        lp_ty = np.log(np.clip(p_t, 1e-12, 1))
        out["positive_discrete_nll"] = float(-(np.log(p_act[pos]) + lp_ac + lp_ty).mean())
        out["aircraft_nll_given_act"] = float(-lp_ac.mean())
        out["type_nll_given_act"] = float(-lp_ty.mean())
        out["discrete_nll"] = float(out["act_nll"] - (lp_ac + lp_ty).sum() / len(act))
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


def sample_modes(modes: list[list], n: int, seed: int = 0) -> list[np.ndarray | None]:
    """``n`` draws (aircraft, type, value) per sample from a ceiling's modes (``expert_distributions``'
    ``modes``; None where it has none): a ceiling's samples given acting, scored by :func:`mode_coverage` with
    the same estimator as a model's, so that what sampling alone loses is visible beside it."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray | None] = []
    for ms in modes:
        if not ms:
            out.append(None)
            continue
        q = np.array([m[3] for m in ms], float)
        pick = rng.choice(len(ms), size=n, p=q / q.sum())
        out.append(np.array([ms[j][:3] for j in pick], float))
    return out
