"""DAgger against behavioural cloning on the same budget of expert-labelled scenarios, offline and in the closed loop.

    .venv/bin/python bench/dagger.py --cache /tmp/fid/c160 [--n0 25] [--iterations 3] [--per-iteration 10]

Data: the fidelity benchmark's cached demonstrations (``bench/fidelity.py``'s ``make_data``: generated scenarios in
BlueSky under the synthetic expert, split by scenario). Arms, each from the same model config (the quickstart's:
mlp encoder, VAE, mdn head, session style code; ``--epochs``, ``--patience``) and seed:
- ``BC n0``: behavioural cloning on the first ``--n0`` training scenarios;
- ``DAgger i``: ``simulator_adapters.dagger.run_dagger`` from BC n0: ``--iterations`` iterations of
  ``--per-iteration`` new scenarios each (beta ``--beta``, decay ``--beta-decay``, warm start), the expert labelling
  every state the learner visits;
- ``BC budget``: behavioural cloning on n0 + iterations x per-iteration expert demonstration scenarios: the same
  number of expert-labelled scenarios as DAgger's last iteration.
Offline: the test split's discrete NLL, its gap to the achievable ceiling, type / aircraft accuracy.
Closed loop: ``--closed-loop`` held-out scenarios (seed ``--loop-seed``, ``--loop-duration`` s), every policy in
control alone (``dagger:POLICY`` with beta 0: the learner drives, the expert runs in shadow, so the same run
gives the closed-loop metrics and the expert's judgement of the learner's own decisions on its own states) beside
the expert, MVP and no controller, scenarios in parallel BlueSky processes (``--workers``).
Appends to bench/RESULTS.md and writes bench/dagger.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import add_cache_args, append_results, fmt, save_figure  # noqa: E402

OFFLINE = ("nll_discrete", "gap_discrete_nll", "type_accuracy", "aircraft_accuracy", "act_ece")
ONPOLICY = ("onpolicy_act_kl", "onpolicy_nll_gap", "onpolicy_learner_act_rate", "onpolicy_expert_act_rate", "onpolicy_aircraft_agreement",
            "onpolicy_type_agreement")


def model_config(epochs: int, patience: int, seed: int):
    from models.config import load_model_config
    root = Path(__file__).resolve().parents[1]
    return load_model_config(root / "models" / "configs" / "gru_mdn.yaml", name="dagger-bench",
                             encoder={"name": "mlp", "hidden": 64, "layers": 1}, head={"hidden": 64},
                             style={"enabled": True},
                             train={"epochs": epochs, "patience": patience, "device": "cpu", "seed": seed})


def _loop_job(job: tuple[str, dict[str, str], float]) -> list[dict]:
    """One held-out scenario under every controller on one BlueSky process: metrics, agreement, on-policy."""
    import torch

    from simulator_adapters.bluesky_sim import BlueSkySim
    from simulator_adapters.controller_registry import make_controller
    from simulator_adapters.dagger import onpolicy_metrics
    from simulator_adapters.evaluation import agreement, rollout_metrics
    from simulator_adapters.rollout import rollout
    from simulator_adapters.scenarios import Scenario
    torch.set_num_threads(1)
    sc_json, specs, _ = job
    sc = Scenario.from_json(sc_json)
    rows = []
    with BlueSkySim() as sim:
        expert = rollout(sc, make_controller("atco"), sim, seed=sc.seed)
        for label, spec in specs.items():
            kw = {"beta": 0.0} if spec.startswith("dagger:") else {}
            res = expert if spec == "atco" else rollout(sc, make_controller(spec, **kw), sim, seed=sc.seed)
            m = rollout_metrics(res, sc)
            m.update({f"agree_{k}": v for k, v in agreement(res, expert).items()})
            kinds = res.actions["action_type"].value_counts() if len(res.actions) else {}
            m.update({f"n_{k}": int(kinds.get(k, 0)) for k in ("heading", "altitude", "speed", "resume")})
            if spec.startswith("dagger:"):
                truth = res.truth.copy()
                m.update(onpolicy_metrics(truth))
            m["label"] = label
            rows.append(m)
    return rows


def closed_loop(policies: dict[str, str], n: int, seed: int, duration_s: float, workers: int,
                mvp: bool = True) -> pd.DataFrame:
    """Per scenario and controller: the policies (with the expert labelling their states), the expert, no controller
    and (``mvp``) MVP on ``n`` new scenarios (seed ``seed``), in parallel BlueSky processes."""
    from simulator_adapters.parallel import run_parallel
    from simulator_adapters.scenarios import scenario_set
    specs = {"expert (atco)": "atco", **({"MVP": "mvp"} if mvp else {}), "none": "none",
             **{k: f"dagger:{Path(v).resolve()}" for k, v in policies.items()}}
    scenarios = scenario_set(n, seed, duration_s=duration_s, density=4.0, conflicts=8)
    jobs = [(sc.to_json(), specs, duration_s) for sc in scenarios]
    return pd.DataFrame([r for rows in run_parallel(_loop_job, jobs, workers=workers) for r in rows])


def timed_loop(policies: dict[str, str], args, csv: Path, times: dict, mvp: bool = True) -> pd.DataFrame:
    """:func:`closed_loop` on ``args.closed_loop`` scenarios (``args.loop_seed``, ``args.loop_duration``,
    ``args.workers``): per-scenario rows to ``csv``, the summary printed and returned, its time in ``times``."""
    t = time.perf_counter()
    per = closed_loop(policies, args.closed_loop, args.loop_seed, args.loop_duration, args.workers, mvp)
    per.to_csv(csv, index=False)
    loop = summarise_loop(per)
    times["closed loop"] = time.perf_counter() - t
    print(loop.to_string(), flush=True)
    return loop


def summarise_loop(per: pd.DataFrame) -> pd.DataFrame:
    agg = {"scenarios": ("los", "size"), "los": ("los", "sum"), "conflicts": ("conflicts", "sum"),
           "resolved_pct": ("resolved_pct", "mean"),
           "clearances": ("clearances", "sum"), "agree_aircraft": ("agree_aircraft_agree", "mean"),
           "agree_type": ("agree_type_agree", "mean"),
           **{f"n_{k}": (f"n_{k}", "sum") for k in ("heading", "altitude", "speed", "resume")}}
    for k in ONPOLICY:
        if k in per:
            agg[k] = (k, "mean")
    return per.groupby("label", sort=False).agg(**agg)


def plot(rows: list[dict], loop: pd.DataFrame | None, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dag = [r for r in rows if r["arm"].startswith("DAgger") or r["arm"] == "BC n0"]
    bud = next(r for r in rows if r["arm"] == "BC budget")
    x = [r["scenarios_labelled"] for r in dag]
    panels = [("gap_discrete_nll", "offline: discrete-NLL gap to the achievable ceiling (nats)", rows)]
    if loop is not None:
        panels += [("los", "closed loop: losses of separation", None), ("onpolicy_act_kl",
                   "on the learner's own states: KL(expert P(act) || learner P(act)), nats", None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8))
    axes = np.atleast_1d(axes)
    for ax, (key, title, _) in zip(axes, panels):
        if key in ("los", "onpolicy_act_kl"):
            ys = [loop.loc[r["arm"], key] if r["arm"] in loop.index else np.nan for r in dag]
            yb = loop.loc["BC budget", key]
        else:
            ys, yb = [r.get(key, np.nan) for r in dag], bud.get(key, np.nan)
        ax.plot(x, ys, "o-", label="DAgger (iteration 0 = BC on n0)")
        ax.scatter([bud["scenarios_labelled"]], [yb], color="C3", marker="s", s=50, label="BC, same label budget")
        if key == "los":
            for ref, ls in (("expert (atco)", "--"), ("none", ":"), ("MVP", "-.")):
                ax.axhline(loop.loc[ref, "los"], color="k", ls=ls, lw=1, label=ref)
        ax.set_xlabel("expert-labelled scenarios", fontsize=9)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cache_args(ap)
    ap.add_argument("--n0", type=int, default=25, help="demonstration scenarios of the starting BC policy")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--per-iteration", type=int, default=10, help="scenarios rolled out per DAgger iteration")
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--beta-decay", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--patience", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="training seed (the rollouts' scenario seeds follow it)")
    ap.add_argument("--closed-loop", type=int, default=12, help="held-out closed-loop scenarios (0: skip)")
    ap.add_argument("--loop-seed", type=int, default=1)
    ap.add_argument("--loop-duration", type=float, default=1200.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    from fidelity import make_data, subset

    from models.train import train
    from simulator_adapters.dagger import DaggerConfig, offline_metrics, run_dagger
    cmd = "python " + " ".join(sys.argv)
    t_all = time.perf_counter()
    data = make_data(args.cache, args.scenarios, args.test, args.val, 0, args.workers)
    root = args.cache / "dagger" / f"seed{args.seed}"
    cfg = model_config(args.epochs, args.patience, args.seed)
    budget = args.n0 + args.iterations * args.per_iteration
    sub0, subb = subset(data, args.n0, args.cache / "subsets"), subset(data, budget, args.cache / "subsets")
    times: dict[str, float] = {}
    t = time.perf_counter()
    bc0 = train(cfg, sub0, root / "bc-n0", resume=False, tracking_uri=False, progress=False)
    times["BC n0"] = time.perf_counter() - t
    t = time.perf_counter()
    bcb = train(cfg, subb, root / "bc-budget", resume=False, tracking_uri=False, progress=False)
    times["BC budget"] = time.perf_counter() - t
    print(f"BC n0 ({args.n0}) and BC budget ({budget}) trained in {times['BC n0']:.0f} + {times['BC budget']:.0f} s",
          flush=True)
    t = time.perf_counter()
    dcfg = DaggerConfig(iterations=args.iterations, scenarios=args.per_iteration, beta=args.beta,
                        beta_decay=args.beta_decay, workers=args.workers, seed=1000 + 100 * args.seed,
                        duration_s=1800.0, density=4.0, conflicts=8)
    rep = run_dagger(cfg, sub0, root / "dagger", dcfg, init=bc0["best_dir"],
                     tracking_uri=f"sqlite:///{(root / 'mlflow.db').resolve()}", progress=False)
    times["DAgger"] = time.perf_counter() - t
    rows = []
    for r in rep["iterations"]:
        arm = "BC n0" if r["iteration"] == 0 else f"DAgger {r['iteration']}"
        rows.append({"arm": arm, "scenarios_labelled": args.n0 + r["iteration"] * args.per_iteration,
                     "train_samples": r["train_samples"], "policy": r["policy"], "beta": r["beta"],
                     **{k: r.get(k) for k in OFFLINE}, "rollout_los": r.get("rollout_los"),
                     "rollout_onpolicy_nll_gap": r.get("onpolicy_nll_gap"), "wall_s": r.get("wall_s")})
    rows.append({"arm": "BC budget", "scenarios_labelled": budget, "train_samples": bcb["train_samples"],
                 "policy": bcb["best_dir"], **offline_metrics(bcb["best_dir"], subb)})
    for r in rows:
        print(f"{r['arm']}: " + ", ".join(f"{k} {fmt(r.get(k))}" for k in OFFLINE), flush=True)
    loop = None
    if args.closed_loop:
        loop = timed_loop({r["arm"]: r["policy"] for r in rows}, args, root / "closed_loop.csv", times)
    png = Path(__file__).resolve().parent / "dagger.png"
    plot(rows, loop, png)
    if args.no_record:
        return
    body = [f"`{cmd}` ({time.perf_counter() - t_all:.0f} s in all; " + ", ".join(
        f"{k} {v:.0f} s" for k, v in times.items()) + "). Demonstrations: the fidelity cache (synthetic expert, "
        f"1800 s scenarios, density 4, 8 injected conflicts), test split {args.test} scenarios. Model: the quickstart's "
        f"(mlp encoder hidden 64, VAE, mdn head, session style code), up to {args.epochs} epochs (patience "
        f"{args.patience}), seed {args.seed}, CPU 1 thread. DAgger: beta {args.beta} x {args.beta_decay}^(i-1), "
        f"{args.per_iteration} new 1800 s scenarios per iteration, warm start; BC budget: {budget} demonstration "
        "scenarios (as many expert-labelled scenarios as DAgger's last iteration). One training seed: an anecdote "
        "until repeated with more seeds.", "",
        "Offline (test split; gap = model - achievable ceiling, nats per sample):", "",
        "| arm | labelled scenarios | train samples | discrete NLL | gap | type acc | aircraft acc | act ECE | "
        "rollout LoS (mixed control) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        body.append(f"| {r['arm']} | {r['scenarios_labelled']} | {r['train_samples']} | {fmt(r.get('nll_discrete'))} | "
                    f"{fmt(r.get('gap_discrete_nll'))} | {fmt(r.get('type_accuracy'))} | "
                    f"{fmt(r.get('aircraft_accuracy'))} | {fmt(r.get('act_ece'))} | {fmt(r.get('rollout_los'))} |")
    if loop is not None:
        body += ["", f"Closed loop ({args.closed_loop} held-out scenarios, seed {args.loop_seed}, {args.loop_duration:.0f} s; "
                 "each policy alone in control; on-policy: the expert in shadow on the learner's own states; "
                 "act KL = KL(expert's P(act) || learner's P(act)) per decision (exact); NLL gap = expert NLL of the "
                 "learner's sampled (act, aircraft, type) - of the expert's own samples (not a divergence: negative "
                 "where the learner acts less often), agreement = the expert's probability of the learner's aircraft / type where it acted):", "",
                 "| controller | conflicts | LoS | resolved % | clearances | agree aircraft | agree type | act KL | "
                 "NLL gap | learner act rate | expert act rate | P_expert(aircraft) | P_expert(type) |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for label, r in loop.iterrows():
            body.append(f"| {label} | {int(r['conflicts'])} | {int(r['los'])} | {fmt(r['resolved_pct'])} | "
                        f"{int(r['clearances'])} | {fmt(r['agree_aircraft'])} | {fmt(r['agree_type'])} | "
                        + " | ".join(fmt(r.get(k)) for k in ONPOLICY) + " |")
    body += ["", "Plot: `bench/dagger.png`."]
    append_results("DAgger against behavioural cloning on the same label budget (bench/dagger.py)", "\n".join(body))


if __name__ == "__main__":
    main()
