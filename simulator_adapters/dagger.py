"""DAgger with the synthetic expert: the learner drives, the expert labels every state it visits, the data grows.

Ross, Gordon and Bagnell (2011), "A reduction of imitation learning and structured prediction to no-regret online
learning". Behavioural cloning trains on the expert's states only; in the loop the learner's own errors lead it
to states the expert never showed (compounding error), and, given history, it may copy the effects of the expert's
past decisions instead of their causes (causal confusion). DAgger asks the expert what it would do on the learner's
own states. Iteration i = 1..N (:func:`run_dagger`, ``atc-il dagger``):

1. roll the last policy out in BlueSky on ``scenarios`` new scenarios (parallel processes). At every decision step
   the expert executes its decision with probability ``beta_i = beta * beta_decay ** (i - 1)``, the learner
   otherwise (:class:`DaggerController`). Either way the expert, run in shadow on the same observation
   (:meth:`SyntheticAtco.propose`), decides what it would do there: that is the label; its memory (who was cleared,
   which conflicts are handled) follows what was executed (:meth:`SyntheticAtco.commit`);
2. the rollouts go through the data chain as any demonstrations (conflicts -> actions -> observation histories):
   the features' clearance history is the executed clearances (what the learner sees in the loop), the labels the
   expert's decisions (``labels.parquet``, linked to their conflicts by the actions stage, read by
   ``pipelines.dataset.build(labels=...)``);
3. aggregate: the demonstrations' training split and every iteration's rollouts so far; the validation and test
   splits and the normalisation statistics stay the demonstrations' (:func:`aggregate`);
4. retrain, from the last policy's weights by default (``warm_start``), and evaluate on the test split.
Every training is an MLflow run (tagged with the iteration); a ``dagger`` run holds the per-iteration metrics
(step = iteration): the rollouts' losses of separation and clearances, the expert's share of control, how the
expert judges the learner's own decisions on the learner's own states (:func:`onpolicy_metrics`), the offline test
metrics and their gaps to the ceilings.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from atc_il.config import PipelineConfig
from atc_il.errors import ConfigError, DataError
from atc_il.feature_spec import FeatureSpec
from atc_il.io import atomic_write_table, mark_complete, read_table, reset_dir, write_json
from atc_il.schemas import ACTION_SCHEMA, EPISODE_SCHEMA, TRACK_SCHEMA, action_id, to_table
from simulator_adapters.atco import SyntheticAtco
from simulator_adapters.controllers import Controller, Decision, Observation

UNITS = {"heading": "deg", "altitude": "ft", "speed": "kt", "direct_to": "deg", "resume": ""}


class DaggerController(Controller):
    """A learned policy (``model:URI``) and the synthetic expert on the same observations: at each decision step
    the expert's decision is executed with probability ``beta``, the learner's otherwise. ``decide`` returns the
    executed clearances and, as truth, the expert's decision records (its labels) with who was in control and the
    learner's own decision on that conflict (``learner_aircraft`` -1 when it did not act, ``learner_type``,
    ``learner_value``, its probability of acting, ``learner_p_act``, and whether it was asked about that pair at all,
    ``learner_asked``). ``make_controller("dagger:URI", beta=0.5)``."""

    name = "dagger"

    def __init__(self, uri: str, beta: float = 0.0, act: str = "sample", expert: SyntheticAtco | None = None,
                 style: str = "session", action: str = "sample"):
        from simulator_adapters.model_controller import ModelController
        if not 0.0 <= float(beta) <= 1.0:
            raise ConfigError(f"dagger: beta (the expert's share of control) must lie in [0, 1], got {beta}")
        self.beta = float(beta)
        self.learner = ModelController(uri, act=act, style=style, action=action)   # see ModelController
        self.expert = expert or SyntheticAtco()
        self.name = f"dagger:{uri}"
        self.reset("", 0)

    @property
    def style(self) -> str:          # the session's true style (rollout metadata, ground truth)
        return self.expert.style

    def reset(self, scenario_name: str, seed: int) -> None:
        self.learner.reset(scenario_name, seed)
        self.expert.reset(scenario_name, seed)
        self.rng = np.random.default_rng([int(seed), zlib.crc32(scenario_name.encode()), 0xDA6])

    def decide(self, obs: Observation) -> Decision:
        proposal, handled = self.expert.propose(obs)
        self.learner.last_decisions = None
        learner = self.learner.decide(obs)
        asked = self.learner.last_decisions
        p_learner = {} if asked is None or asked.empty else dict(zip(
            map(frozenset, zip(asked["flight_id_1"], asked["flight_id_2"])), asked["p_act"].to_numpy(float)))
        expert_acts = bool(self.rng.random() < self.beta)
        executed = proposal.clearances if expert_acts else learner.clearances
        self.expert.commit(obs.sim_s, executed, handled if expert_acts else None)
        mine = {frozenset((c.flight_id, c.against)): c for c in learner.clearances}
        for r in proposal.truth:
            c = mine.get(frozenset((r["flight_id_1"], r["flight_id_2"])))
            r["in_control"] = "expert" if expert_acts else "learner"
            r["learner_aircraft"] = -1 if c is None else int(c.flight_id != r["flight_id_1"])
            r["learner_type"] = None if c is None else c.action_type
            r["learner_value"] = float("nan") if c is None else float(c.value)
            # the learner's P(act now) on this pair (0 where it was not asked: it cannot act there)
            pair = frozenset((r["flight_id_1"], r["flight_id_2"]))
            r["learner_asked"] = pair in p_learner
            r["learner_p_act"] = float(p_learner.get(pair, 0.0))
        return Decision(list(executed), truth=proposal.truth)


# ---------------------------------------------------------------------------------------------- labels and data
def label_log(truth: pd.DataFrame) -> pd.DataFrame:
    """The expert's decisions where it would act, as an action log (action contract, ``against_flight_id`` the
    other aircraft of the conflict, source ``simulator``, as the expert's demonstrations): the labels of the states the learner visited."""
    t = truth[truth["acted"].astype(bool) & truth["action_type"].notna() & (truth["aircraft"] >= 0)]
    first = (t["aircraft"] == 0).to_numpy()
    fid = np.where(first, t["flight_id_1"], t["flight_id_2"])
    other = np.where(first, t["flight_id_2"], t["flight_id_1"])
    out = pd.DataFrame({"time": pd.to_datetime(t["time"], utc=True).to_numpy(), "flight_id": fid,
                        "action_type": t["action_type"].to_numpy(), "value": t["value"].to_numpy(float)})
    out["time"] = pd.to_datetime(out["time"], utc=True)
    out.insert(0, "action_id", [action_id(f, tt, a) for f, tt, a in zip(out["flight_id"], out["time"],
                                                                          out["action_type"])])
    out["unit"] = out["action_type"].map(UNITS).fillna("")
    out["target_value"] = np.nan
    out["waypoint"] = None
    out["source"] = "simulator"
    out["confidence"] = 1.0
    out["against_flight_id"] = other
    return out[ACTION_SCHEMA.names].reset_index(drop=True)


def build_rollout_dataset(work: Path, base_spec: FeatureSpec, pipeline: PipelineConfig = PipelineConfig()) -> dict:
    """Rollouts written by ``simulate`` in ``work`` -> ``work/dataset`` (every sample in the train split), with
    the base data set's features (its dataset config and grid step), executed clearances as the features'
    history and the expert's labels (``work/labels.parquet``, linked in ``work/expert_labels``) as labels."""
    from simulator_adapters.demonstrations import build_dataset

    truth = pd.read_parquet(work / "expert_truth.parquet") if (work / "expert_truth.parquet").exists() else None
    if truth is None or truth.empty:
        raise DataError(f"{work}: the rollouts hold no expert decision (expert_truth.parquet); nothing to label")
    labels = label_log(truth)
    atomic_write_table(to_table(labels, ACTION_SCHEMA, "expert labels"), work / "labels.parquet")
    # the demonstrations' features; a data set that predates resume steps has none (models/serving.py reads it so)
    ds = pipeline.dataset.model_validate({"resume_samples": False, **(base_spec.config or {}), "split": "scenario",
                                         "test_fraction": 0.0,
                                         "val_fraction": 0.0})
    cfg = pipeline.model_copy(update={"dataset": ds, "resample": pipeline.resample.model_copy(
        update={"step_s": float(base_spec.step_s)})})
    summary = build_dataset(work, cfg, out=work / "dataset", labels_log=work / "labels.parquet", progress=False)
    if summary["spec_hash"] != base_spec.hash():
        raise DataError(f"{work}: the rollouts' features (spec {summary['spec_hash']}) differ from the demonstrations' "
                        f"({base_spec.hash()})")
    return {**summary, "expert_labels": len(labels)}


def aggregate(base: Path, extras: list[Path], out: Path) -> Path:
    """A data set folder whose train split is the base data set's train split plus every sample of ``extras``
    (rollout data sets with the same features); val and test are the base's (linked), and so are its
    normalisation statistics and the expert's truth beside it (for the ceilings)."""
    spec = FeatureSpec.load(base)
    want = spec.hash()
    out = reset_dir(out)
    train = out / "split=train"
    train.mkdir()
    names, keys, samples = [], list((spec.splits or {}).get("train", {}).get("keys", [])), 0
    sources = [("base", base, ("train",))] + [(f"x{i:02d}", e, ("train", "val", "test")) for i, e in enumerate(extras)]
    for tag, folder, splits in sources:
        if tag != "base":
            es = FeatureSpec.load(folder)
            if es.hash() != want:
                raise DataError(f"aggregate: {folder} has other features (spec {es.hash()}) than {base} ({want})")
            keys += [k for s in splits for k in (es.splits or {}).get(s, {}).get("keys", [])]
        for s in splits:
            for f in sorted((folder / f"split={s}").glob("*.parquet")):
                name = f"{tag}-{s}-{f.name}"
                (train / name).symlink_to(f.resolve())
                names.append(name)
    mark_complete(train, names)
    for s in ("val", "test"):
        (out / f"split={s}").symlink_to((base / f"split={s}").resolve())
    import pyarrow.parquet as pq
    samples = sum(pq.ParquetFile(train / n).metadata.num_rows for n in names)
    spec.splits = {**(spec.splits or {}), "train": {**(spec.splits or {}).get("train", {}), "keys": sorted(keys),
                                                    "samples": samples}}
    (out / "feature_spec.json").write_text(spec.to_json())
    truth = base.parent / "expert_truth.parquet"
    if truth.exists():
        link = out.parent / "expert_truth.parquet"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(truth.resolve())
    return out


# ---------------------------------------------------------------------------------------------- measures
def onpolicy_metrics(truth: pd.DataFrame) -> dict:
    """How the expert judges the learner's decisions on the states the learner itself drove into (the records of
    the steps the learner was in control of, conflicts only): the exact KL divergence between the expert's and the
    learner's probability of acting now (``onpolicy_act_kl``, nats per decision; needs ``learner_p_act``); at the
    (act, aircraft, type) level, the expert's NLL of the learner's sampled decisions beside that of its own sampled
    decisions on the same states (``onpolicy_nll_gap``: not a divergence; negative where the learner acts less
    often than the expert, since not acting is the likelier event); the act rates; and, where the learner acted, the
    expert's probability of its aircraft and of its type (expected agreement)."""
    if truth is None or truth.empty or "in_control" not in truth:
        return {"onpolicy_records": 0}
    t = truth[(truth["in_control"] == "learner") & (truth["kind"] == "conflict")]
    if t.empty:
        return {"onpolicy_records": 0}
    nll_l, nll_e, p_ac, p_ty = [], [], [], []
    for r in t.itertuples():
        joint = json.loads(r.joint) if isinstance(r.joint, str) else r.joint
        pa, la = float(r.p_act), int(r.learner_aircraft)
        nll_l.append(_decision_nll(pa, joint, la >= 0, la, r.learner_type))
        nll_e.append(_decision_nll(pa, joint, bool(r.acted), int(r.aircraft), r.action_type))
        if la >= 0:
            q_ac, q_ty = _choice_probs(joint, la, r.learner_type)
            p_ac.append(q_ac)
            p_ty.append(q_ty)
    out = {}
    if "learner_p_act" in t:       # exact: KL(expert's P(act) || learner's P(act)) per decision, nats
        pe = np.clip(t["p_act"].to_numpy(float), 1e-6, 1 - 1e-6)
        pl = np.clip(t["learner_p_act"].to_numpy(float), 1e-6, 1 - 1e-6)
        out["onpolicy_act_kl"] = float(np.mean(pe * np.log(pe / pl) + (1 - pe) * np.log((1 - pe) / (1 - pl))))
        out["onpolicy_learner_p_act"] = float(pl.mean())
    if "learner_asked" in t:       # the expert considers a pair the learner was not asked about: it cannot act there
        out["onpolicy_asked_share"] = float(t["learner_asked"].astype(bool).mean())
    return {**out, "onpolicy_records": len(t), "onpolicy_expert_nll_of_learner": float(np.mean(nll_l)),
            "onpolicy_expert_nll_of_expert": float(np.mean(nll_e)),
            "onpolicy_nll_gap": float(np.mean(nll_l) - np.mean(nll_e)),
            "onpolicy_learner_act_rate": float(np.mean(t["learner_aircraft"].to_numpy() >= 0)),
            "onpolicy_expert_act_rate": float(t["p_act"].mean()),
            "onpolicy_aircraft_agreement": float(np.mean(p_ac)) if p_ac else float("nan"),
            "onpolicy_type_agreement": float(np.mean(p_ty)) if p_ty else float("nan")}


def _choice_probs(joint: list, aircraft: int, kind: object) -> tuple[float, float]:
    """The expert's P(aircraft | act) and P(type | act, aircraft) from its joint over (aircraft, type, value)."""
    on_ac = sum(j[3] for j in joint if j[0] == aircraft)
    on_ty = sum(j[3] for j in joint if j[0] == aircraft and j[1] == kind)
    return on_ac, (on_ty / on_ac if on_ac > 0 else 0.0)


def _decision_nll(p_act: float, joint: list, acted: bool, aircraft: int, kind: object) -> float:
    if not acted:
        return -math.log(max(1.0 - p_act, 1e-12))
    q_ac, q_ty = _choice_probs(joint, aircraft, kind)
    return -math.log(max(p_act * q_ac * q_ty, 1e-12))


def rollout_metrics(work: Path) -> dict:
    """Losses of separation, conflicts and clearances of the rollouts in ``work`` (atc-il detection on the true
    tracks, as simeval counts them), and the expert's share of the decision steps."""
    from pipelines.conflicts import build_episodes, detect

    truth = pd.read_parquet(work / "expert_truth.parquet")
    clear = pd.read_parquet(work / "clearances.parquet")
    true = work / "true_tracks"                # where tracks/ holds the controller's noisy radar picture
    if not true.exists() and (work / "episodes").exists():
        eps = read_table(work / "episodes", EPISODE_SCHEMA)
    else:
        tr = read_table(true if true.exists() else work / "tracks", TRACK_SCHEMA)
        eps, _ = build_episodes(detect(tr, progress=False), tr)
    steps = truth.drop_duplicates(["scenario", "sim_s"])
    return {"rollout_conflicts": len(eps), "rollout_los": int(eps["los"].sum()), "rollout_clearances": len(clear),
            "expert_control_share": float((steps["in_control"] == "expert").mean()) if len(steps) else float("nan"),
            **onpolicy_metrics(truth)}


# ---------------------------------------------------------------------------------------------- the loop
@dataclass(frozen=True)
class DaggerConfig:
    iterations: int = 3
    scenarios: int = 10          # new scenarios rolled out per iteration
    beta: float = 0.5            # the expert's share of control at iteration 1
    beta_decay: float = 0.5      # beta_i = beta * beta_decay ** (i - 1)
    workers: int = 2             # parallel BlueSky processes for the rollouts
    seed: int = 1000             # iteration i rolls out scenario_set(scenarios, seed + i)
    warm_start: bool = True      # retrain from the last policy's weights (else from scratch)
    duration_s: float = 1800.0
    density: float = 4.0
    conflicts: int = 8

    def __post_init__(self):
        if self.iterations < 1 or self.scenarios < 1:
            raise ConfigError("dagger: iterations and scenarios per iteration must be at least 1")
        if not (0.0 <= self.beta <= 1.0 and 0.0 <= self.beta_decay <= 1.0):
            raise ConfigError(f"dagger: beta ({self.beta}) and beta_decay ({self.beta_decay}) must lie in [0, 1]")

    def beta_at(self, i: int) -> float:
        return self.beta * self.beta_decay ** (i - 1)


def offline_metrics(best_dir: str, data: Path) -> dict:
    from models.evaluate import evaluate
    from models.policy import load_policy
    m = evaluate(load_policy(best_dir), data, "test", n_samples=16)
    out = {k: m[k] for k in ("nll_discrete", "act_nll", "aircraft_accuracy", "type_accuracy", "act_ece")
           if isinstance(m.get(k), (int, float))}
    out.update({f"gap_{k}": v for k, v in (m.get("gap") or {}).items() if isinstance(v, (int, float))})
    return out


class _DaggerRun:
    """The per-iteration record: dagger_report.json beside the iterations, and an MLflow run when tracking."""

    def __init__(self, out: Path, tracking_uri: str | None | bool, cfg: DaggerConfig, base: Path):
        self.out, self.rows = out, cast(list[dict], [])
        self.client: Any = None
        self.run_id = ""
        if tracking_uri is not False:
            from mlflow.tracking import MlflowClient

            from models.registry import EXPERIMENT, setup
            from models.registry import tracking_uri as default_uri
            uri = setup(tracking_uri if isinstance(tracking_uri, str) else default_uri(base.parent))
            self.client = MlflowClient(uri)
            exp = self.client.get_experiment_by_name(EXPERIMENT)
            if exp is None:
                raise ConfigError(f"dagger: MLflow experiment {EXPERIMENT!r} is missing in {uri}")
            run = self.client.create_run(exp.experiment_id, run_name="dagger", tags={"atc_il.kind": "dagger"})
            self.run_id = run.info.run_id
            for k, v in asdict(cfg).items():
                self.client.log_param(self.run_id, f"dagger.{k}", v)
            self.client.log_param(self.run_id, "dagger.base_data", str(base))

    def log(self, row: dict) -> None:
        self.rows.append(row)
        write_json({"iterations": self.rows, "mlflow_run_id": self.run_id}, self.out / "dagger_report.json")
        if self.client:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.client.log_metric(self.run_id, k, float(v), step=int(row["iteration"]))

    def tag_training(self, run_id: str | None, i: int) -> None:
        if self.client and run_id:
            self.client.set_tag(run_id, "dagger.iteration", str(i))
            self.client.set_tag(run_id, "dagger.run_id", self.run_id)

    def end(self, status: str) -> None:
        if self.client:
            self.client.set_terminated(self.run_id, status)


def run_dagger(model_config, base_data: str | Path, out: str | Path, cfg: DaggerConfig = DaggerConfig(), *,
               init: str | Path | None = None, pipeline: PipelineConfig = PipelineConfig(),
               tracking_uri: str | None | bool = None, progress: bool | None = None,
               log: Callable[[str], None] = print) -> dict:
    """DAgger from the demonstrations' data set ``base_data`` (expert demonstrations, split by scenario) into
    ``out``: ``iter-00`` (the behavioural-cloning policy, trained here unless ``init`` is a saved policy folder)
    then ``iter-NN`` per iteration (rollouts/, data/dataset, run/best). Returns the report (also
    ``out/dagger_report.json``); the last policy is ``report["policy"]``."""
    from models.registry import tracking_uri as default_uri
    from models.train import train
    from simulator_adapters.demonstrations import simulate

    base = Path(base_data)
    spec = FeatureSpec.load(base)
    # one MLflow store for every iteration's training (train's own default follows each data set's folder)
    tracking_uri = tracking_uri if tracking_uri is False else (tracking_uri or default_uri(base.parent))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rec = _DaggerRun(out, tracking_uri, cfg, base)
    status = "FAILED"
    try:
        t0 = time.perf_counter()
        if init is None:
            s = train(model_config, base, out / "iter-00" / "run", resume=False, tracking_uri=tracking_uri,
                      progress=progress)
            policy, run_id = s["best_dir"], s.get("run_id")
        else:
            policy, run_id = str(init), None
        rec.tag_training(run_id, 0)
        row0 = {"iteration": 0, "beta": 1.0, "policy": policy, "train_samples": spec_samples(base),
                "wall_s": round(time.perf_counter() - t0, 1), **offline_metrics(policy, base)}
        rec.log(row0)
        log(_line(row0))
        extras: list[Path] = []
        for i in range(1, cfg.iterations + 1):
            t = time.perf_counter()
            it = out / f"iter-{i:02d}"
            beta = cfg.beta_at(i)
            sim = it / "rollouts"
            rep = simulate(sim, cfg.scenarios, f"dagger:{Path(policy).resolve()}", seed=cfg.seed + i,
                           workers=cfg.workers, progress=progress, controller_kwargs={"beta": beta},
                           scenario_kwargs={"duration_s": cfg.duration_s, "density": cfg.density,
                                            "conflicts": cfg.conflicts})
            built = build_rollout_dataset(sim, spec, pipeline)
            roll = rollout_metrics(sim)
            extras.append(sim / "dataset")
            data = aggregate(base, extras, it / "data" / "dataset")
            s = train(model_config, data, it / "run", resume=False, tracking_uri=tracking_uri, progress=progress,
                      init=policy if cfg.warm_start else None)
            rec.tag_training(s.get("run_id"), i)
            policy = s["best_dir"]
            row = {"iteration": i, "beta": beta, "policy": policy, "rollout_scenarios": rep["scenarios"],
                   "rollout_samples": built["samples"], "expert_labels": built["expert_labels"],
                   "train_samples": spec_samples(data), **roll, **offline_metrics(policy, data),
                   "wall_s": round(time.perf_counter() - t, 1)}
            rec.log(row)
            log(_line(row))
        status = "FINISHED"
    finally:
        rec.end(status)
    return {"iterations": rec.rows, "policy": policy, "mlflow_run_id": rec.run_id or None, "out": str(out)}


def spec_samples(data: Path) -> int:
    return int(((FeatureSpec.load(data).splits or {}).get("train") or {}).get("samples", 0))


def _line(r: dict) -> str:
    keys = ("beta", "train_samples", "rollout_los", "rollout_clearances", "onpolicy_nll_gap", "nll_discrete",
            "gap_discrete_nll", "type_accuracy", "aircraft_accuracy")
    return f"dagger iteration {r['iteration']}: " + ", ".join(
        f"{k} {r[k]:.4g}" if isinstance(r[k], float) else f"{k} {r[k]}" for k in keys if k in r)


__all__ = ["DaggerConfig", "DaggerController", "aggregate", "build_rollout_dataset", "label_log", "offline_metrics", "onpolicy_metrics",
           "run_dagger"]
