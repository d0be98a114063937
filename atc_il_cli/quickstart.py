"""The main job on the embedded default (``atc-il quickstart``), part of the composition root like the CLI.

1. radar tracks: the embedded OpenSky-format sample -> ingest -> conflicts -> actions -> observation histories;
2. demonstrations: generated scenarios flown in BlueSky under the synthetic expert -> observation histories;
3. train the default VAE-based model on them, tracked and registered in ``WORK/mlflow.db``;
4. evaluate it offline (against the Bayes ceiling) and in closed loop in BlueSky beside the expert, MVP
   and no controller;
5. batch prediction over the radar tracks of step 1;
6. a report with plots, and how to start the service.
Each step prints what it did. Imports are lazy, as in the CLI.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(work: Path, say: Callable[[str], None] = print, *, scenarios: int = 48, duration_s: float = 1800.0,
        seed: int = 0, epochs: int = 25, sim_scenarios: int = 8, learn: bool = True) -> dict:
    from atc_il.config import PipelineConfig
    from pipelines.sample import radar_chain

    work = Path(work)
    cfg = PipelineConfig()
    t0 = time.perf_counter()
    out: dict = {"workspace": str(work)}

    def step(msg: str) -> None:
        say(f"[{time.perf_counter() - t0:6.1f} s] {msg}")

    radar = work / "radar"
    chain = radar_chain(radar, days=3, seed=seed, config=cfg)
    rep, c, a, d = chain["ingest"], chain["conflicts"], chain["actions"], chain["dataset"]
    step(f"radar tracks: {rep.reconciliation}; {c['episodes']} conflict episodes; {a['actions']} actions "
         f"({a['linked_actions']} linked); {d['samples']} observation histories -> {radar}")
    out.update(radar_rows=rep.rows_in, radar_episodes=c["episodes"], radar_samples=d["samples"])
    if not learn:
        return out

    from simulator_adapters.demonstrations import build_dataset, simulate
    sim = work / "sim"
    s = simulate(sim, scenarios, "atco", seed=seed, workers=2,
                 scenario_kwargs={"duration_s": duration_s, "density": 4.0, "conflicts": 8})
    step(f"simulated {scenarios} scenarios x {duration_s:.0f} s in BlueSky under the synthetic expert: "
         f"{s['clearances']} clearances, {s['sim_seconds_per_wall_second']} simulated s per wall s -> {sim}")
    # what the model's P(act) reads (mlp_mdn_style.yaml): each aircraft's other conflicts, the clearances against the pair
    ds = build_dataset(sim, cfg, other_conflicts=True, pair_history=True)
    step(f"observation histories: {ds['samples']} samples ({ds['positive samples']} with an action), "
         f"train/val/test {ds['train samples']}/{ds['val samples']}/{ds['test samples']} by scenario")

    from models.config import load_model_config
    from models.registry import tracking_uri
    from models.train import train
    uri_store = tracking_uri(work)
    os.environ["MLFLOW_TRACKING_URI"] = uri_store
    # the mlp encoder with the session style code (models/configs/mlp_mdn_style.yaml: the decision-time step with the
    # history features and recent clearances), so that it trains in about a minute on 2 cores; the gru encoder
    # gains a little more from the history (bench/RESULTS.md) at several times the training time
    mcfg = load_model_config(ROOT / "models" / "configs" / "mlp_mdn_style.yaml", name="atc-resolver",
                             train={"epochs": epochs, "device": "cpu", "patience": 4})
    tr = train(mcfg, sim / "dataset", work / "runs" / mcfg.name, resume=False, tracking_uri=uri_store,
               register_as=mcfg.name, alias="champion")
    model_uri = f"models:/{mcfg.name}@champion"
    step(f"trained {mcfg.encoder.name} encoder + VAE + {mcfg.head.name} head: {tr['epochs']} epochs, best val loss "
         f"{tr['best_val_loss']:.3f}, {tr['samples_per_s']:.0f} samples/s; registered as {model_uri} in {uri_store}")

    from models.evaluate import evaluate
    from models.policy import load_policy
    ev = evaluate(load_policy(tr["best_dir"]), sim / "dataset", "test", out=work / "eval", title=model_uri)
    step("offline evaluation (test split) -> " + str(work / "eval") + "\n" + fidelity_lines(ev))

    from simulator_adapters.evaluation import simeval
    agg = simeval(["none", "atco", "mvp", f"model:{model_uri}"], sim_scenarios, seed + 1000, work / "simeval",
                  {"duration_s": 1200.0}, workers=2)
    los = ", ".join(f"{'the model' if r.controller.startswith('model:') else r.controller} {int(r.los)} "
                    f"({int(r.clearances)} clearances)" for r in agg.itertuples())
    step(f"closed loop in BlueSky on {sim_scenarios} new scenarios x 1200 s: losses of separation {los} "
         f"-> {work / 'simeval'}")
    out.update(model_uri=model_uri, act_accuracy=ev["act_accuracy"], nll=ev["nll"],
               type_accuracy=ev.get("type_accuracy"), ceiling_type_accuracy=ev.get("ceiling", {}).get("type_accuracy"),
               loop_los={r.controller: int(r.los) for r in agg.itertuples()})

    try:
        from models.batch_predict import run_predict
    except ImportError:
        run_predict = None
    if run_predict is not None:
        pr = run_predict(model_uri, radar / "tracks", work / "predictions")
        step(f"batch prediction over the radar tracks: {pr.get('predictions')} decisions for "
             f"{pr.get('conflicts')} conflict steps -> {work / 'predictions'}")

    from pipelines.report import build_report
    index = build_report(sim, work / "eval", work / "simeval", title="atc-il quickstart", out=work / "report")
    step(f"report with plots: {index}")
    keys = work / "api_keys.txt"      # a random key the service accepts (16+ characters), readable by the owner only
    if not keys.exists():
        import secrets
        fd = os.open(keys, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(24) + "\n")
    say(f"serve the model: MLFLOW_TRACKING_URI={uri_store} atc-il serve --model {model_uri} --api-key-file {keys} "
        f"(send the key in {keys} as the X-API-Key header)")
    say(f"see the runs: mlflow ui --backend-store-uri {uri_store}")
    out["report"] = str(index)
    return out


def fidelity_lines(ev: dict) -> str:
    """The model's figures beside the achievable ceiling's (models/ceiling.py), one line per figure."""
    c, o = ev.get("ceiling", {}), ev.get("oracle_ceiling", {})
    nan = float("nan")

    def ratio(k: str) -> str:
        return f" ({ev[k] / c[k]:.0%} of it)" if ev.get(k) is not None and c.get(k) else ""
    lines = [f"  discrete NLL {ev['nll_discrete']:.3f} nats; achievable ceiling {c.get('discrete_nll', nan):.3f}, "
             f"oracle {o.get('discrete_nll', nan):.3f}",
             f"  type accuracy {ev.get('type_accuracy', nan):.3f}; ceiling {c.get('type_accuracy', nan):.3f}"
             + ratio("type_accuracy"),
             f"  aircraft accuracy {ev.get('aircraft_accuracy', nan):.3f}; ceiling {c.get('aircraft_accuracy', nan):.3f}"
             + ratio("aircraft_accuracy"),
             f"  act calibration error {ev.get('act_ece', nan):.3f}; mode coverage {ev.get('mode_coverage', nan):.2f}"
             f" (the ceiling's {ev.get('mode_coverage_ceiling', nan):.2f})"]
    return "\n".join(lines)
