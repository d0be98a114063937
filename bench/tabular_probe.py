"""What the decision-time inputs hold for the act / aircraft / type decisions, and what a plain network makes of
them: gradient-boosted trees against flat networks with and without numeric embeddings, beside the achievable
ceiling, on a data set of the synthetic expert (e.g. the cache of bench/fidelity.py).

    .venv/bin/python bench/tabular_probe.py /tmp/fid/c160/sim/dataset

Inputs: the decision-time step of pair, neighbours and geometry (history features included) and the recent
clearances, flattened (the mlp encoder's view). Each predictor is fitted per decision part on the train split
(aircraft and type on the acting samples) and scored on the test split: negative log-likelihood (act: per
sample; aircraft and type: per acting sample) and accuracy. Networks: two hidden layers of 64, dropout 0.3,
AdamW, 25 epochs, the best test epoch reported (an optimistic choice, in their favour); variants: z-scored inputs
(``plain``), periodic embeddings (``periodic``: models.encoders.PeriodicEmbedding), piecewise-linear encodings
over training quantiles (``ple``), each on all inputs and on the six the expert's timing depends on. One seed: a
diagnostic, not the benchmark (that is bench/fidelity.py).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atc_il.feature_spec import FeatureSpec  # noqa: E402
from models.ceiling import ceiling_metrics, expert_distributions, truth_and_achievable  # noqa: E402
from models.data import load_data  # noqa: E402
from models.encoders import PeriodicEmbedding  # noqa: E402
from models.evaluate import META  # noqa: E402
from pipelines.shards import load_split  # noqa: E402

TIMING = ["g_tcpa_s", "g_time_in_conflict_s", "g_cleared_in_conflict_ac1", "g_cleared_in_conflict_ac2",
          "g_since_clr_ac1_s", "g_since_clr_ac2_s"]


def flat(ds: Path, split: str) -> tuple[np.ndarray, dict, np.ndarray]:
    t = load_data(ds, split).tensors
    b = t["pair"].shape[0]
    x = torch.cat([t["pair"][:, -1].reshape(b, -1), t["neighbours"][:, -1].reshape(b, -1), t["geometry"][:, -1],
                   t["clearances"].reshape(b, -1)], -1).numpy()
    return x, {k: t[f"label_{k}"].numpy() for k in ("act", "aircraft", "type")}, t["label_act"].numpy() == 1


def names_and_stats(spec: FeatureSpec) -> tuple[list[str], np.ndarray, np.ndarray]:
    k, m = spec.shape("neighbours")[1], spec.shape("clearances")[0]
    parts = [("pair", 2, "p"), ("neighbours", k, "n"), ("geometry", 1, "g"), ("clearances", m, "c")]
    names, mean, std = [], [], []
    st = spec.normalisation or {}
    for tensor, reps, tag in parts:
        for r in range(reps):
            names += [f"{tag}{r + 1 if reps > 1 else ''}_{n}" for n in spec.feature_names(tensor)]
            mean += list(st[tensor].mean)
            std += list(st[tensor].std)
    return names, np.array(mean), np.array(std)


def nll(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1))))


class PLE(nn.Module):
    """Piecewise-linear encoding over per-feature training quantiles, then a per-feature linear map and ReLU."""

    def __init__(self, x: np.ndarray, bins: int = 16, dim: int = 8):
        super().__init__()
        edges = []
        for q in np.quantile(x, np.linspace(0, 1, bins + 1), axis=0).T:
            u = np.unique(q)
            u = u if len(u) > 1 else np.array([u[0], u[0] + 1])
            edges.append(np.concatenate([u, np.full(bins + 1 - len(u), u[-1])]))
        e = torch.tensor(np.array(edges), dtype=torch.float32)
        w = e[:, 1:] - e[:, :-1]
        self.register_buffer("lo", e[:, :-1])
        self.register_buffer("w", torch.where(w > 0, w, torch.ones_like(w)))
        self.register_buffer("m", (w > 0).float())
        self.weight = nn.Parameter(torch.randn(e.shape[0], bins, dim) / math.sqrt(bins))
        self.bias = nn.Parameter(torch.zeros(e.shape[0], dim))
        self.out_features = e.shape[0] * dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = ((x[..., None] - self.lo) / self.w).clamp(0, 1) * self.m
        return torch.relu(torch.einsum("bfk,fkd->bfd", t, self.weight) + self.bias).flatten(1)


def network(kind: str, x: torch.Tensor, classes: int) -> nn.Module:
    f = x.shape[1]
    emb: nn.Module = {"plain": lambda: nn.Identity(), "periodic": lambda: PeriodicEmbedding(f, 8, 8, 1.0),
                      "ple": lambda: PLE(x.numpy())}[kind]()
    width = getattr(emb, "out_features", f)
    return nn.Sequential(emb, nn.Linear(width, 64), nn.GELU(), nn.Dropout(0.3), nn.Linear(64, 64), nn.GELU(),
                         nn.Dropout(0.3), nn.Linear(64, classes))


def fit_network(kind: str, x: torch.Tensor, y: np.ndarray, xt: torch.Tensor, yt: np.ndarray, classes: int,
                epochs: int) -> tuple[float, float]:
    torch.manual_seed(0)
    m = network(kind, x, classes)
    opt = torch.optim.AdamW(m.parameters(), 1e-3, weight_decay=1e-4)
    yy = torch.tensor(y).long()
    best = (9.0, 0.0)
    for _ in range(epochs):
        m.train()
        perm = torch.randperm(len(yy))
        for i in range(0, len(yy), 256):
            j = perm[i:i + 256]
            loss = nn.functional.cross_entropy(m(x[j]), yy[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
        m.eval()
        with torch.no_grad():
            p = torch.softmax(m(xt), -1).numpy()
        best = min(best, (nll(p, yt), float(np.mean(p.argmax(1) == yt))))
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, help="a data set folder of the synthetic expert (expert_truth.parquet beside it)")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--kinds", nargs="+", default=["plain", "periodic", "ple"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ds = args.dataset
    spec = FeatureSpec.load(ds)
    names, mean, std = names_and_stats(spec)
    xtr, ytr, pos_tr = flat(ds, "train")
    xte, yte, pos_te = flat(ds, "test")
    print(f"train {len(xtr)} samples ({pos_tr.sum()} acting), test {len(xte)} ({pos_te.sum()} acting), "
          f"{xtr.shape[1]} inputs", flush=True)
    _, achievable = truth_and_achievable(ds.parent / "expert_truth.parquet")
    meta = pd.DataFrame(load_split(ds, "test", as_torch=False, columns=META))
    dist = expert_distributions(meta["time"].to_numpy(), meta["flight_id_1"], meta["flight_id_2"], achievable)
    c = ceiling_metrics(dist, yte["act"], yte["aircraft"], yte["type"])
    rows = [("achievable ceiling", "-", (c["act_nll"], c["act_accuracy"]),
             (c["aircraft_nll_given_act"], c["aircraft_accuracy"]), (c["type_nll_given_act"], c["type_accuracy"]))]
    timing = [names.index(n) for n in TIMING]
    sets = {"all": list(range(xtr.shape[1])), "timing (6)": timing}
    tasks = {"act": (np.ones(len(xtr), bool), np.ones(len(xte), bool), 2), "aircraft": (pos_tr, pos_te, 2),
             "type": (pos_tr, pos_te, 5)}
    from sklearn.ensemble import HistGradientBoostingClassifier
    ztr = torch.tensor((xtr - mean) / std, dtype=torch.float32)
    zte = torch.tensor((xte - mean) / std, dtype=torch.float32)
    for set_name, cols in sets.items():
        res = []
        for task, (str_, ste, _) in tasks.items():
            g = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, early_stopping=True, random_state=0)
            g.fit(xtr[str_][:, cols], ytr[task][str_])
            p = g.predict_proba(xte[ste][:, cols])
            y = yte[task][ste]
            idx = {v: i for i, v in enumerate(g.classes_)}
            res.append((nll(p, np.array([idx.get(v, 0) for v in y])), float(np.mean(g.classes_[p.argmax(1)] == y))))
        rows.append(("gradient-boosted trees", set_name, *res))
        print(rows[-1], flush=True)
        for kind in args.kinds:
            t0 = time.perf_counter()
            res = [fit_network(kind, ztr[str_][:, cols], ytr[task][str_], zte[ste][:, cols], yte[task][ste], k, args.epochs)
                   for task, (str_, ste, k) in tasks.items()]
            rows.append((f"network, {kind}", set_name, *res))
            print(rows[-1], f"{time.perf_counter() - t0:.0f} s", flush=True)
    print("\n| predictor | inputs | act NLL | act acc | aircraft NLL | aircraft acc | type NLL | type acc |")
    print("|---|---|---|---|---|---|---|---|")
    for name, inputs, a, b, t in rows:
        print(f"| {name} | {inputs} | {a[0]:.4f} | {a[1]:.3f} | {b[0]:.3f} | {b[1]:.3f} | {t[0]:.3f} | {t[1]:.3f} |")


if __name__ == "__main__":
    main()
