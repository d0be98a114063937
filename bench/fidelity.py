"""Imitation fidelity against the synthetic expert, with a fixed protocol: learning curves over training sizes,
seeds, every model against both ceilings, offline and in the closed loop.

    .venv/bin/python bench/fidelity.py                       # the full protocol (hours on 2 cores)
    .venv/bin/python bench/fidelity.py --quick               # a quick look: fewer sizes, seeds, models, epochs

Protocol (defaults; each a flag):
- data: ``--scenarios 500`` generated sector scenarios (1800 s, density 4, 8 injected conflicts) run in BlueSky
  under the synthetic expert in parallel (``--workers``) and cached in ``--cache`` (reused when present:
  delete the folder to re-simulate); the tracks are the expert's radar picture (``simulate``'s default), so the
  achievable ceiling knows nothing the models do not see; conflicts -> actions (the expert's clearance log, each
  clearance linked to the conflict it resolves) -> observation histories (with each aircraft's other conflicts,
  ``dataset.other_conflicts``, and the clearances against the pair, ``dataset.pair_history``), split by scenario into ``--test 50`` held-out test
  scenarios, ``--val 30`` validation scenarios and the rest for training;
- training sizes ``--sizes 25 50 100 200 400`` scenarios (nested subsets of the training scenarios, in a fixed
  seeded order; the normalisation statistics are those of the whole training split), ``--seeds 0 1 2``;
- models ``--models`` as ``encoder+head[+style][+raw][+contrast][+hazard]`` (``raw``: no numeric embedding of the
  inputs; ``contrast``: the aircraft contrast; ``hazard``: P(act) from the decision-time geometry; default: the truly Markovian baseline, the MLP with
  clearances and history features, GRU and transformer with the mdn head, GRU with every other head, and GRU +
  mdn with the session style code), hidden ``--hidden``, VAE on, AdamW, early stopping on the validation
  loss (``--epochs``, ``--patience``), the best checkpoint evaluated on the test split (models.evaluate); a model
  may also be a config file (``--models models/configs/mlp_mdn_style.yaml``, the quickstart's model, on the
  protocol's epochs and patience); ``--jobs 2`` trains two at a time (one torch thread each);
- offline metrics: discrete NLL and its gap to both ceilings (achievable: the style marginalised with its
  posterior given the session so far; oracle: the expert's own probabilities), act / aircraft / type accuracy
  against the achievable ceiling, act calibration (ECE over equal-mass bins, reliability curve), when the
  controller first acts (demonstrated vs the policy's distribution), value NLL per type, mode coverage,
  code-style NMI (models with a discrete code), training time;
- closed loop (``--closed-loop 20`` held-out scenarios, seed ``--seed + 1``, ``--loop-duration`` s): the best
  model of each kind at the largest size (seed 0) as ``atc-il simeval --controller model:DIR`` beside the
  expert, MVP and no controller: losses of separation, resolved %, clearances, agreement with the expert.
Results: a table per size, the targets of the fidelity issue checked at the largest size, bench/fidelity.png
(learning curves with the seed spread; reliability; acting times), appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import add_cache_args, append_results, fmt, save_figure  # noqa: E402

from atc_il.feature_spec import FeatureSpec  # noqa: E402

HEADS = ("deterministic", "mdn", "autoregressive", "cvae", "diffusion")
DEFAULT_MODELS = ["markov+mdn", "mlp+mdn", "gru+mdn", "transformer+mdn", "gru+deterministic", "gru+autoregressive",
                  "gru+cvae", "gru+diffusion", "gru+mdn+style"]
QUICK_MODELS = ["markov+mdn", "mlp+mdn", "gru+mdn", "gru+mdn+style"]
SCENARIO_KW = {"duration_s": 1800, "density": 4.0, "conflicts": 8}


# -- data ---------------------------------------------------------------------------------------------
def make_data(cache: Path, n: int, n_test: int, n_val: int, seed: int, workers: int) -> Path:
    """Simulated demonstrations and their data set in ``cache`` (reused when complete)."""
    from atc_il.config import PipelineConfig
    from simulator_adapters.demonstrations import build_dataset, simulate
    sim = cache / "sim"
    report = sim / "simulate_report.json"
    if not report.exists():
        t = time.perf_counter()
        rep = simulate(sim, n, "atco", seed=seed, workers=workers, scenario_kwargs=SCENARIO_KW)
        print(f"simulated {rep['scenarios']} scenarios ({rep['clearances']} clearances) in "
              f"{time.perf_counter() - t:.0f} s", flush=True)
    elif json.loads(report.read_text()).get("surveillance") != "radar":
        raise SystemExit(f"{sim}: simulated with the true states as tracks (before the demonstrations recorded the "
                         f"controller's radar picture); delete {cache} or give another --cache")
    spec = sim / "dataset" / "feature_spec.json"
    built = json.loads(spec.read_text()).get("config", {}) if spec.exists() else {}
    if spec.exists() and not (built.get("other_conflicts") and built.get("pair_history")):
        (sim / "dataset" / "dataset_report.json").unlink(missing_ok=True)     # built without them: rebuild
        shutil.rmtree(cache / "subsets", ignore_errors=True)                    # and the training subsets of it
    if not (sim / "dataset" / "dataset_report.json").exists():
        # each aircraft's other conflicts and the clearances against the pair: what the quickstart's model
        # (mlp_mdn_style.yaml) reads for P(act)
        s = build_dataset(sim, PipelineConfig(), test_fraction=n_test / n, val_fraction=n_val / n,
                          other_conflicts=True, pair_history=True)
        print(f"data set: {s['samples']} samples ({s['positive samples']} acting)", flush=True)
    return sim / "dataset"


def subset(data: Path, n_train: int, root: Path) -> Path:
    """A data set folder whose train split holds the first ``n_train`` training scenarios (seeded order);
    val and test are the full splits (linked), the expert's truth beside it."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from atc_il.io import mark_complete
    out = root / f"train{n_train}"
    ds = out / "dataset"
    if (ds / "split=train" / "part-0.parquet").exists():
        return ds
    spec = FeatureSpec.load(data)
    splits = spec.splits or {}
    keys = sorted(splits["train"]["keys"])
    order = [keys[i] for i in np.random.default_rng(12345).permutation(len(keys))]
    if n_train > len(order):
        raise SystemExit(f"--sizes asks for {n_train} training scenarios; the data set has {len(order)}")
    keep = order[:n_train]
    (ds / "split=train").mkdir(parents=True, exist_ok=True)
    t = pa.concat_tables([pq.read_table(f) for f in sorted((data / "split=train").glob("*.parquet"))])
    t = t.filter(pc.is_in(t["split_key"], value_set=pa.array(keep)))
    pq.write_table(t, ds / "split=train" / "part-0.parquet")
    mark_complete(ds / "split=train", ["part-0.parquet"])
    for s in ("val", "test"):
        if not (ds / f"split={s}").exists():
            (ds / f"split={s}").symlink_to((data / f"split={s}").resolve())
    spec.splits = {**splits, "train": {**splits["train"], "keys": sorted(keep), "samples": t.num_rows}}
    (ds / "feature_spec.json").write_text(spec.to_json())
    truth = out / "expert_truth.parquet"
    if not truth.exists():
        truth.symlink_to((data.parent / "expert_truth.parquet").resolve())
    return ds


# -- models -------------------------------------------------------------------------------------------
def label(name: str) -> str:
    """A model's name in tables and folders: a YAML config by its file's stem."""
    return Path(name).stem if name.endswith((".yaml", ".yml")) else name


def model_config(name: str, hidden: int, epochs: int, patience: int, seed: int, select_on: str = "loss"):
    from models.config import ModelConfig, load_model_config
    train = {"epochs": epochs, "patience": patience, "seed": seed, "device": "cpu", "select_on": select_on}
    if name.endswith((".yaml", ".yml")):      # a config file as it is (the quickstart's model), on the protocol's budget
        return load_model_config(name, train=train)
    parts = name.split("+")
    unknown = set(parts[2:]) - {"style", "raw", "contrast", "hazard"}
    if unknown:
        raise SystemExit(f"--models {name}: unknown option(s) {sorted(unknown)}; "
                         "give encoder+head[+style][+raw][+contrast][+hazard]")
    enc, head, style, raw = parts[0], parts[1], "style" in parts[2:], "raw" in parts[2:]
    head_cfg = {"name": head, "hidden": hidden}
    if "hazard" in parts[2:]:            # P(act) from the decision-time geometry (head.act_inputs)
        head_cfg["act_inputs"] = "geometry"
    if head == "cvae":
        head_cfg.update(latent="discrete", codes=3)
    return ModelConfig(name=name.replace("+", "-"), encoder={"name": enc, "hidden": hidden, "layers": 1,
                                                             "numeric_embedding": "none" if raw else "periodic",
                                                             "aircraft_contrast": "contrast" in parts[2:]},
                       vae={"enabled": True, "latent_dim": 8}, head=head_cfg, style={"enabled": style},
                       train={**train, "batch_size": 256})


def run_one(name: str, data: Path, out: Path, args, seed: int) -> dict:
    import torch

    from models.evaluate import evaluate
    from models.policy import load_policy
    from models.train import train
    torch.set_num_threads(1)
    cfg = model_config(name, args.hidden, args.epochs, args.patience, seed, args.select_on)
    ckpt = out / "checkpoints" / "last.pt"
    if args.reuse and (out / "best").is_dir() and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        s = {"best_dir": str(out / "best"), "epochs": state["epoch"]}
        secs = float(state["train_seconds"])
    else:
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        s = train(cfg, data, out, resume=False, tracking_uri=False, progress=False)
        secs = time.perf_counter() - t
    m = evaluate(load_policy(s["best_dir"]), data, "test", n_samples=32)
    m.update(model=label(name), seed=seed, train_s=secs, epochs=s.get("epochs"), best_dir=s["best_dir"])
    return m


def _run_job(job: tuple) -> dict:
    return run_one(*job)


def _row(m: dict) -> dict:
    c, gap = m.get("ceiling", {}), m.get("gap", {})
    at = m.get("acting_times", {})
    return {"model": m["model"], "seed": m["seed"], "nll_discrete": m["nll_discrete"],
            "gap_achievable": gap.get("discrete_nll"), "gap_oracle": m.get("gap_oracle", {}).get("discrete_nll"),
            "act_acc": m["act_accuracy"], "aircraft_acc": m.get("aircraft_accuracy"),
            "aircraft_ratio": _ratio(m.get("aircraft_accuracy"), c.get("aircraft_accuracy")),
            "type_acc": m.get("type_accuracy"), "type_ratio": _ratio(m.get("type_accuracy"), c.get("type_accuracy")),
            "ece": m.get("act_ece"), "mode_coverage": m.get("mode_coverage"),
            "mode_coverage_ceiling": m.get("mode_coverage_ceiling"), "nmi": m.get("code_style_nmi_prior"), "acted_share": at.get("acted_share_model"),
            "first_act_w1_s": at.get("first_action_wasserstein_s"),
            **{f"value_nll_{t}": m.get(f"value_nll_{t}") for t in ("heading", "altitude", "speed")},
            "train_s": m["train_s"]}


def _ratio(a, b):
    return a / b if a is not None and b else None


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per model: mean and standard deviation over seeds of every numeric column."""
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == name]
        agg = {"model": name, "seeds": len(rs)}
        for k in rs[0]:
            vals = [r[k] for r in rs if isinstance(r.get(k), (int, float)) and r.get(k) is not None]
            if vals and k not in ("seed",):
                agg[k] = float(np.mean(vals))
                agg[f"{k}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        out[name] = agg
    return out


def table(summary: dict[str, dict], ceil: dict, oracle: dict) -> str:
    cols = [("nll_discrete", "discrete NLL"), ("gap_achievable", "gap to achievable"), ("gap_oracle", "gap to oracle"),
            ("aircraft_acc", "aircraft acc"), ("aircraft_ratio", "aircraft / ceiling"), ("type_acc", "type acc"),
            ("type_ratio", "type / ceiling"), ("ece", "act ECE"), ("mode_coverage", "mode coverage"),
            ("nmi", "code-style NMI"), ("acted_share", "episodes acted (model)"), ("first_act_w1_s", "first-act W1 (s)"),
            ("value_nll_heading", "value NLL heading"), ("value_nll_altitude", "value NLL altitude"),
            ("value_nll_speed", "value NLL speed"), ("train_s", "train s")]
    lines = ["| model | seeds | " + " | ".join(c for _, c in cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for s in summary.values():
        cells = [f"{fmt(s.get(k))} ± {fmt(s.get(k + '_sd'))}" if s.get(k) is not None else "-" for k, _ in cols]
        lines.append(f"| {s['model']} | {s['seeds']} | " + " | ".join(cells) + " |")
    for label, c in (("**achievable ceiling**", ceil), ("**oracle ceiling**", oracle)):
        vals = {"nll_discrete": c.get("discrete_nll"), "aircraft_acc": c.get("aircraft_accuracy"),
                "type_acc": c.get("type_accuracy"), "mode_coverage": c.get("mode_coverage")}
        lines.append(f"| {label} | - | " + " | ".join(fmt(vals.get(k)) if k in vals else "-" for k, _ in cols) + " |")
    return "\n".join(lines)


def plot(by_size: dict[int, list[dict]], ceil: dict, reliab: dict, times: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sizes = sorted(by_size)
    models = list(dict.fromkeys(r["model"] for rs in by_size.values() for r in rs))
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.4))
    for ax, (k, label) in zip(axes[:2], (("gap_achievable", "discrete NLL gap to the achievable ceiling (nats)"),
                                         ("type_ratio", "type accuracy / achievable ceiling's"))):
        for i, name in enumerate(models):
            mean, sd, xs = [], [], []
            for n in sizes:
                v = [r[k] for r in by_size[n] if r["model"] == name and r.get(k) is not None]
                if v:
                    xs.append(n)
                    mean.append(np.mean(v))
                    sd.append(np.std(v))
            if xs:
                ax.errorbar(xs, mean, yerr=sd, marker="o", capsize=3, label=name, color=f"C{i % 10}")
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("training scenarios", fontsize=9)
        ax.set_ylabel(label, fontsize=9)
        ax.axhline(0.03 if k == "gap_achievable" else 0.95, color="k", ls=":", lw=1, label="target")
        ax.legend(fontsize=7)
    ax = axes[2]
    for i, (name, curve) in enumerate(reliab.items()):
        ax.plot([c["p"] for c in curve], [c["freq"] for c in curve], "o-", label=name, color=f"C{i % 10}")
    ax.plot([0, 0.5], [0, 0.5], "k:", lw=1)
    ax.set_xlabel("predicted P(act) (equal-mass bins)", fontsize=9)
    ax.set_ylabel("observed frequency of acting", fontsize=9)
    ax.set_title(f"act calibration at {sizes[-1]} scenarios", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[3]
    names = list(times)
    demo = [times[n].get("first_action_s_demonstrated") for n in names]
    model = [times[n].get("first_action_s_model") for n in names]
    x = np.arange(len(names))
    ax.bar(x - 0.2, [d or 0 for d in demo], 0.4, label="demonstrated")
    ax.bar(x + 0.2, [m or 0 for m in model], 0.4, label="policy (open loop)")
    ax.set_xticks(x, names, rotation=30, fontsize=7, ha="right")
    ax.set_ylabel("mean first action (s after first detection)", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def targets(best: dict, ceil: dict, loop: dict | None, best_name: str) -> list[str]:
    out = [f"- discrete NLL within 0.03 nats of the achievable ceiling: {fmt(best.get('gap_achievable'))} "
           f"({'met' if (best.get('gap_achievable') or 9) <= 0.03 else 'not met'})",
           f"- type accuracy >= 95 % of the ceiling's: {fmt(best.get('type_ratio'))} "
           f"({'met' if (best.get('type_ratio') or 0) >= 0.95 else 'not met'})",
           f"- aircraft accuracy >= 95 % of the ceiling's: {fmt(best.get('aircraft_ratio'))} "
           f"({'met' if (best.get('aircraft_ratio') or 0) >= 0.95 else 'not met'})",
           f"- mode coverage >= 0.9: {fmt(best.get('mode_coverage'))} "
           f"({'met' if (best.get('mode_coverage') or 0) >= 0.9 else 'not met'})",
           f"- act calibration error <= 0.02: {fmt(best.get('ece'))} "
           f"({'met' if (best.get('ece') or 1) <= 0.02 else 'not met'})"]
    if loop:
        m, e = loop.get(best_name), loop.get("expert (atco)")
        if m and e:
            ok_los = m["los"] <= e["los"]
            ok_clr = abs(m["clearances"] - e["clearances"]) <= 0.2 * max(e["clearances"], 1)
            out.append(f"- closed loop, LoS no more than the expert's: {m['los']} vs {e['los']} "
                       f"({'met' if ok_los else 'not met'}); clearances within 20 %: {m['clearances']} vs "
                       f"{e['clearances']} ({'met' if ok_clr else 'not met'})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cache_args(ap, scenarios=500, test=50, val=30)
    ap.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", nargs="+", default=None, help="encoder+head[+style][+raw][+contrast][+hazard], or a "
                    "model config file (models/configs/mlp_mdn_style.yaml: the quickstart's model) trained on the "
                    "protocol's epochs and patience (default: the full grid)")
    ap.add_argument("--jobs", type=int, default=1, help="trainings run at once (processes of one torch thread each; "
                    "training times are then measured side by side)")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--select-on", default="loss", choices=["loss", "nll", "nll_discrete"],
                    help="the validation figure that picks the best epoch (train.select_on)")
    ap.add_argument("--closed-loop", type=int, default=20, help="closed-loop held-out scenarios (0: skip)")
    ap.add_argument("--loop-duration", type=float, default=1200.0)
    ap.add_argument("--seed", type=int, default=0, help="simulation seed (the closed loop uses seed + 1)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="sizes 25 50 100, seeds 0 1, four models, 12 epochs, "
                    "closed loop on 6 scenarios: a quick look, not the protocol")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    ap.add_argument("--reuse", action="store_true", help="evaluate the trained models already in --cache instead of "
                    "training them again (their training time is read from their checkpoints)")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.seeds, args.epochs = [25, 50, 100], [0, 1], 12
        args.closed_loop = min(args.closed_loop, 6)
        args.models = args.models or QUICK_MODELS
    models = args.models or DEFAULT_MODELS
    cmd = "python " + " ".join(sys.argv)
    t_all = time.perf_counter()
    data = make_data(args.cache, args.scenarios, args.test, args.val, args.seed, args.workers)
    by_size: dict[int, list[dict]] = {}
    full: dict[tuple, dict] = {}
    for n in args.sizes:
        sub = subset(data, n, args.cache / "subsets")
        by_size[n] = []
        jobs = [(name, sub, args.cache / "runs" / f"n{n}" / f"{label(name)}-s{seed}", args, seed)
                for name in models for seed in args.seeds]
        if args.jobs > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(min(args.jobs, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
                results = list(pool.map(_run_job, jobs))
        else:
            results = map(_run_job, jobs)
        for (name, *_, seed), m in zip(jobs, results):
            full[(n, name, seed)] = m
            r = _row(m)
            by_size[n].append(r)
            print(f"[{n} scenarios] {label(name)} seed {seed}: discrete NLL {r['nll_discrete']:.4f} "
                  f"(gap {fmt(r['gap_achievable'])}), type {fmt(r['type_acc'])}, aircraft {fmt(r['aircraft_acc'])}, "
                  f"ECE {fmt(r['ece'])}, {r['train_s']:.0f} s", flush=True)
    largest = max(args.sizes)
    any_m = next(iter(full.values()))
    ceil = {**any_m.get("ceiling", {}), "mode_coverage": any_m.get("mode_coverage_ceiling")}
    oracle = any_m.get("oracle_ceiling", {})
    summ = summarise(by_size[largest])
    best_name = min(summ, key=lambda k: summ[k].get("nll_discrete", 9))
    loop = None
    if args.closed_loop:
        from heads import closed_loop
        dirs = {label(name): Path(full[(largest, name, args.seeds[0])]["best_dir"]) for name in models}
        loop = closed_loop(dirs, args.closed_loop, args.seed + 1, args.loop_duration, args.cache / "closed_loop",
                           workers=args.workers)
    reliab = {label(name): full[(largest, name, args.seeds[0])]["act_reliability"] for name in models}
    times = {label(name): full[(largest, name, args.seeds[0])].get("acting_times", {}) for name in models}
    # the full protocol's figure is fidelity.png; a run on other sizes does not overwrite it
    tag = "" if args.sizes == [25, 50, 100, 200, 400] else "_" + "_".join(map(str, args.sizes))
    png = Path(__file__).resolve().parent / f"fidelity{tag}.png"
    plot(by_size, ceil, reliab, times, png)
    splits = FeatureSpec.load(data).splits or {}
    n_keys = {k: len(v["keys"]) for k, v in splits.items()}
    body = [f"`{cmd}` ({time.perf_counter() - t_all:.0f} s in all): {sum(n_keys.values())} simulated scenarios "
            f"(test {n_keys['test']}, val {n_keys['val']}, train {n_keys['train']}), training sizes {args.sizes} scenarios, seeds {args.seeds}, hidden "
            f"{args.hidden}, VAE on (latent 8) (config files as they are), up to {args.epochs} epochs (patience {args.patience}, best epoch by "
            f"{args.select_on}), CPU 1 thread{f', {args.jobs} trainings at a time' if args.jobs > 1 else ''}. "
            "Mean ± standard deviation over seeds; gaps are model - ceiling in discrete NLL (nats per sample); "
            "ratios are model accuracy / achievable ceiling's; act ECE over 10 equal-mass bins; code-style NMI "
            "from q(c | session) (style) or the learned prior (cvae); first-act W1: 1-Wasserstein distance "
            "between demonstrated and the policy's first-action times (s after first detection)."]
    for n in args.sizes:
        s = summarise(by_size[n])
        body.append(f"\n### {n} training scenarios\n\n" + table(s, ceil, oracle))
    if loop:
        body.append("\n### Closed loop: " + f"{args.closed_loop} held-out scenarios (seed {args.seed + 1}, "
                    f"{args.loop_duration:.0f} s), models trained on {largest} scenarios, seed {args.seeds[0]}\n")
        body.append("| controller | conflicts | LoS | resolved % | clearances | agree aircraft | agree type |")
        body.append("|---|---|---|---|---|---|---|")
        for who, r in loop.items():
            body.append(f"| {who} | {r['conflicts']} | {r['los']} | {fmt(r['resolved_pct'])} | {r['clearances']} | "
                        f"{fmt(r.get('agree_aircraft'))} | {fmt(r.get('agree_type'))} |")
    body.append(f"\nTargets at {largest} scenarios, best model by discrete NLL ({best_name}):\n")
    body += targets(summ[best_name], ceil, loop, best_name)
    body.append(f"\n![fidelity]({png.name})")
    text = "\n".join(body)
    print(text)
    (args.cache / "fidelity.md").write_text(text)
    if not args.no_record:
        append_results("Imitation fidelity: learning curves against both ceilings (bench/fidelity.py)", text)


if __name__ == "__main__":
    main()
