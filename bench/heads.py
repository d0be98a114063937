"""Policy heads (and encoders) on the same synthetic data set (multimodal, non-Markovian expert), same budget:
offline metrics against the Bayes ceiling, closed-loop outcomes in BlueSky, training throughput and
inference latency, in one table.

    .venv/bin/python bench/heads.py [--scenarios 24] [--steps 400] [--data DIR] [--encoders gru mlp]
                                    [--heads mdn cvae-discrete] [--closed-loop 3] [--loop-duration 900]

Without --data, the data set is made first: `--scenarios` generated scenarios run in BlueSky under the
synthetic expert, then conflicts -> actions (the expert's clearance log) -> observation histories,
split by scenario. Each model: the config's architecture (hidden 64, VAE on), AdamW, the same number of
optimiser steps and batch size, seed 0, best validation checkpoint; evaluated on the test split.

Heads: deterministic, mdn, autoregressive, cvae (continuous latent, 4 dimensions), cvae-discrete (a
categorical code over 3 categories, as many as the synthetic expert's styles) and diffusion (DDIM, 10
sampling steps by default). Default grid (fits ~20 minutes on a 2-core machine): every head with the gru
encoder, plus mlp + mdn and transformer + mdn (the encoder comparison at the default head; the earlier
full encoder x head table is in bench/RESULTS.md). With ``--encoders`` and/or ``--heads``: their product
(all encoders / all heads for the one not given).

Offline (models.evaluate, test split): NLL (exact for mdn, autoregressive and cvae-discrete; an importance-
sampled estimate for cvae, a kernel-density estimate over DDIM samples for diffusion, a fixed-variance
yardstick for deterministic), accuracies, their gap to the Bayes ceiling (ceiling - model; discrete NLL:
model - ceiling), mode coverage, TV distance; for cvae-discrete the normalised mutual information between
the most probable code and the expert's true style (posterior given the demonstrated decision, and the
learned prior given the history).

Closed loop (``--closed-loop N``, 0 = skip): ``simulator_adapters.evaluation.simeval`` (what
``atc-il simeval --controller model:DIR`` runs) with every trained model (its best checkpoint folder) and
the references atco (the synthetic expert), mvp and none on the same N fresh generated scenarios (seed
``--seed + 1``, ``--loop-duration`` s each): losses of separation, resolved %, clearances.

Latency: ``policy.predict`` (the most likely decision, as the closed-loop controller asks) per decision at
batch 1 and 1024, median of repeats; for diffusion also per number of DDIM steps (``--ddim-steps``), both
``predict`` (the most probable of 32 DDIM samples) and one sample per decision.
Appends the table to bench/RESULTS.md and writes bench/heads.png.
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
from _machine import append_results, fmt, save_figure  # noqa: E402

from atc_il.feature_spec import FeatureSpec  # noqa: E402

ENCODERS = ("mlp", "gru", "transformer")
HEAD_CFG = {"deterministic": {"name": "deterministic"}, "mdn": {"name": "mdn"},
            "autoregressive": {"name": "autoregressive"}, "cvae": {"name": "cvae", "latent": "continuous"},
            "cvae-discrete": {"name": "cvae", "latent": "discrete", "codes": 3}, "diffusion": {"name": "diffusion"}}
HEADS = tuple(HEAD_CFG)
DEFAULT_GRID = [("gru", h) for h in HEADS] + [("mlp", "mdn"), ("transformer", "mdn")]
NLL_KIND = {"deterministic": "fixed-var", "mdn": "exact", "autoregressive": "exact", "cvae": "IS est.",
            "cvae-discrete": "exact", "diffusion": "KDE est."}


def make_data(ws: Path, scenarios: int, seed: int) -> Path:
    from atc_il.config import PipelineConfig
    from pipelines import actions as act
    from pipelines import conflicts as con
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


def latency_ms(policy, obs, batch: int, reps: int = 20, steps: int | None = None, sample: bool = False) -> float:
    """Median wall time per decision (ms) of ``policy.predict`` on ``batch`` test observations; ``steps``:
    DDIM steps (diffusion); ``sample``: one sampled decision per observation instead of the most likely."""
    from models.interface import Observations
    o = Observations(*(getattr(obs, k)[:batch] for k in ("pair", "neighbours", "geometry", "clearances")))
    n = o.batch_size
    kw = {} if steps is None else {"sampling_steps": steps}
    gen = torch.Generator().manual_seed(0)

    def call():
        if sample:
            return policy.sample(o, 1, gen, **kw)
        return policy.predict(o, **kw)
    with torch.no_grad():
        call()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3 / n


def code_style_all_splits(policy, data: Path) -> dict:
    """Code-style NMI of a discrete-code cvae over train + val + test together (more scenarios, hence more
    styles, than the test split alone; the train split is what the code was fitted on)."""
    import pandas as pd

    from models.ceiling import load_truth
    from models.data import load_data
    from models.evaluate import code_style_nmi
    from models.interface import Decisions, Observations
    from pipelines.shards import load_split
    obs, dec, meta = [], [], []
    for split in ("train", "val", "test"):
        o, d = load_data(data, split, expect=policy.spec).batch()
        obs.append(o)
        dec.append(d)
        meta.append(pd.DataFrame(load_split(data, split, as_torch=False, columns=["split_key"])))
    o = Observations(*(torch.cat([getattr(x, k) for x in obs]) for k in ("pair", "neighbours", "geometry", "clearances")))
    d = Decisions(*(torch.cat([getattr(x, k) for x in dec]) for k in ("act", "aircraft", "type", "value")))
    m = code_style_nmi(policy, o, d, pd.concat(meta, ignore_index=True), load_truth(Path(data).parent / "expert_truth.parquet"))
    return {f"all_{k}": v for k, v in m.items()}


def closed_loop(models: dict[str, Path], n: int, seed: int, duration_s: float, out: Path,
                workers: int = 1) -> dict[str, dict]:
    """simeval (the API behind ``atc-il simeval``) with the references and every model (``model:DIR``) on the
    same ``n`` generated scenarios (``workers`` BlueSky processes); per controller label: its aggregate row plus
    summed rollout wall time."""
    import pandas as pd

    from simulator_adapters.evaluation import simeval
    specs = {"expert (atco)": "atco", "MVP": "mvp", "none": "none", **{k: f"model:{v}" for k, v in models.items()}}
    kw = {"duration_s": duration_s, "density": 4.0, "conflicts": 8}
    agg = simeval(list(specs.values()), n, seed, out, kw, progress=False, workers=workers)
    per = pd.read_csv(out / "per_scenario.csv")
    wall = per.groupby("controller")["wall_s"].sum()
    rows = {r["controller"]: r for r in agg.to_dict("records")}
    return {label: {**rows[spec], "loop_wall_s": float(wall.get(spec, np.nan))} for label, spec in specs.items()}


def plot(rows: list[dict], refs: dict, diff_lat: list[dict], path: Path) -> None:
    """Mode coverage and NLL against closed-loop LoS per model; diffusion latency against DDIM steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    have_loop = any(r.get("los") is not None for r in rows)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, (k, xlabel) in zip(axes[:2], (("mode_coverage", "mode coverage (test, higher is better)"),
                                          ("nll", "test NLL (nats; estimates for cvae / diffusion)"))):
        for i, r in enumerate(rows):
            y = r.get("los") if have_loop else r.get("nll_discrete")
            x = r.get(k)
            if x is None or y is None:
                continue
            ax.scatter(x, y, color=f"C{i % 10}", s=40)
            ax.annotate(r["model"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if have_loop:
            for (label, ref), ls in zip(refs.items(), ("--", "-.", ":")):
                ax.axhline(ref["los"], color="k", ls=ls, lw=1, label=f"{label}: {ref['los']} LoS")
            ax.legend(fontsize=7)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel("closed-loop losses of separation (lower is better)" if have_loop else "discrete NLL", fontsize=9)
    ax = axes[2]
    if diff_lat:
        st = [d["steps"] for d in diff_lat]
        for key, label, m in (("pred_b1_ms", "predict, batch 1", "o-"), ("pred_b1024_ms", "predict, batch 1024", "s-"),
                              ("samp_b1_ms", "1 sample, batch 1", "o--"), ("samp_b1024_ms", "1 sample, batch 1024", "s--")):
            ax.plot(st, [d[key] for d in diff_lat], m, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(st, [str(s) for s in st])
        ax.set_xlabel("DDIM sampling steps", fontsize=9)
        ax.set_ylabel("ms per decision (CPU, 1 thread)", fontsize=9)
        ax.legend(fontsize=7)
        ax.set_title("diffusion head: inference latency", fontsize=9)
    else:
        ax.set_axis_off()
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="an existing data set folder (skips simulation)")
    ap.add_argument("--scenarios", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--encoders", nargs="+", choices=ENCODERS, default=None)
    ap.add_argument("--heads", nargs="+", choices=HEADS, default=None)
    ap.add_argument("--closed-loop", type=int, default=3, help="closed-loop scenarios (0: skip)")
    ap.add_argument("--loop-duration", type=float, default=900.0, help="closed-loop scenario length (s)")
    ap.add_argument("--ddim-steps", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/atc-il-heads-cmp"))
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from models.config import ModelConfig
    from models.data import load_data
    from models.evaluate import evaluate
    from models.policy import load_policy
    from models.train import train

    torch.set_num_threads(1)       # steadier on a shared 2-core machine (see models tests)
    t_all = time.perf_counter()
    grid = (DEFAULT_GRID if args.encoders is None and args.heads is None
            else [(e, h) for e in (args.encoders or ENCODERS) for h in (args.heads or HEADS)])
    data = args.data or make_data(args.workdir / "sim", args.scenarios, args.seed)
    test_obs, _ = load_data(data, "test").batch()
    rows, best, diff_lat = [], {}, []
    for enc, head in grid:
        name = f"{enc}-{head}"
        cfg = ModelConfig(name=name, encoder={"name": enc, "hidden": args.hidden},
                          vae={"enabled": True, "latent_dim": 8},
                          head={**HEAD_CFG[head], "hidden": args.hidden},
                          train={"epochs": 1000, "max_steps": args.steps, "batch_size": args.batch,
                                 "patience": 1000, "device": "cpu", "seed": 0, "lr": 2e-3})
        t = time.perf_counter()
        s = train(cfg, data, args.workdir / "runs" / name, resume=False, tracking_uri=False, progress=False)
        t_train = time.perf_counter() - t
        pol = load_policy(s["best_dir"])
        best[f"{enc} + {head}"] = Path(s["best_dir"]).resolve()
        t = time.perf_counter()
        m = evaluate(pol, data, "test", n_samples=64, out=args.workdir / "eval" / name, title=name)
        t_eval = time.perf_counter() - t
        rows.append({"model": f"{enc} + {head}", "encoder": enc, "head": head, "nll_kind": NLL_KIND[head],
                     **{k: v for k, v in m.items() if not isinstance(v, dict)},
                     **{f"gap_{k}": v for k, v in m.get("gap", {}).items()},
                     "ceiling": m.get("ceiling", {}), "train_samples_per_s": s["samples_per_s"],
                     "lat_b1_ms": latency_ms(pol, test_obs, 1), "lat_b1024_ms": latency_ms(pol, test_obs, 1024, reps=5),
                     "train_s": round(t_train, 1), "eval_s": round(t_eval, 1)})
        if getattr(pol.head, "discrete", False):
            r = rows[-1]
            r.update(code_style_all_splits(pol, data))
            print(f"  code-style NMI over all splits: posterior {fmt(r['all_code_style_nmi_posterior'])} prior "
                  f"{fmt(r['all_code_style_nmi_prior'])} ({r['all_code_style_styles']} styles, codes used "
                  f"{r['all_code_style_codes_used_posterior']}/{r['all_code_style_codes_used_prior']})", flush=True)
        if head == "diffusion" and not diff_lat:
            for k in args.ddim_steps:
                diff_lat.append({"steps": k, "pred_b1_ms": latency_ms(pol, test_obs, 1, steps=k),
                                 "pred_b1024_ms": latency_ms(pol, test_obs, 1024, reps=3, steps=k),
                                 "samp_b1_ms": latency_ms(pol, test_obs, 1, steps=k, sample=True),
                                 "samp_b1024_ms": latency_ms(pol, test_obs, 1024, reps=3, steps=k, sample=True)})
        r = rows[-1]
        print(f"{name:28s} nll {r['nll']:.3f} ({r['nll_kind']}) act acc {r['act_accuracy']:.3f} "
              f"type acc {r.get('type_accuracy', float('nan')):.3f} mode cov {r.get('mode_coverage', float('nan')):.2f} "
              f"tv {r.get('decision_tv_distance', float('nan')):.2f} {r['train_samples_per_s']:.0f} samples/s "
              f"[train {r['train_s']} s, eval {r['eval_s']} s]"
              + (f" code-style NMI post {fmt(r.get('code_style_nmi_posterior'))} prior {fmt(r.get('code_style_nmi_prior'))}"
                 if "code_style_nmi_prior" in r else ""), flush=True)
    refs = {}
    if args.closed_loop > 0:
        t = time.perf_counter()
        loop = closed_loop(best, args.closed_loop, args.seed + 1, args.loop_duration, args.workdir / "simeval")
        print(f"closed loop: {time.perf_counter() - t:.0f} s", flush=True)
        for r in rows:
            r.update({k: v for k, v in loop[r["model"]].items() if k != "controller"})
        refs = {k: v for k, v in loop.items() if k in ("expert (atco)", "MVP", "none")}
    (args.workdir / "heads.json").write_text(json.dumps({"rows": rows, "references": refs, "diffusion_latency": diff_lat},
                                                        indent=1, default=str))
    png = Path(__file__).resolve().parent / "heads.png"
    plot(rows, refs, diff_lat, png)
    c = rows[0]["ceiling"]
    cols = [("nll", "NLL (nats)"), ("nll_kind", "NLL is"), ("nll_discrete", "discrete NLL"),
            ("gap_discrete_nll", "gap discrete NLL"), ("act_accuracy", "act acc"), ("act_f1", "act F1"),
            ("aircraft_accuracy", "aircraft acc"), ("gap_aircraft_accuracy", "gap aircraft acc"),
            ("type_accuracy", "type acc"), ("gap_type_accuracy", "gap type acc"), ("type_macro_f1", "type F1"),
            ("value_mae_heading", "heading MAE (deg)"), ("value_mae_altitude", "altitude MAE (ft)"),
            ("timing_error_s", "timing err (s)"), ("mode_coverage", "mode coverage"),
            ("decision_tv_distance", "TV to demos"), ("code_style_nmi_posterior", "code-style NMI (posterior)"),
            ("code_style_nmi_prior", "code-style NMI (prior)"),
            ("all_code_style_nmi_posterior", "code-style NMI all splits (posterior)"),
            ("all_code_style_nmi_prior", "code-style NMI all splits (prior)")]
    loop_cols = [("conflicts", "loop conflicts"), ("los", "loop LoS"), ("resolved_pct", "loop resolved %"),
                 ("clearances", "loop clearances"), ("agree_type", "loop type agreement")] if refs else []
    perf_cols = [("train_samples_per_s", "train samples/s"), ("lat_b1_ms", "ms/decision b1"),
                 ("lat_b1024_ms", "ms/decision b1024")]
    allc = cols + loop_cols + perf_cols
    lines = ["| model | " + " | ".join(t for _, t in allc) + " |", "|---|" + "---|" * len(allc)]
    lines += [f"| {r['model']} | " + " | ".join(fmt(r.get(k)) for k, _ in allc) + " |" for r in rows]
    ceil = {"nll_discrete": c.get("discrete_nll"), "act_accuracy": c.get("act_accuracy"),
            "aircraft_accuracy": c.get("aircraft_accuracy"), "type_accuracy": c.get("type_accuracy")}
    dash = ["-"] * len(perf_cols)
    lines.append("| **Bayes ceiling** (expert's own probabilities) | "
                 + " | ".join([fmt(ceil.get(k)) for k, _ in cols] + ["-"] * len(loop_cols) + dash) + " |")
    for label, ref in refs.items():
        lines.append(f"| **{label}** (closed loop) | "
                     + " | ".join(["-"] * len(cols) + [fmt(ref.get(k)) for k, _ in loop_cols] + dash) + " |")
    sp = FeatureSpec.load(Path(data)).splits or {}
    src = f"--data {args.data}" if args.data else f"--scenarios {args.scenarios}"
    cmd = (f"`.venv/bin/python bench/heads.py {src} --steps {args.steps} --batch {args.batch} "
           f"--hidden {args.hidden}" + (f" --encoders {' '.join(args.encoders)}" if args.encoders else "")
           + (f" --heads {' '.join(args.heads)}" if args.heads else "")
           + f" --closed-loop {args.closed_loop} --loop-duration {args.loop_duration:g}"
           + f" --ddim-steps {' '.join(map(str, args.ddim_steps))}`")
    body = (f"{cmd} ({time.perf_counter() - t_all:.0f} s in all): synthetic expert data, split by scenario (train/val/test "
            f"samples {sp['train']['samples']}/{sp['val']['samples']}/{sp['test']['samples']}); every model {args.steps} "
            f"optimiser steps of batch {args.batch} on CPU (1 thread), hidden {args.hidden}, VAE on (latent 8), best "
            "validation checkpoint, evaluated on the test split. NLL in nats with values in their type's unit ('NLL is': "
            "exact, or an estimate: importance-sampled for cvae, kernel density over DDIM samples for diffusion, a "
            "fixed-variance yardstick for deterministic); gaps are to the Bayes ceiling (ceiling - model for accuracies, "
            "model - ceiling for the discrete NLL); code-style NMI: normalised mutual information between the most probable "
            "discrete code and the expert's true style (cvae-discrete only; test split, and all splits together, '-' where "
            "a split holds a single style)."
            + (f" Closed loop: `simulator_adapters.evaluation.simeval` (= `atc-il simeval --controller model:DIR`) on "
               f"{args.closed_loop} generated scenarios (seed {args.seed + 1}, {args.loop_duration:g} s, density 4, 8 "
               "conflicts), every model and the references on the same scenarios; LoS and clearances summed, resolved % "
               "averaged over scenarios, type agreement with the expert's first clearance per conflict pair."
               if refs else "")
            + " Latency: `predict` (the most likely decision) per decision, median over repeats.\n\n" + "\n".join(lines))
    if diff_lat:
        body += ("\n\nDiffusion head (the trained gru + diffusion model): ms per decision against DDIM sampling steps "
                 "(predict = the most probable of 32 DDIM samples; sample = one DDIM sample).\n\n"
                 "| DDIM steps | predict b1 | predict b1024 | sample b1 | sample b1024 |\n|---|---|---|---|---|\n"
                 + "\n".join(f"| {d['steps']} | {fmt(d['pred_b1_ms'])} | {fmt(d['pred_b1024_ms'])} | {fmt(d['samp_b1_ms'])} "
                              f"| {fmt(d['samp_b1024_ms'])} |" for d in diff_lat))
    body += f"\n\n![heads]({png.name})"
    print(body)
    if not args.no_record:
        append_results("Policy heads incl. generative heads: offline, closed loop, latency (bench/heads.py)", body)


if __name__ == "__main__":
    main()
