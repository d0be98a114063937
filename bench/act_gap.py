"""Where a model's discrete-NLL gap to the achievable ceiling lies, and what the decision-time inputs can reach.

    .venv/bin/python bench/act_gap.py DATASET MODEL_DIR [MODEL_DIR ...] [--sim SIM] [--no-record]

On the test split of a synthetic-expert data set (its ``expert_truth.parquet`` beside it):
1. each model's gap split into its act, aircraft and type terms, on conflict steps and on resume steps (per sample
   of the whole split, so that the parts add up to the gap), and the act term by the expert's state at the step:
   not considering the pair (the ceiling's P(act) is 0: it did not see the conflict, had handled it, or a resume's
   conditions did not hold) or considering it with a small or large P(act);
2. a probe of what the inputs hold for the act term: gradient-boosted trees (scikit-learn) on the decision-time
   geometry (the mlp encoder's timing inputs), trained on the train split, scored like the models; with ``--sim``
   (the simulation folder, with its ``conflicts`` stage) also with each aircraft's number of predicted conflicts with
   a third aircraft at the step (what a controller's display shows and the expert's resume rule reads).
Results to bench/RESULTS.md (``--no-record``: print only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import append_results, fmt  # noqa: E402

EPS = 1e-12


def _nll(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return -np.where(y == 1, np.log(p), np.log1p(-p))


def split_frame(ds: Path, split: str, ceiling) -> tuple[pd.DataFrame, object, object, dict]:
    """Samples' meta, the data (observations, decisions) and the achievable ceiling's distributions."""
    from atc_il.schemas import to_ns
    from models.ceiling import expert_distributions
    from models.data import load_data
    from models.evaluate import META
    from pipelines.shards import load_split
    meta = pd.DataFrame(load_split(ds, split, as_torch=False, columns=META))
    meta["t_ns"] = to_ns(meta["time"])
    meta["resume"] = meta["episode_id"].astype(str).str.startswith("resume:")
    obs, dec = load_data(ds, split).batch()
    dist = expert_distributions(meta["t_ns"].to_numpy(), meta["flight_id_1"], meta["flight_id_2"], ceiling)
    return meta, obs, dec, dist


def decompose(policy, obs, dec, meta: pd.DataFrame, dist: dict) -> tuple[list[dict], list[dict]]:
    """The gap's terms per kind of step, and the act term per state of the expert (per sample of the split)."""
    from models.ceiling import ceiling_metrics
    from models.evaluate import _log_probs
    _, _, _, terms = _log_probs(policy, obs, dec, 1024)
    y, ac, ty = (t.numpy() for t in (dec.act, dec.aircraft, dec.type))
    n = len(y)
    res = meta["resume"].to_numpy()
    rows = []
    for kind, sel in (("all steps", np.ones(n, bool)), ("conflict steps", ~res), ("resume steps", res)):
        d = {k: (v[sel] if isinstance(v, np.ndarray) else [x for x, s in zip(v, sel) if s]) for k, v in dist.items()}
        c = ceiling_metrics(d, y[sel], ac[sel], ty[sel])
        pos = y[sel] == 1
        rows.append({"steps": kind, "samples": int(sel.sum()), "acting": int(pos.sum()),
                     "act": float((-terms["act"][sel] - _nll(y[sel], d["p_act"])).sum() / n),
                     "aircraft": float((-terms["aircraft"][sel]).sum() / n - c.get("aircraft_nll_given_act", 0) * pos.sum() / n),
                     "type": float((-terms["type"][sel]).sum() / n - c.get("type_nll_given_act", 0) * pos.sum() / n)})
        rows[-1]["gap"] = rows[-1]["act"] + rows[-1]["aircraft"] + rows[-1]["type"]
    p_model = np.exp(terms["act"])
    p_model = np.where(y == 1, p_model, 1 - p_model)
    pc = dist["p_act"]
    state = np.where(~dist["matched"], "not considered", np.where(pc < 0.05, "considered, P < 0.05",
                                                                   np.where(pc < 0.25, "considered, 0.05-0.25",
                                                                            "considered, P >= 0.25")))
    gap = -terms["act"] - _nll(y, pc)
    states = []
    for kind, sel0 in (("conflict", ~res), ("resume", res)):
        for s in ("not considered", "considered, P < 0.05", "considered, 0.05-0.25", "considered, P >= 0.25"):
            sel = sel0 & (state == s)
            if sel.any():
                states.append({"steps": kind, "expert": s, "samples": int(sel.sum()), "acting": int(y[sel].sum()),
                               "p_model": float(p_model[sel].mean()), "p_ceiling": float(pc[sel].mean()),
                               "act_gap": float(gap[sel].sum() / n)})
    return rows, states


def other_conflicts(meta: pd.DataFrame, sim: Path) -> np.ndarray:
    """(N, 2): per sample, each aircraft's number of predicted conflicts with a third aircraft at the step."""
    from atc_il.schemas import to_ns
    conf = pd.read_parquet(sim / "conflicts", columns=["time", "flight_id_1", "flight_id_2", "conflict"])
    conf = conf[conf["conflict"].astype(bool)]
    t = to_ns(conf["time"])
    f1, f2 = conf["flight_id_1"].astype(str).to_numpy(), conf["flight_id_2"].astype(str).to_numpy()
    per = pd.DataFrame({"t": np.r_[t, t], "f": np.r_[f1, f2]}).groupby(["t", "f"]).size().rename("n").reset_index()
    own = pd.DataFrame({"t_ns": t, "flight_id_1": f1, "flight_id_2": f2, "own": 1})
    m = meta[["t_ns", "flight_id_1", "flight_id_2"]].astype({"flight_id_1": str, "flight_id_2": str})
    in_pair = m.merge(own.drop_duplicates(["t_ns", "flight_id_1", "flight_id_2"]), how="left",
                      on=["t_ns", "flight_id_1", "flight_id_2"])["own"].fillna(0).to_numpy()
    out = np.zeros((len(meta), 2))
    for k, col in enumerate(("flight_id_1", "flight_id_2")):
        c = pd.DataFrame({"t": m["t_ns"].to_numpy(), "f": m[col].to_numpy()}).merge(per, on=["t", "f"], how="left")
        out[:, k] = c["n"].fillna(0).to_numpy() - in_pair
    return out


def probe(ds: Path, ceiling, sim: Path | None, test: tuple | None = None) -> list[dict]:
    """Gradient-boosted trees for P(act) on the decision-time geometry (+ other conflicts), scored on the test split
    (``test``: its :func:`split_frame`, when already loaded)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from atc_il.feature_spec import FeatureSpec
    names = FeatureSpec.load(ds).feature_names("geometry")
    cols = [i for i, c in enumerate(names) if c != "valid"]
    frames = {}
    for split in ("train", "test"):
        meta, obs, dec, dist = test if split == "test" and test is not None else split_frame(ds, split, ceiling)
        x = np.c_[obs.geometry[:, -1].numpy()[:, cols], meta["resume"].to_numpy()]
        if sim is not None:
            x = np.c_[x, other_conflicts(meta, sim)]
        frames[split] = (x, dec.act.numpy(), dist["p_act"], meta["resume"].to_numpy())
    xtr, ytr, _, _ = frames["train"]
    xte, yte, pc, res = frames["test"]
    n_geo = len(cols) + 1
    rows = []
    variants = [("decision-time geometry", n_geo)] + ([("+ other conflicts per aircraft", xtr.shape[1])] if sim else [])
    for label, k in variants:
        clf = HistGradientBoostingClassifier(max_iter=400, learning_rate=0.05, early_stopping=True,
                                             validation_fraction=0.15, random_state=0).fit(xtr[:, :k], ytr)
        p = clf.predict_proba(xte[:, :k])[:, 1]
        row = {"inputs": label}
        for kind, sel in (("all", np.ones(len(yte), bool)), ("conflict", ~res), ("resume", res)):
            row[kind] = float((_nll(yte[sel], p[sel]) - _nll(yte[sel], pc[sel])).sum() / len(yte))
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, help="a synthetic-expert data set folder (expert_truth.parquet beside it)")
    ap.add_argument("models", type=Path, nargs="*", help="policy folders (a training run's best/)")
    ap.add_argument("--sim", type=Path, default=None, help="the simulation folder (its conflicts stage) for the probe")
    ap.add_argument("--no-probe", action="store_true", help="skip the gradient-boosted-trees probe")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    from models.ceiling import truth_and_achievable
    from models.policy import load_policy
    t0 = time.perf_counter()
    truth = args.dataset.parent / "expert_truth.parquet"
    if not truth.exists():
        raise SystemExit(f"{truth}: no expert truth beside the data set (a synthetic-expert data set is needed)")
    _, ceiling = truth_and_achievable(truth)
    if ceiling is None:
        raise SystemExit(f"{truth}: no per-style records; re-simulate the demonstrations with this version")
    body = []
    test = None
    if args.models:
        test = meta, obs, dec, dist = split_frame(args.dataset, "test", ceiling)
        gl = ["| model | steps | samples | acting | gap | act | aircraft | type |", "|---|---|---|---|---|---|---|---|"]
        sl = ["| model | steps | the expert at the step | samples | acting | mean P(act) model | mean P(act) ceiling | act gap |",
              "|---|---|---|---|---|---|---|---|"]
        for mdir in args.models:
            pol = load_policy(mdir)
            pol.eval()
            rows, states = decompose(pol, obs, dec, meta, dist)
            name = mdir.parent.name if mdir.name == "best" else mdir.name
            gl += [f"| {name} | {r['steps']} | {r['samples']} | {r['acting']} | {fmt(r['gap'])} | {fmt(r['act'])} | "
                   f"{fmt(r['aircraft'])} | {fmt(r['type'])} |" for r in rows]
            sl += [f"| {name} | {s['steps']} | {s['expert']} | {s['samples']} | {s['acting']} | {fmt(s['p_model'])} | "
                   f"{fmt(s['p_ceiling'])} | {fmt(s['act_gap'])} |" for s in states]
            print(json.dumps({"model": name, "terms": rows, "states": states}), flush=True)
        body += ["Gap to the achievable ceiling in discrete NLL, by term and kind of step (nats per sample of the whole "
                 "test split, so the rows of a model add up to its 'all steps' row):", "", *gl, "",
                 "The act term by the expert's state at the step:", "", *sl, ""]
    if not args.no_probe:
        rows = probe(args.dataset, ceiling, args.sim, test)
        print(json.dumps({"probe": rows}), flush=True)
        body += ["Probe: gradient-boosted trees for P(act) (scikit-learn HistGradientBoosting, trained on the train "
                 "split), act gap to the ceiling in nats per sample of the test split:", "",
                 "| inputs | all steps | conflict steps | resume steps |", "|---|---|---|---|",
                 *[f"| {r['inputs']} | {fmt(r['all'])} | {fmt(r['conflict'])} | {fmt(r['resume'])} |" for r in rows], ""]
    cmd = "python " + " ".join(sys.argv)
    body.insert(0, f"`{cmd}` ({time.perf_counter() - t0:.0f} s); data set {args.dataset}.\n")
    print("\n".join(body))
    if not args.no_record:
        append_results("Where the gap to the achievable ceiling lies (bench/act_gap.py)", "\n".join(body))


if __name__ == "__main__":
    main()
