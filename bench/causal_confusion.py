"""The causal-confusion study on atc-il's own data: a Markovian (mlp) and a history-conditioned (gru) policy,
with and without a nuisance that is an effect of the controller's past decisions, offline and in closed loop.

    .venv/bin/python bench/causal_confusion.py [--scenarios 16] [--steps 1000] [--eval-scenarios 6]

One data set is simulated with the synthetic expert (generated scenarios in BlueSky, split by scenario), then
built as several variants of the observation histories from the same tracks, conflicts and clearance log:
- ``none``:       no channel of the controller's past decisions (``recent_clearances = 0``, nuisance off);
- ``nuisance``:   ``recent_clearances = 0`` and ``dataset.nuisance`` on: per history step, whether each aircraft
                  of the pair is manoeuvring (an un-resumed clearance issued strictly before that step, within
                  ``nuisance_window_s``), the only channel of past decisions;
- ``clearances``: the project's default features (the last 8 clearances in the airspace, nuisance off).
Every variant x encoder (mlp: the decision step only; gru: the whole 2 min history) gets an mdn head, the
same architecture, optimiser steps, batch and seed; best validation checkpoint; offline metrics on the test
split (models.evaluate). Closed loop: every model as a controller in simeval's loop
(``simulator_adapters.evaluation``'s metrics and agreement; each run's clearances kept for their types and
re-clearances) on one fixed set of fresh scenarios (another seed than the training scenarios), with the
synthetic expert, MVP and no controller on the same scenarios. In the loop the model controller hands its own past clearances
to the feature builder, so the nuisance is computed from the model's own decisions. The models act the way
the expert does, by chance (the model controller's default, ``act="sample"``): at each decision step a conflict
gets a clearance with the policy's P(act); the clearance (aircraft, type, value) is drawn from the policy
(``--decode sample``, default: the ``model-sampled:PATH`` controller registered here) or is the most likely one
given acting (``--decode mode``: ``model:PATH``). Thresholding P(act) at 1/2 (``act="argmax"``) would issue
nothing: at this budget no model reaches it on any test sample (column "max P(act)").

Besides the standard metrics, the table gives, on the test split, the demonstrated act rate when either
aircraft of the pair is manoeuvring and when neither is, and each model's mean P(act) in both groups.
Appends the table to bench/RESULTS.md and writes bench/causal_confusion.png (``--decode mode``: _mode.png).
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
from _machine import append_results, save_figure  # noqa: E402

from atc_il.feature_spec import FeatureSpec  # noqa: E402

# the controller-history features (dataset.controller_history, default on) are a channel of past decisions too:
# off in every variant, so that each variant's channel is the one it names (as when this study was designed)
VARIANTS = {"none": {"recent_clearances": 0, "nuisance": False, "controller_history": False},
            "nuisance": {"recent_clearances": 0, "nuisance": True, "controller_history": False},
            "clearances": {"nuisance": False, "controller_history": False}}
ENCODERS = ("mlp", "gru")
SCENARIO = {"duration_s": 1800, "density": 4.0, "conflicts": 8}


def sampled_controller(n_alternatives: int = 32) -> None:
    """Register ``model-sampled:PATH``: :class:`simulator_adapters.model_controller.ModelController` (which acts on a conflict with
    probability P(act), drawn from its session-seeded generator) whose clearance (aircraft, type, value) is drawn
    from the policy too: from ``n_alternatives`` samples grouped into modes by the prediction function, a mode
    picked with its probability, instead of the most likely clearance given acting."""
    from simulator_adapters.controller_registry import known, register
    from simulator_adapters.model_controller import ModelController

    class SampledModelController(ModelController):
        def __init__(self, uri: str):
            super().__init__(uri)
            self.name = f"model-sampled:{uri}"
            real = self.predictor.predict_samples

            def sampled(*args, **kwargs):
                kwargs.update(n_alternatives=n_alternatives, seed=int(self.rng.integers(2 ** 31)))
                dec, alts = real(*args, **kwargs)
                for i, modes in enumerate(alts):
                    if modes:
                        p = np.array([m["probability_given_act"] for m in modes])
                        m = modes[int(self.rng.choice(len(modes), p=p / p.sum()))]
                        for k in ("aircraft", "flight_id", "action_type", "value"):
                            dec.at[dec.index[i], k] = m[k]
                return dec, alts
            self.predictor.predict_samples = sampled

    if "model-sampled" not in known():
        register("model-sampled", SampledModelController)


def action_stats(actions, window_s: float = 120.0) -> dict:
    """Clearance types, and how often the controller clears an aircraft again (not a resume) within
    ``window_s`` of its own previous non-resume clearance to it (a memoryless controller re-resolving the
    conflict it already resolved), or tells it to resume within ``window_s`` of that clearance."""
    out = {f"n_{t}": 0 for t in ("heading", "altitude", "speed", "resume")}
    out.update({"recleared": 0, "quick_resume": 0})
    if len(actions) == 0:
        return out
    a = actions.sort_values("time", kind="stable")
    for t, n in a["action_type"].value_counts().items():
        out[f"n_{t}"] = int(n)
    for _, g in a.groupby("flight_id"):
        last = None
        for r in g.itertuples():
            dt = (r.time - last).total_seconds() if last is not None else np.inf
            if r.action_type == "resume":
                out["quick_resume"] += int(dt <= window_s)
                last = None
            else:
                out["recleared"] += int(dt <= window_s)
                last = r.time
    return out


def closed_loop(controllers: list, n: int, seed: int, scenario_kwargs: dict, out: Path) -> dict:
    """simeval's loop (every controller on the same scenarios; simulator_adapters.evaluation's metrics and
    agreement with the expert), keeping each run's clearances for :func:`action_stats`."""
    import pandas as pd

    from simulator_adapters.bluesky_sim import BlueSkySim
    from simulator_adapters.controller_registry import make_controller
    from simulator_adapters.evaluation import agreement, rollout_metrics
    from simulator_adapters.rollout import rollout
    from simulator_adapters.scenarios import scenario_set
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with BlueSkySim() as sim:
        for sc in scenario_set(n, seed, **scenario_kwargs):
            runs = {name: rollout(sc, make_controller(name), sim, seed=sc.seed) for name in controllers}
            for name in controllers:
                m = rollout_metrics(runs[name], sc)
                m.update({f"agree_{k}": v for k, v in agreement(runs[name], runs["atco"]).items()})
                m.update(action_stats(runs[name].actions))
                m["controller"] = name
                rows.append(m)
            print(f"closed loop: {sc.name} done", flush=True)
    per = pd.DataFrame(rows)
    per.to_csv(out / "per_scenario.csv", index=False)
    sums = ["conflicts", "los", "clearances", "n_heading", "n_altitude", "n_speed", "n_resume", "recleared",
            "quick_resume"]
    agg = per.groupby("controller", sort=False).agg(
        **{k: (k, "sum") for k in sums}, los_severity=("los_severity", "mean"), resolved_pct=("resolved_pct", "mean"),
        agree_aircraft=("agree_aircraft_agree", "mean"), agree_type=("agree_type_agree", "mean"),
        agree_timing_mae_s=("agree_timing_mae_s", "mean"))
    return agg.to_dict("index")


def simulate_data(ws: Path, scenarios: int, seed: int) -> Path:
    """The expert's demonstrations -> conflicts, episodes, actions (the clearance log) in ``ws``."""
    from atc_il.config import PipelineConfig
    from pipelines import actions as act
    from pipelines import conflicts as con
    from simulator_adapters.demonstrations import simulate
    rep = simulate(ws, scenarios, "atco", seed=seed, workers=2, scenario_kwargs=SCENARIO, progress=False)
    print(f"simulated: {rep['scenarios']} scenarios, {rep['clearances']} clearances, "
          f"{rep['sim_seconds_per_wall_second']} sim s / wall s", flush=True)
    cfg = PipelineConfig()
    con.run(ws / "tracks", ws, cfg.conflicts)
    act.run(ws / "tracks", ws, cfg.actions, log=ws / "clearances.parquet", infer=False, episodes_dir=ws / "episodes")
    (ws / "_STUDY_SIM").write_text(json.dumps({"scenarios": scenarios, "seed": seed, **SCENARIO}))
    return ws


def build_variant(ws: Path, name: str, window_s: float) -> Path:
    from atc_il.config import PipelineConfig
    from pipelines.dataset import build
    cfg = PipelineConfig()
    upd = {"split": "scenario", **VARIANTS[name]}
    if upd.get("nuisance"):
        upd["nuisance_window_s"] = window_s
    out = ws / f"data-{name}"           # inside the workspace: evaluate reads ../expert_truth.parquet
    s = build(ws, out, cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update=upd)}), progress=False)
    print(f"variant {name}: {s['samples']} samples ({s['positive samples']} with an action), spec {s['spec_hash']}",
          flush=True)
    return out


@torch.inference_mode()
def p_act(policy, obs) -> np.ndarray:
    """P(act now) for every sample (the act-or-not part of the head, as the prediction function computes it)."""
    from models.interface import Observations
    out = []
    n = obs.batch_size
    for a in range(0, n, 2048):
        o = Observations(*(getattr(obs, k)[a:a + 2048] for k in ("pair", "neighbours", "geometry", "clearances")))
        out.append(policy.p_act(o).numpy())
    return np.concatenate(out)


def manoeuvring_groups(data_nuis: Path) -> tuple[np.ndarray, np.ndarray, list]:
    """Test split of the nuisance variant: (either aircraft manoeuvring at decision time, act label, sample ids)."""
    from pipelines.features import GEOM
    from pipelines.shards import load_split
    names = FeatureSpec.load(data_nuis).feature_names("geometry")
    t = load_split(data_nuis, "test", as_torch=False, columns=["geometry", "label_act", "sample_id"])
    g = t["geometry"][:, -1]
    man = (g[:, names.index("manoeuvring_ac1")] > 0.5) | (g[:, names.index("manoeuvring_ac2")] > 0.5)
    assert len(names) == len(GEOM) + 2
    return man, t["label_act"].astype(int), t["sample_id"]


def plot(rows: list, refs: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("nll", "offline: test NLL (nats), lower better"), ("timing_error_s", "offline: timing error (s)"),
              ("p_act_man", "offline: mean P(act) | manoeuvring"),
              ("los", "closed loop: losses of separation"), ("resolved_pct", "closed loop: resolved (%)"),
              ("recleared", "closed loop: re-clearances <= 120 s")]
    colors = {"none": "#4c72b0", "nuisance": "#c44e52", "clearances": "#55a868"}
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (key, title) in zip(axes.ravel(), panels):
        for j, v in enumerate(variants):
            xs, ys = [], []
            for i, enc in enumerate(ENCODERS):
                r = next((r for r in rows if r["variant"] == v and r["encoder"] == enc), None)
                if r is not None and r.get(key) is not None:
                    xs.append(i + (j - (len(variants) - 1) / 2) * 0.8 / len(variants))
                    ys.append(r[key])
            ax.bar(xs, ys, width=0.8 / len(variants), color=colors.get(v, "grey"), label=v)
        if key in ("los", "resolved_pct", "recleared"):
            for name, ls in (("atco", "-"), ("mvp", "--"), ("none", ":")):
                if name in refs:
                    ax.axhline(refs[name][key], color="k", ls=ls, lw=1, label=f"{name} controller")
        if key == "p_act_man" and rows and rows[0].get("act_rate_man") is not None:
            ax.axhline(rows[0]["act_rate_man"], color="k", lw=1, label="expert act rate")
        ax.set_xticks(range(len(ENCODERS)), [f"{e} ({'Markovian' if e == 'mlp' else 'history'})" for e in ENCODERS])
        ax.set_title(title, fontsize=10)
    axes[0, 0].legend(fontsize=8)
    axes[1, 0].legend(fontsize=7, ncol=2)
    fig.suptitle("Causal-confusion study: feature variant x encoder (mdn head, same budget)", fontsize=11)
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", type=int, default=16, help="training scenarios simulated with the expert")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1000, help="optimiser steps per model")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--window", type=float, default=600.0, help="dataset.nuisance_window_s")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--eval-scenarios", type=int, default=6)
    ap.add_argument("--eval-duration", type=float, default=1200.0)
    ap.add_argument("--eval-seed", type=int, default=1000)
    ap.add_argument("--decode", choices=("sample", "mode"), default="sample",
                    help="closed loop: draw the clearance from the policy (sample) or take the most likely one (mode); "
                         "the act-or-not decision is drawn with P(act) either way")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/atc-il-causal"))
    ap.add_argument("--reuse-sim", action="store_true", help="reuse WORKDIR/sim if it holds the same simulation")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from models.config import ModelConfig
    from models.data import load_data
    from models.evaluate import evaluate
    from models.policy import load_policy
    from models.train import train

    torch.set_num_threads(1)
    t_all = time.perf_counter()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise SystemExit(f"--variants: unknown {bad}; known {list(VARIANTS)}")
    ws = args.workdir / "sim"
    marker = ws / "_STUDY_SIM"
    want = {"scenarios": args.scenarios, "seed": args.seed, **SCENARIO}
    reused = args.reuse_sim and marker.exists() and json.loads(marker.read_text()) == want
    if not reused:
        simulate_data(ws, args.scenarios, args.seed)
    t_sim = time.perf_counter() - t_all
    data = {v: build_variant(ws, v, args.window) for v in variants}
    groups = manoeuvring_groups(data["nuisance"]) if "nuisance" in data else None

    rows, t_train = [], 0.0
    for v in variants:
        obs, _ = load_data(data[v], "test").batch()
        ids = None
        if groups is not None:
            from pipelines.shards import load_split
            ids = load_split(data[v], "test", as_torch=False, columns=["sample_id"])["sample_id"]
            assert list(ids) == list(groups[2]), "variants must hold the same test samples in the same order"
        for enc in ENCODERS:
            name = f"{v}-{enc}"
            cfg = ModelConfig(name=name, encoder={"name": enc, "hidden": args.hidden}, vae={"enabled": False},
                              head={"name": "mdn", "hidden": args.hidden},
                              train={"epochs": 1000, "max_steps": args.steps, "batch_size": args.batch,
                                     "patience": 1000, "device": "cpu", "seed": 0, "lr": 2e-3})
            t0 = time.perf_counter()
            s = train(cfg, data[v], args.workdir / "runs" / name, resume=False, tracking_uri=False, progress=False)
            t_train += time.perf_counter() - t0
            pol = load_policy(s["best_dir"])
            m = evaluate(pol, data[v], "test", n_samples=32, out=args.workdir / "eval" / name, title=name)
            r = {"variant": v, "encoder": enc, "model": str(s["best_dir"]),
                 **{k: m.get(k) for k in ("nll", "act_accuracy", "act_f1", "aircraft_accuracy", "type_accuracy",
                                          "timing_error_s", "timing_miss_rate")}}
            if groups is not None:
                man, y, _ = groups
                p = p_act(pol, obs)
                r.update({"act_rate_man": float(y[man].mean()) if man.any() else None,
                          "act_rate_free": float(y[~man].mean()) if (~man).any() else None,
                          "p_act_man": float(p[man].mean()) if man.any() else None,
                          "p_act_free": float(p[~man].mean()) if (~man).any() else None,
                          "share_man": float(man.mean()), "p_act_max": float(p.max())})
            rows.append(r)
            print(f"{name:22s} nll {r['nll']:.3f} act F1 {r['act_f1']:.3f} timing {r['timing_error_s']:.1f} s "
                  f"aircraft {r.get('aircraft_accuracy') or float('nan'):.3f}", flush=True)

    t0 = time.perf_counter()
    prefix = "model-sampled" if args.decode == "sample" else "model"
    if args.decode == "sample":
        sampled_controller()
    controllers = ["atco", "mvp", "none"] + [f"{prefix}:{r['model']}" for r in rows]
    res = closed_loop(controllers, args.eval_scenarios, args.eval_seed, {**SCENARIO, "duration_s": args.eval_duration},
                      args.workdir / "closed_loop")
    t_loop = time.perf_counter() - t0
    keys = ("los", "los_severity", "resolved_pct", "clearances", "conflicts", "agree_aircraft", "agree_type",
            "agree_timing_mae_s", "n_heading", "n_altitude", "n_speed", "n_resume", "recleared", "quick_resume")
    refs = {c: {k: res[c][k] for k in keys} for c in ("atco", "mvp", "none")}
    for r in rows:
        cl = res[f"{prefix}:{r['model']}"]
        r.update({k: cl[k] for k in keys})
    (args.workdir / "causal_confusion.json").write_text(json.dumps({"rows": rows, "refs": refs}, indent=1, default=str))
    png = Path(__file__).resolve().parent / f"causal_confusion{'' if args.decode == 'sample' else '_mode'}.png"
    plot(rows, refs, png)

    def fmt(x):
        return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else (f"{x:.3g}" if isinstance(x, float) else str(x))
    cols = [("nll", "NLL"), ("act_f1", "act F1"), ("timing_error_s", "timing err (s)"), ("aircraft_accuracy", "aircraft acc"),
            ("type_accuracy", "type acc"), ("p_act_man", "P(act) manoeuvring"), ("p_act_free", "P(act) not"), ("p_act_max", "max P(act)"),
            ("los", "LoS"), ("los_severity", "LoS severity"), ("resolved_pct", "resolved %"), ("clearances", "clearances"),
            ("recleared", "re-cleared"), ("n_resume", "resumes"), ("agree_aircraft", "agree aircraft"), ("agree_type", "agree type"), ("agree_timing_mae_s", "agree timing (s)")]
    lines = ["| variant | encoder | " + " | ".join(t for _, t in cols) + " |", "|---|---|" + "---|" * len(cols)]
    lines += [f"| {r['variant']} | {r['encoder']} | " + " | ".join(fmt(r.get(k)) for k, _ in cols) + " |" for r in rows]
    for c in ("atco", "mvp", "none"):
        lines.append(f"| *{c} controller* | - | " + " | ".join(fmt(refs[c].get(k)) for k, _ in cols) + " |")
    r0 = rows[0] if rows else {}
    sp = FeatureSpec.load(data[variants[0]]).splits or {}
    conf = refs["atco"]["conflicts"]
    body = (f"`.venv/bin/python bench/causal_confusion.py --scenarios {args.scenarios} --steps {args.steps} "
            f"--batch {args.batch} --hidden {args.hidden} --window {args.window:g} --variants {','.join(variants)} "
            f"--eval-scenarios {args.eval_scenarios} --eval-duration {args.eval_duration:g} --eval-seed {args.eval_seed} "
            f"--decode {args.decode}"
            f"{' --reuse-sim' if reused else ''}` (total {time.perf_counter() - t_all:.0f} s: simulation and data chain "
            f"{'reused' if reused else f'{t_sim:.0f} s'}, training {t_train:.0f} s, "
            f"closed loop {t_loop:.0f} s). Synthetic expert data, {args.scenarios} scenarios x {SCENARIO['duration_s']} s "
            f"split by scenario (train/val/test samples {sp['train']['samples']}/{sp['val']['samples']}/"
            f"{sp['test']['samples']}); variants: `none` = no channel of past decisions (recent_clearances 0), "
            f"`nuisance` = recent_clearances 0 + the per-step manoeuvring indicators (window {args.window:g} s), "
            f"`clearances` = the default features (last 8 clearances). Each model: mdn head, hidden {args.hidden}, "
            f"VAE off, {args.steps} steps of batch {args.batch}, seed 0, CPU 1 thread, best validation checkpoint; "
            f"offline on the test split. On the test split {fmt(r0.get('share_man'))} of the samples have a "
            f"manoeuvring aircraft; the expert acts at {fmt(r0.get('act_rate_man'))} of those steps and at "
            f"{fmt(r0.get('act_rate_free'))} of the others. Closed loop: {args.eval_scenarios} fresh scenarios "
            f"(seed {args.eval_seed}) x {args.eval_duration:g} s in BlueSky ({conf} conflict pairs under the expert); "
            "LoS, resolved % and clearances summed/averaged over the scenarios, agreement with the expert's first "
            "clearance per conflict it acted on; \"re-cleared\": clearances (not resume) to an aircraft the same "
            "controller had cleared within the previous 120 s; models act with probability P(act) (the model "
            "controller's default), " + ("the clearance drawn from the policy's sampled modes (32 samples; "
                                         "`model-sampled`). " if args.decode == "sample" else
                                         "the clearance being the most likely one given acting (`model:`). ")
            + f"Plot: `bench/{png.name}`.\n\n" + "\n".join(lines))
    print(body)
    (args.workdir / "causal_confusion.md").write_text(body + "\n")
    if not args.no_record:
        append_results("Causal-confusion study (bench/causal_confusion.py)", body)


if __name__ == "__main__":
    main()
