"""Every encoder x head on the same synthetic data set (multimodal, non-Markovian expert), same budget:
offline metrics against the Bayes ceiling, training throughput and inference latency, in one table.

    .venv/bin/python bench/heads.py [--scenarios 24] [--steps 400] [--data DIR]

Without --data, the data set is made first: `--scenarios` generated scenarios run in BlueSky under the
synthetic expert, then conflicts -> actions (the expert's clearance log) -> observation histories,
split by scenario. Each model: the config's architecture (hidden 64, VAE on), AdamW, the same number of
optimiser steps and batch size, seed 0, best validation checkpoint; evaluated on the test split.
Appends the table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import append_results  # noqa: E402

ENCODERS = ("mlp", "gru", "transformer")
HEADS = ("deterministic", "mdn", "autoregressive")


def make_data(ws: Path, scenarios: int, seed: int) -> Path:
    from atc_il.config import PipelineConfig
    from pipelines import actions as act, conflicts as con
    from pipelines.dataset import build
    from simulator_adapters.demonstrations import simulate
    rep = simulate(ws, scenarios, "atco", seed=seed, workers=2,
                   scenario_kwargs={"duration_s": 1800, "density": 4.0, "conflicts": 8})
    print(f"simulated: {rep['scenarios']} scenarios, {rep['clearances']} clearances, "
          f"{rep['sim_seconds_per_wall_second']} sim s / wall s", flush=True)
    cfg = PipelineConfig()
    con.run(ws / "tracks", ws, cfg.conflicts)
    act.run(ws / "tracks", ws, cfg.actions, log=ws / "clearances.parquet", infer=False, episodes_dir=ws / "episodes")
    s = build(ws, None, cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"split": "scenario"})}))
    print(f"data set: {s['samples']} samples ({s['positive samples']} with an action)", flush=True)
    return ws / "dataset"


def latency_ms(policy, obs, batch: int, reps: int = 20) -> float:
    from models.interface import Observations
    o = Observations(*(getattr(obs, k)[:batch] for k in ("pair", "neighbours", "geometry", "clearances")))
    n = o.batch_size
    with torch.no_grad():
        policy.predict(o)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            policy.predict(o)
            times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3 / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--scenarios", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/atc-il-heads"))
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from models.config import ModelConfig
    from models.data import load_data
    from models.evaluate import evaluate
    from models.policy import load_policy
    from models.train import train

    torch.set_num_threads(1)       # steadier on a shared 2-core machine (see models tests)
    data = args.data or make_data(args.workdir / "sim", args.scenarios, args.seed)
    test_obs, _ = load_data(data, "test").batch()
    rows = []
    for enc in ENCODERS:
        for head in HEADS:
            name = f"{enc}-{head}"
            cfg = ModelConfig(name=name, encoder={"name": enc, "hidden": args.hidden},
                              vae={"enabled": True, "latent_dim": 8},
                              head={"name": head, "hidden": args.hidden},
                              train={"epochs": 1000, "max_steps": args.steps, "batch_size": args.batch,
                                     "patience": 1000, "device": "cpu", "seed": 0, "lr": 2e-3})
            s = train(cfg, data, args.workdir / "runs" / name, resume=False, tracking_uri=False, progress=False)
            pol = load_policy(s["best_dir"])
            m = evaluate(pol, data, "test", n_samples=64, out=args.workdir / "eval" / name, title=name)
            rows.append({"encoder": enc, "head": head, **{k: v for k, v in m.items() if not isinstance(v, dict)},
                         "ceiling": m.get("ceiling", {}), "gap": m.get("gap", {}),
                         "train_samples_per_s": s["samples_per_s"], "lat_b1_ms": latency_ms(pol, test_obs, 1),
                         "lat_b1024_ms": latency_ms(pol, test_obs, 1024, reps=5)})
            r = rows[-1]
            print(f"{name:28s} nll {r['nll']:.3f} act acc {r['act_accuracy']:.3f} type acc {r.get('type_accuracy', float('nan')):.3f} "
                  f"mode cov {r.get('mode_coverage', float('nan')):.2f} tv {r.get('decision_tv_distance', float('nan')):.2f} "
                  f"{r['train_samples_per_s']:.0f} samples/s", flush=True)
    (args.workdir / "heads.json").write_text(json.dumps(rows, indent=1, default=str))
    c = rows[0]["ceiling"]
    cols = [("nll", "NLL (nats)"), ("nll_discrete", "discrete NLL"), ("act_accuracy", "act acc"), ("act_f1", "act F1"),
            ("aircraft_accuracy", "aircraft acc"), ("type_accuracy", "type acc"), ("type_macro_f1", "type F1"),
            ("value_mae_heading", "heading MAE (deg)"), ("value_mae_altitude", "altitude MAE (ft)"),
            ("value_mae_speed", "speed MAE (kt)"), ("timing_error_s", "timing err (s)"), ("mode_coverage", "mode coverage"),
            ("decision_tv_distance", "TV to demos"), ("latent_style_accuracy", "style from z"),
            ("train_samples_per_s", "train samples/s"), ("lat_b1_ms", "ms/decision b1"), ("lat_b1024_ms", "ms/decision b1024")]

    def fmt(v):
        return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else (f"{v:.3g}" if isinstance(v, float) else str(v))
    lines = ["| model | " + " | ".join(t for _, t in cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {r['encoder']} + {r['head']} | " + " | ".join(fmt(r.get(k)) for k, _ in cols) + " |" for r in rows]
    lines.append("| **Bayes ceiling** (expert) | - | " + fmt(c.get("discrete_nll")) + " | " + fmt(c.get("act_accuracy"))
                 + " | - | " + fmt(c.get("aircraft_accuracy")) + " | " + fmt(c.get("type_accuracy")) + " |" + " - |" * (len(cols) - 6))
    spec = json.loads((Path(data) / "feature_spec.json").read_text())
    sp = spec["splits"]
    body = (f"`.venv/bin/python bench/heads.py --scenarios {args.scenarios} --steps {args.steps} --batch {args.batch} "
            f"--hidden {args.hidden}`: synthetic expert data, split by scenario (train/val/test samples "
            f"{sp['train']['samples']}/{sp['val']['samples']}/{sp['test']['samples']}); every model {args.steps} "
            f"optimiser steps of batch {args.batch} on CPU (1 thread), VAE on (latent 8), evaluated on the test split; "
            "NLL in nats with values in their type's unit; the ceiling is the expert's own score on its decisions.\n\n"
            + "\n".join(lines))
    print(body)
    if not args.no_record:
        append_results("Policy heads x encoders on synthetic expert data (bench/heads.py)", body)


if __name__ == "__main__":
    main()
