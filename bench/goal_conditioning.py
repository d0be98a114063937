"""Goal conditioning: the same policies with and without each aircraft's exit point and level as input.

    .venv/bin/python bench/goal_conditioning.py [--scenarios 24] [--steps 400] [--closed-loop 3] [--data DIR]

One simulated data set (synthetic expert, whose altitude and heading directions lean towards each
aircraft's exit level and exit side: ``AtcoParams.goal_gain``; scenarios with ``exit_level_fraction``
of level flights leaving at another level), built twice, with ``dataset.goal`` off and on (same samples,
same split by scenario). gru + mdn (the default family) and mlp + mdn are trained on each at the same
budget (as bench/heads.py: hidden 64, VAE latent 8, AdamW, the same optimiser steps and batch, seed 0,
best validation checkpoint) and evaluated on the test split with models.evaluate (NLL, accuracies,
mode coverage) plus goal consistency: over the test samples where the expert acted, the share of
altitude decisions towards the aircraft's exit level (where it differs from its altitude by 500 ft or
more) and of heading decisions towards the side of its exit point (where the exit is more than ~6 deg off
the track), for the model's decisions sampled given acting (32 per sample) and for the demonstrations.
Closed loop (``--closed-loop N`` scenarios, 0 = skip): every model as a controller in BlueSky beside the
expert on the same N fresh scenarios; the same goal-consistency shares over the altitude and heading
clearances each issued, plus the simeval metrics. Appends a table and a PNG plot to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import append_results, fmt, save_figure  # noqa: E402

from atc_il.feature_spec import FeatureSpec  # noqa: E402

MODELS = (("gru", "mdn"), ("mlp", "mdn"))
SCENARIO_KW = {"duration_s": 1800, "density": 4.0, "conflicts": 8, "exit_level_fraction": 0.5}
MIN_DALT_FT, MIN_SIN = 500.0, 0.1


def make_data(ws: Path, scenarios: int, seed: int) -> tuple[Path, Path]:
    """Simulate, then conflicts -> actions -> observation histories twice (goal off: dataset/, on: dataset_goal/)."""
    from atc_il.config import PipelineConfig
    from pipelines import actions as act
    from pipelines import conflicts as con
    from pipelines.dataset import build
    from simulator_adapters.demonstrations import simulate
    t = time.perf_counter()
    rep = simulate(ws, scenarios, "atco", seed=seed, workers=2, scenario_kwargs=SCENARIO_KW)
    print(f"simulated: {rep['scenarios']} scenarios, {rep['clearances']} clearances in {time.perf_counter() - t:.0f} s",
          flush=True)
    cfg = PipelineConfig()
    con.run(ws / "tracks", ws, cfg.conflicts)
    act.run(ws / "tracks", ws, cfg.actions, log=ws / "clearances.parquet", infer=False, episodes_dir=ws / "episodes")
    out = []
    for goal, name in ((False, "dataset"), (True, "dataset_goal")):
        dcfg = cfg.dataset.model_copy(update={"split": "scenario", "goal": goal})
        s = build(ws, ws / name, cfg.model_copy(update={"dataset": dcfg}))
        print(f"{name}: {s['samples']} samples ({s['positive samples']} with an action)", flush=True)
        out.append(ws / name)
    return out[0], out[1]


def goal_context(goal_dir: Path, split: str) -> pd.DataFrame:
    """Per sample, per aircraft (1, 2) at decision time: exit level - altitude (NaN if unknown), sin of the
    exit's bearing relative to the track (NaN if no plan); from the goal data set's geometry tensor."""
    from pipelines.shards import load_split
    names = FeatureSpec.load(goal_dir).feature_names("geometry")
    d = load_split(goal_dir, split, as_torch=False, columns=["sample_id", "geometry"])
    g = d["geometry"][:, -1]
    out = {"sample_id": np.asarray(d["sample_id"])}
    for k in (1, 2):
        known = g[:, names.index(f"goal{k}_known")] > 0.5
        lk = g[:, names.index(f"goal{k}_level_known")] > 0.5
        out[f"dalt{k}"] = np.where(known & lk, g[:, names.index(f"goal{k}_dalt_ft")], np.nan)
        out[f"sin{k}"] = np.where(known, g[:, names.index(f"goal{k}_brg_sin")], np.nan)
    return pd.DataFrame(out)


def consistency(ac: np.ndarray, ty: np.ndarray, val: np.ndarray, ctx: pd.DataFrame, rows: np.ndarray) -> dict:
    """Shares of altitude decisions towards the exit level and heading decisions towards the exit side.
    ``ac``/``ty``/``val``: decisions (0/1 aircraft, type code, signed value), ``rows``: their context rows."""
    from atc_il.schemas import ACTION_TYPES
    dalt = np.where(ac == 0, ctx["dalt1"].to_numpy()[rows], ctx["dalt2"].to_numpy()[rows])
    sin = np.where(ac == 0, ctx["sin1"].to_numpy()[rows], ctx["sin2"].to_numpy()[rows])
    alt = (ty == ACTION_TYPES.index("altitude")) & (np.abs(np.nan_to_num(dalt)) >= MIN_DALT_FT)
    hdg = (ty == ACTION_TYPES.index("heading")) & (np.abs(np.nan_to_num(sin)) >= MIN_SIN)
    return {"alt_towards_exit": float(np.mean(np.sign(val[alt]) == np.sign(dalt[alt]))) if alt.any() else np.nan,
            "alt_n": int(alt.sum()),
            "hdg_towards_exit": float(np.mean(np.sign(val[hdg]) == np.sign(sin[hdg]))) if hdg.any() else np.nan,
            "hdg_n": int(hdg.sum())}


@torch.no_grad()
def model_consistency(policy, data_dir: Path, ctx: pd.DataFrame, n: int = 32, seed: int = 0) -> tuple[dict, dict]:
    """Goal consistency of ``n`` decisions sampled given acting on every acting test sample, and of the
    demonstrations there."""
    from models.data import load_data
    from pipelines.shards import load_split
    obs, dec = load_data(data_dir, "test", expect=policy.spec).batch()
    ids = np.asarray(load_split(data_dir, "test", as_torch=False, columns=["sample_id"])["sample_id"])
    if not np.array_equal(ids, ctx["sample_id"].to_numpy()):
        raise RuntimeError(f"{data_dir}: test samples differ from the goal data set's; rebuild both")
    pos = np.flatnonzero(dec.act.numpy() == 1)
    demo = consistency(dec.aircraft.numpy()[pos], dec.type.numpy()[pos], dec.value.numpy()[pos], ctx, pos)
    from models.interface import Observations
    o = Observations(*(getattr(obs, k)[pos] for k in ("pair", "neighbours", "geometry", "clearances")))
    policy.eval()
    s = policy.sample_actions(o, n, torch.Generator().manual_seed(seed))
    rows = np.repeat(pos[:, None], n, axis=1).reshape(-1)
    model = consistency(s.aircraft.numpy().reshape(-1), s.type.numpy().reshape(-1), s.value.float().numpy().reshape(-1),
                        ctx, rows)
    return model, demo


def closed_loop(policies: dict[str, Path], n: int, seed: int) -> pd.DataFrame:
    """Every model and the expert on the same ``n`` scenarios: simeval metrics and goal consistency of the
    altitude and heading clearances issued (exit level/side as seen at the time of the clearance)."""
    from atc_il.geometry import kwik_qdr_dist_nm
    from simulator_adapters.bluesky_sim import BlueSkySim
    from simulator_adapters.controller_registry import make_controller
    from simulator_adapters.evaluation import agreement, rollout_metrics
    from simulator_adapters.rollout import rollout
    from simulator_adapters.scenarios import scenario_set
    scenarios = scenario_set(n, seed, **{**SCENARIO_KW, "duration_s": 1200})
    names = {"expert (atco)": "atco", **{k: f"model:{v}" for k, v in policies.items()}}
    rows = []
    with BlueSkySim() as sim:
        for sc in scenarios:
            plan = {f.flight_id: f for f in sc.flights}
            runs = {}
            for label, spec in names.items():
                t = time.perf_counter()
                res = runs[label] = rollout(sc, make_controller(spec), sim, seed=sc.seed)
                m = rollout_metrics(res, sc)
                m.update({f"agree_{k}": v for k, v in agreement(res, runs["expert (atco)"]).items()})
                tr = res.tracks.set_index(["flight_id", "time"]).sort_index()
                alt_ok = alt_n = hdg_ok = hdg_n = 0
                for c in res.actions.itertuples():
                    f = plan.get(c.flight_id)
                    if f is None or c.action_type not in ("altitude", "heading") or (c.flight_id, c.time) not in tr.index:
                        continue
                    st = tr.loc[(c.flight_id, c.time)]
                    if c.action_type == "altitude" and abs(f.exit_level_ft - st["alt_ft"]) >= MIN_DALT_FT:
                        alt_n += 1
                        alt_ok += int(np.sign(c.value) == np.sign(f.exit_level_ft - st["alt_ft"]))
                    elif c.action_type == "heading":
                        qdr, _ = kwik_qdr_dist_nm(st["lat_deg"], st["lon_deg"], f.route[-1].lat_deg, f.route[-1].lon_deg)
                        s = float(np.sin(np.radians(float(qdr) - st["trk_deg"])))
                        if abs(s) >= MIN_SIN:
                            hdg_n += 1
                            hdg_ok += int(np.sign(c.value) == np.sign(s))
                m.update(controller=label, alt_ok=alt_ok, alt_n=alt_n, hdg_ok=hdg_ok, hdg_n=hdg_n,
                         wall_s=round(time.perf_counter() - t, 1))
                rows.append(m)
            print(f"closed loop {sc.name}: " + ", ".join(f"{r['controller']} los {r['los']}" for r in rows[-len(names):]),
                  flush=True)
    per = pd.DataFrame(rows)
    agg = per.groupby("controller", sort=False).agg(
        conflicts=("conflicts", "sum"), los=("los", "sum"), resolved_pct=("resolved_pct", "mean"),
        clearances=("clearances", "sum"), agree_type=("agree_type_agree", "mean"),
        alt_ok=("alt_ok", "sum"), alt_n=("alt_n", "sum"), hdg_ok=("hdg_ok", "sum"), hdg_n=("hdg_n", "sum"))
    agg["alt_towards_exit"] = agg["alt_ok"] / agg["alt_n"].where(agg["alt_n"] > 0)
    agg["hdg_towards_exit"] = agg["hdg_ok"] / agg["hdg_n"].where(agg["hdg_n"] > 0)
    return agg.reset_index()


def plot(rows: list[dict], demo: dict, loop: pd.DataFrame | None, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("nll", "test NLL (nats, lower is better)"), ("alt_towards_exit", "altitude decisions towards exit level"),
              ("hdg_towards_exit", "heading decisions towards exit side")]
    ncols = len(panels) + (1 if loop is not None else 0)
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.6))
    labels = [r["model"] for r in rows]
    colors = ["#4c72b0" if not r["goal"] else "#dd8452" for r in rows]
    for ax, (k, title) in zip(axes, panels):
        vals = [r.get(k, np.nan) for r in rows]
        ax.bar(range(len(rows)), vals, color=colors)
        if k != "nll":
            ax.axhline(demo[k], color="k", ls="--", lw=1, label="expert demonstrations")
            ax.axhline(0.5, color="grey", ls=":", lw=1)
            ax.set_ylim(0, 1)
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
    if loop is not None:
        ax = axes[-1]
        x = np.arange(len(loop))
        ax.bar(x - 0.2, loop["alt_towards_exit"], 0.4, label="altitude", color="#55a868")
        ax.bar(x + 0.2, loop["hdg_towards_exit"], 0.4, label="heading", color="#8172b2")
        ax.set_xticks(x, loop["controller"], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.axhline(0.5, color="grey", ls=":", lw=1)
        ax.set_title("closed loop: clearances towards exit", fontsize=9)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=None, help="a workspace made by an earlier run (skips simulation)")
    ap.add_argument("--scenarios", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--closed-loop", type=int, default=3, help="closed-loop scenarios (0: skip)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/atc-il-goal"))
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from models.config import ModelConfig
    from models.evaluate import evaluate
    from models.policy import load_policy
    from models.train import train
    from simulator_adapters.atco import AtcoParams

    torch.set_num_threads(1)
    t_all = time.perf_counter()
    ws = args.data or args.workdir / "sim"
    plain, goal = (ws / "dataset", ws / "dataset_goal") if args.data else make_data(ws, args.scenarios, args.seed)
    ctx = goal_context(goal, "test")
    rows, best, demo = [], {}, None
    for enc, head in MODELS:
        for use_goal, data in ((False, plain), (True, goal)):
            name = f"{enc}-{head}" + ("-goal" if use_goal else "")
            cfg = ModelConfig(name=name, encoder={"name": enc, "hidden": args.hidden}, vae={"enabled": True, "latent_dim": 8},
                              head={"name": head, "hidden": args.hidden},
                              train={"epochs": 1000, "max_steps": args.steps, "batch_size": args.batch,
                                     "patience": 1000, "device": "cpu", "seed": 0, "lr": 2e-3})
            t = time.perf_counter()
            s = train(cfg, data, args.workdir / "runs" / name, resume=False, tracking_uri=False, progress=False)
            pol = load_policy(s["best_dir"])
            m = evaluate(pol, data, "test", n_samples=64, out=args.workdir / "eval" / name, title=name)
            gm, demo = model_consistency(pol, data, ctx)
            best[name] = Path(s["best_dir"])
            rows.append({"model": f"{enc} + {head}" + (" + goal" if use_goal else ""), "goal": use_goal,
                         **{k: v for k, v in m.items() if not isinstance(v, dict)}, **gm,
                         "ceiling_nll_discrete": m.get("ceiling", {}).get("discrete_nll"),
                         "seconds": round(time.perf_counter() - t, 1)})
            r = rows[-1]
            print(f"{name:16s} nll {r['nll']:.3f} type acc {r.get('type_accuracy', np.nan):.3f} "
                  f"alt->exit {r['alt_towards_exit']:.2f} (n {r['alt_n']}) hdg->exit {r['hdg_towards_exit']:.2f} "
                  f"(n {r['hdg_n']}) [{r['seconds']} s]", flush=True)
    loop = closed_loop(best, args.closed_loop, args.seed + 1) if args.closed_loop > 0 else None
    (args.workdir / "goal.json").write_text(json.dumps({"offline": rows, "demonstrations": demo,
                                                        "closed_loop": None if loop is None else loop.to_dict("records")},
                                                       indent=1, default=str))
    png = Path(__file__).resolve().parent / ("goal_conditioning.png" if args.steps == 400 else
                                             f"goal_conditioning_steps{args.steps}.png")
    plot(rows, demo, loop, png)
    cols = [("nll", "NLL (nats)"), ("nll_discrete", "discrete NLL"), ("aircraft_accuracy", "aircraft acc"),
            ("type_accuracy", "type acc"), ("mode_coverage", "mode coverage"), ("decision_tv_distance", "TV to demos"),
            ("alt_towards_exit", "alt towards exit level"), ("alt_n", "n alt"),
            ("hdg_towards_exit", "hdg towards exit side"), ("hdg_n", "n hdg")]
    lines = ["| model | " + " | ".join(t for _, t in cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {r['model']} | " + " | ".join(fmt(r.get(k)) for k, _ in cols) + " |" for r in rows]
    lines.append("| **expert demonstrations** | - | " + fmt(rows[0].get("ceiling_nll_discrete")) + " (ceiling) | - | - | - | - | "
                 + f"{fmt(demo['alt_towards_exit'])} | {demo['alt_n']} | {fmt(demo['hdg_towards_exit'])} | {demo['hdg_n']} |")
    sp = FeatureSpec.load(goal).splits or {}
    data_arg = f"--data {args.data} " if args.data else f"--scenarios {args.scenarios} "
    body = (f"`.venv/bin/python bench/goal_conditioning.py {data_arg}--steps {args.steps} "
            f"--batch {args.batch} --hidden {args.hidden} --closed-loop {args.closed_loop}` "
            f"({time.perf_counter() - t_all:.0f} s in all): synthetic expert data (goal_gain {AtcoParams().goal_gain:g}, scenarios {SCENARIO_KW}), "
            f"split by scenario (train/val/test samples {sp['train']['samples']}/{sp['val']['samples']}/{sp['test']['samples']}), "
            f"built with dataset.goal off and on; every model {args.steps} optimiser steps of batch {args.batch} on CPU "
            f"(1 thread), VAE on (latent 8), evaluated on the test split. Goal consistency: over the test samples where "
            f"the expert acted, 32 decisions sampled given acting per sample (n = decisions counted), altitude decisions "
            f"where the exit level is >= {MIN_DALT_FT:.0f} ft from the aircraft's altitude, heading decisions where "
            f"|sin(exit bearing - track)| >= {MIN_SIN}.\n\n" + "\n".join(lines))
    if loop is not None:
        lc = [("conflicts", "conflicts"), ("los", "LoS"), ("resolved_pct", "resolved %"), ("clearances", "clearances"),
              ("agree_type", "type agreement with expert"), ("alt_towards_exit", "alt clearances towards exit level"),
              ("alt_n", "n alt"), ("hdg_towards_exit", "hdg clearances towards exit side"), ("hdg_n", "n hdg")]
        body += (f"\n\nClosed loop: {args.closed_loop} fresh scenarios (seed {args.seed + 1}, 1200 s each), every "
                 "controller on the same scenarios in BlueSky; shares over the clearances each issued.\n\n"
                 + "| controller | " + " | ".join(t for _, t in lc) + " |\n|---|" + "---|" * len(lc) + "\n"
                 + "\n".join(f"| {r['controller']} | " + " | ".join(fmt(r[k]) for k, _ in lc) + " |"
                             for r in loop.to_dict("records")))
    body += f"\n\n![goal conditioning]({png.name})"
    print(body)
    if not args.no_record:
        append_results("Goal conditioning: with and without the exit point and level (bench/goal_conditioning.py)", body)


if __name__ == "__main__":
    main()
