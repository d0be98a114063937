"""Adversarial imitation (GAIL, AMP, state-only AMP) against behavioural cloning, warm-started from it, in BlueSky.

    PYTHONPATH=. .venv/bin/python bench/adversarial.py --cache /tmp/fid/c160 --seeds 0 1 --iterations 3 \\
        --per-iteration 2 --rollout-duration 900 --closed-loop 2 --loop-duration 900 --workers 2 \\
        [--extra-policy "GAIL shipped preset seed 0=DIR"] [--preset shipped|stable]

(the run recorded in bench/RESULTS.md; about 50 min on 2 shared cores; a rerun reuses completed adversarial runs). Before it, the diagnosis run of the shipped
trainer: ``--seeds 0 --methods gail --iterations 4 --closed-loop 0 --preset shipped --tag diag-shipped --no-record``.

Data: the fidelity benchmark's cached demonstrations (``bench/fidelity.py``'s ``make_data``: ``--scenarios``
generated scenarios simulated in BlueSky under the synthetic expert, ``simulator_adapters.demonstrations.simulate``
+ ``build_dataset``, split by scenario, cached in ``--cache``); the policies learn from the first ``--n-train``
training scenarios (``subset``). Arms, per seed (``--seeds``):
- ``BC``: behavioural cloning (``models.train.train``; the DAgger bench's model: mlp encoder, VAE, mdn head, session
  style code; ``--epochs``, ``--patience``), cached in ``--cache/adversarial/seedS/bc``;
- ``GAIL``, ``AMP``, ``AMP state-only`` (``--methods``): ``simulator_adapters.adversarial.run_adversarial`` from BC,
  ``--iterations`` iterations of ``--per-iteration`` new scenarios (``--rollout-duration`` s) rolled out by the
  learner, D trained against the same demonstrations' train split, PPO on D's reward. ``--preset``: ``shipped``
  (the trainer's defaults) or ``stable`` (the fixes for D overpowering the policy; see ``PRESETS`` and
  bench/RESULTS.md); any knob can be overridden (``--disc-steps``, ``--disc-lr``...).
Per iteration: D's balanced accuracy on that iteration's learner samples and as many expert ones, and on the next
iteration's fresh learner samples before D trains on them (``held-out``), the mean reward, PPO's clip fraction,
approx. KL and the log-prob mismatch of the sampled decisions (must be ~0).
Closed loop: ``--closed-loop`` held-out scenarios (seed ``--loop-seed``, ``--loop-duration`` s), every policy alone
in control (``dagger:POLICY``, beta 0: the expert runs in shadow) beside the expert and no controller
(``bench/dagger.py``'s ``_loop_job``): LoS, resolved %, clearances and their mix by type, agreement with the expert.
Appends to bench/RESULTS.md and writes bench/adversarial.png.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import add_cache_args, append_results, fmt, save_figure  # noqa: E402

METHODS = {"gail": ("GAIL", "gail", False), "amp": ("AMP", "amp", False), "amp-so": ("AMP state-only", "amp", True)}
#: the session_* shares of the controller's own clearances (whole-session statistics; see PRESETS)
SESSION = ["session_heading", "session_altitude", "session_speed", "session_direct_to"]
PRESETS: dict[str, dict] = {
    "shipped": {},
    # the reward from D before it trains on the samples it scores, centred; D gated above 0.9 accuracy, replaying
    # earlier learner samples, blind to the session shares (see the diagnosis in bench/RESULTS.md). A first version
    # (20 D steps, label smoothing 0.1, instance noise 0.2, gradient penalty 10) left D at chance (0.5: every sample
    # called learner), its reward constant (std 0.001) and PPO stepping on noise (approx. KL 0.43)
    "stable": {"disc": {"target_accuracy": 0.9, "replay": 0.5, "blind": SESSION},
               "ppo": {"reward_center": True}, "reward_on": "fresh"},
}
KINDS = ("heading", "altitude", "speed", "resume")


def adv_config(preset: str, objective: str, state_only: bool, seed: int, args) -> dict:
    import copy
    cfg = copy.deepcopy(PRESETS[preset])
    d, p = cfg.setdefault("disc", {}), cfg.setdefault("ppo", {})
    d.update({"objective": objective, "state_only": state_only})
    for flag, sec, key in (("disc_steps", d, "steps"), ("disc_lr", d, "lr"), ("grad_penalty", d, "grad_penalty"),
                           ("label_smoothing", d, "label_smoothing"), ("instance_noise", d, "instance_noise"),
                           ("target_accuracy", d, "target_accuracy"), ("replay", d, "replay"),
                           ("ppo_lr", p, "lr"), ("ppo_epochs", p, "epochs")):
        v = getattr(args, flag)
        if v is not None:
            sec[key] = v
    if args.blind is not None:
        d["blind"] = [] if args.blind == ["none"] else args.blind
    if args.reward_center is not None:
        p["reward_center"] = args.reward_center == "yes"
    cfg["seed"] = seed
    return cfg


def train_bc(sub: Path, root: Path, epochs: int, patience: int, seed: int) -> str:
    from dagger import model_config

    from models.train import train
    summ = root / "summary.json"
    if summ.exists():
        return json.loads(summ.read_text())["best_dir"]
    rep = train(model_config(epochs, patience, seed), sub, root, resume=False, tracking_uri=False, progress=False)
    return rep["best_dir"]


def run_method(init: str, sub: Path, out: Path, cfg: dict, args, seed: int) -> dict:
    from models.adversarial import AdversarialConfig
    from simulator_adapters.adversarial import RolloutPlan, run_adversarial
    rep_path = out / "adversarial_report.json"
    if (out / "policy").exists() and rep_path.exists():     # a completed run of the same length: reuse it
        rep = json.loads(rep_path.read_text())
        if len(rep["iterations"]) == args.iterations:
            print(f"  {out}: reusing the completed run", flush=True)
            return {**rep, "policy": str(out / "policy")}
    plan = RolloutPlan(scenarios=args.per_iteration, workers=args.workers, seed=5000 + 100 * seed,
                       duration_s=args.rollout_duration, density=4.0, conflicts=8)
    return run_adversarial(init, sub, out, AdversarialConfig(**cfg), plan, args.iterations, tracking_uri=False,
                           log=lambda s: print(f"  {out.parent.name}/{out.name}: {s}", flush=True))


def plot(curves: dict[str, list[dict]], loop: pd.DataFrame | None, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [("disc_accuracy_all", "D balanced accuracy (this iteration's samples)"),
            ("disc_accuracy_heldout", "D accuracy on the next iteration's fresh samples"),
            ("reward_mean", "mean reward of the learner's decisions"),
            ("ppo_approx_kl", "PPO approx. KL per update"), ("ppo_clip_fraction", "PPO clip fraction")]
    n = len(keys) + (loop is not None)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6))
    colours = {m: f"C{i}" for i, m in enumerate(sorted({k.split(" seed")[0] for k in curves}))}
    for ax, (key, title) in zip(axes, keys):
        for name, rows in curves.items():
            m, s = name.split(" seed")
            ax.plot([r["iteration"] for r in rows], [r.get(key, np.nan) for r in rows], marker="o", color=colours[m],
                    ls="-" if s.strip() == "0" else "--", label=name, ms=3)
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_title(title, fontsize=8)
        if key.startswith("disc_accuracy"):
            ax.axhline(0.5, color="k", lw=0.6, ls=":")
            ax.set_ylim(0.4, 1.02)
    axes[0].legend(fontsize=6)
    if loop is not None:
        ax = axes[-1]
        ax.barh(list(loop.index), loop["los"].to_numpy(), color="C7")
        ax.set_title("closed loop: losses of separation (sum)", fontsize=8)
        ax.tick_params(labelsize=6)
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cache_args(ap)
    ap.add_argument("--n-train", type=int, default=25, help="demonstration scenarios BC and D learn from")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--preset", default="stable", choices=list(PRESETS))
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--per-iteration", type=int, default=3, help="scenarios the learner rolls out per iteration")
    ap.add_argument("--rollout-duration", type=float, default=1800.0)
    ap.add_argument("--epochs", type=int, default=20, help="BC epochs")
    ap.add_argument("--patience", type=int, default=4)
    for k, t in (("disc-steps", int), ("disc-lr", float), ("grad-penalty", float), ("label-smoothing", float),
                 ("instance-noise", float), ("target-accuracy", float), ("replay", float), ("ppo-lr", float),
                 ("ppo-epochs", int)):
        ap.add_argument(f"--{k}", type=t, default=None, help="override the preset")
    ap.add_argument("--blind", nargs="+", default=None, help="geometry features D does not see ('none': all seen)")
    ap.add_argument("--reward-center", choices=["yes", "no"], default=None)
    ap.add_argument("--closed-loop", type=int, default=4, help="held-out closed-loop scenarios (0: skip)")
    ap.add_argument("--loop-seed", type=int, default=1)
    ap.add_argument("--loop-duration", type=float, default=1200.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--extra-policy", nargs="*", default=[], metavar="LABEL=DIR",
                    help="more policy folders for the closed loop (e.g. a run with the shipped preset)")
    ap.add_argument("--tag", default="", help="subfolder name of this run's adversarial outputs")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    from fidelity import make_data, subset
    cmd = "python " + shlex.join(sys.argv)
    t_all = time.perf_counter()
    data = make_data(args.cache, args.scenarios, args.test, args.val, 0, args.workers)
    sub = subset(data, args.n_train, args.cache / "subsets")
    tag = args.tag or args.preset
    curves: dict[str, list[dict]] = {}
    policies: dict[str, str] = {}
    times: dict[str, float] = {}
    cfgs: dict[str, dict] = {}
    for seed in args.seeds:
        root = args.cache / "adversarial" / f"seed{seed}"
        t = time.perf_counter()
        policies[f"BC seed {seed}"] = train_bc(sub, root / "bc", args.epochs, args.patience, seed)
        times[f"BC seed {seed}"] = time.perf_counter() - t
        for m in args.methods:
            label, objective, state_only = METHODS[m]
            cfg = adv_config(args.preset, objective, state_only, seed, args)
            cfgs[label] = cfg
            t = time.perf_counter()
            rep = run_method(policies[f"BC seed {seed}"], sub, root / tag / m, cfg, args, seed)
            times[f"{label} seed {seed}"] = time.perf_counter() - t
            curves[f"{label} seed {seed}"] = rep["iterations"]
            policies[f"{label} seed {seed}"] = rep["policy"]
    for spec in args.extra_policy:
        label, _, d = spec.partition("=")
        policies[label] = d
    rows = []
    for name, its in curves.items():
        for r in its:
            rows.append({"run": name, **{k: r.get(k) for k in (
                "iteration", "transitions", "disc_accuracy_all", "disc_accuracy_heldout", "disc_updates", "reward_mean",
                "reward_std", "advantage_std", "ppo_clip_fraction", "ppo_approx_kl", "ppo_logprob_mismatch",
                "act_rate", "rollout_los", "rollout_clearances", "sim_seconds_per_wall_second")}})
    it = pd.DataFrame(rows)
    out_root = args.cache / "adversarial"
    it.to_csv(out_root / f"iterations-{tag}.csv", index=False)
    print(it.to_string(), flush=True)
    loop = None
    if args.closed_loop:
        from dagger import timed_loop
        loop = timed_loop(policies, args, out_root / f"closed_loop-{tag}.csv", times, mvp=False)
    png = Path(__file__).resolve().parent / "adversarial.png"
    plot(curves, loop, png)
    if args.no_record:
        return
    body = [f"`{cmd}` ({time.perf_counter() - t_all:.0f} s in all; " + ", ".join(
        f"{k} {v:.0f} s" for k, v in times.items()) + "). Demonstrations: the fidelity cache (synthetic expert, "
        f"1800 s scenarios, density 4, 8 injected conflicts); BC and D learn from {args.n_train} training scenarios. "
        f"BC: the DAgger bench's model (mlp encoder, VAE, mdn head, session style code), up to {args.epochs} epochs. "
        f"Adversarial: {args.iterations} iterations x {args.per_iteration} new {args.rollout_duration:.0f} s "
        f"scenarios from BC, preset `{args.preset}`: " + "; ".join(
            f"{k}: `{json.dumps(v, separators=(',', ':'))}`" for k, v in cfgs.items()) + ". "
        f"Seeds {args.seeds}, CPU, torch 1 thread, {args.workers} BlueSky workers. "
        f"{len(args.seeds)} seed(s) and {args.closed_loop} closed-loop scenarios: an anecdote, not a measurement.", "",
        "Per iteration (D accuracy = balanced, on the iteration's learner samples and as many expert ones; held-out: "
        "D before it trains on this iteration's fresh samples; logprob mismatch = max |log pi(a) recomputed - recorded| "
        "before the first PPO step, must be ~0):", "",
        "| run | it | transitions | D acc | D acc held-out | D updates | reward mean | reward std | clip frac | "
        "approx KL | logprob mismatch | act rate | rollout LoS |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        body.append(f"| {r['run']} | {r['iteration']} | {r['transitions']} | {fmt(r['disc_accuracy_all'])} | "
                    f"{fmt(r['disc_accuracy_heldout'])} | {fmt(r['disc_updates'])} | {fmt(r['reward_mean'])} | "
                    f"{fmt(r['reward_std'])} | {fmt(r['ppo_clip_fraction'])} | {fmt(r['ppo_approx_kl'])} | "
                    f"{fmt(r['ppo_logprob_mismatch'])} | {fmt(r['act_rate'])} | {fmt(r['rollout_los'])} |")
    if loop is not None:
        body += ["", f"Closed loop ({args.closed_loop} held-out scenarios, seed {args.loop_seed}, "
                 f"{args.loop_duration:.0f} s; each policy alone in control, the expert in shadow; agreement: "
                 "share of the expert's first clearance per pair matched by the policy (aircraft / type, "
                 "bench/dagger.py's definition); act KL: KL(expert P(act) || learner P(act)) on the learner's states):",
                 "", "| controller | conflicts | LoS | resolved % | clearances | heading | altitude | speed | resume | "
                 "agree aircraft | agree type | act KL | learner act rate | expert act rate |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for label, r in loop.iterrows():
            body.append(f"| {label} | {int(r['conflicts'])} | {int(r['los'])} | {fmt(r['resolved_pct'])} | "
                        f"{int(r['clearances'])} | " + " | ".join(str(int(r[f'n_{k}'])) for k in KINDS) + " | "
                        f"{fmt(r['agree_aircraft'])} | {fmt(r['agree_type'])} | {fmt(r.get('onpolicy_act_kl'))} | "
                        f"{fmt(r.get('onpolicy_learner_act_rate'))} | {fmt(r.get('onpolicy_expert_act_rate'))} |")
    body += ["", "Plot: `bench/adversarial.png`."]
    append_results("Adversarial imitation (GAIL, AMP, state-only AMP) from BC (bench/adversarial.py)", "\n".join(body))


if __name__ == "__main__":
    main()
