"""Adversarial imitation in BlueSky: the simulator side of :class:`models.adversarial.AdversarialTrainer`.

Per iteration (:func:`run_adversarial`, ``atc-il adversarial``): the current policy (saved as a policy folder)
drives ``scenarios`` new scenarios in parallel BlueSky processes (:func:`simulator_adapters.parallel.run_parallel`),
through :class:`RecordingController`; the discriminator is trained on the demonstrations' train split against the
learner's decision steps; the rewards, GAE and PPO update the policy (model side). The policy is warm-started from
a behavioural-cloning policy folder (``init``), saved after every iteration with :meth:`Policy.save` (so it runs
unchanged in ``simeval --controller model:DIR``, ``predict`` and the service) and the iteration's metrics go to
``adversarial_report.json`` and to an MLflow run (``atc_il.kind = adversarial``; step = iteration), with the last
policy folder logged as the run's ``policy`` artifact.

What a rollout records (:class:`RecordingController`, the learner in control): at every decision step and for
every pair the policy is asked about (the conflicts shown, and the resume steps of its own clearances, as the model
controller asks), the observation tensors built by the data set's feature builder, the decision sampled from the
policy (act or not, aircraft, type, value: one joint draw, :meth:`PolicyInterface.sample`) and its
log-probability under that policy. The decision is executed as the model controller executes its own (at most one
clearance per aircraft per step; a sampled ``direct_to``, which needs a waypoint the model does not choose, is
recorded but not issued and counted in ``skipped``). For the state-only discriminator, each record's next state is
the same pair's decision-time features one decision step later: from its own sample when the pair is asked again,
else from features built for the pair alone (both aircraft still on the radar); a record with neither (an aircraft
left) has no next state and a state-only reward of D on its own decision-time state.

With the InfoGAIL code (``info.weight > 0``; a policy with a style code, :mod:`models.infogail`) every session
(scenario) draws one code uniformly from its seed and the learner samples, and is scored, given that code; the
records carry it (``code``; -1 without one).
"""

from __future__ import annotations

import json
import math
import shutil
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from atc_il.errors import ConfigError
from atc_il.io import write_json
from atc_il.schemas import ACTION_TYPES
from models.adversarial import AdversarialConfig, AdversarialTrainer, Transitions, load_expert
from models.discriminator import DiscBatch, NextStates
from models.infogail import code_count, with_code
from models.interface import OBS_KEYS, Decisions, Observations
from models.policy import Policy
from pipelines.features import Samples, TrackIndex
from simulator_adapters.controllers import Clearance, Decision, Observation
from simulator_adapters.model_controller import ModelController


class RecordingController(ModelController):
    """The learner in control, recording its decision steps for PPO (see the module's docstring)."""

    name = "adversarial"

    def __init__(self, uri: str, info: bool = False):
        self.info = bool(info)
        super().__init__(uri, act="sample")
        self.policy = self.predictor.policy
        self.k = code_count(self.policy) if self.info else 0
        self.name = f"adversarial:{uri}"

    def reset(self, scenario_name: str, seed: int) -> None:
        super().reset(scenario_name, seed)
        self.scenario = scenario_name
        self.gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + zlib.crc32(scenario_name.encode()))
        self.rows: dict[str, list] = {k: [] for k in (*OBS_KEYS, "act", "aircraft", "type", "value", "log_prob",
                                                     "seq", "step", "code")}
        self.next_pair: dict[int, np.ndarray] = {}
        self.next_geom: dict[int, np.ndarray] = {}
        self.next_decided: dict[int, bool] = {}
        self.prev: dict[tuple[str, str], tuple[int, pd.Timestamp]] = {}
        self.n, self.step_i = 0, 0
        # the InfoGAIL code of this session, drawn uniformly from (seed, scenario)
        k = getattr(self, "k", 0)
        self.code = int(np.random.default_rng([int(seed), zlib.crc32(scenario_name.encode()), 0x1F0]).integers(k)) \
            if k else -1

    def decide(self, obs: Observation) -> Decision:
        samples, _ = self.step_samples(obs)
        self.step_i += 1
        prev, self.prev = self.prev, {}
        if len(obs.radar) < 2 or (samples.empty and not prev):
            return Decision()
        asked = set(zip(samples["flight_id_1"], samples["flight_id_2"]))
        on = set(obs.radar["flight_id"])
        follow = [(k, t0) for k, (_, t0) in prev.items() if k not in asked and k[0] in on and k[1] in on]
        n = len(samples)
        if follow:
            samples = pd.concat([samples, pd.DataFrame({
                "time": obs.time, "flight_id_1": [k[0] for k, _ in follow], "flight_id_2": [k[1] for k, _ in follow],
                "first_detection": [t0 for _, t0 in follow]})], ignore_index=True)
        if samples.empty:
            return Decision()
        tracks = pd.concat(list(self.frames), ignore_index=True)
        feats = self.predictor.features(Samples.of(samples), TrackIndex.build(tracks, self.predictor.step_s),
                                        obs.cleared, self.plan_rows(obs.flight_plans))
        keys = list(zip(samples["flight_id_1"], samples["flight_id_2"]))
        for j, k in enumerate(keys):
            if k in prev:
                r = prev[k][0]
                self.next_pair[r] = feats["pair"][j, -1]
                self.next_geom[r] = feats["geometry"][j, -1]
                self.next_decided[r] = j < n
        if n == 0:
            return Decision()
        o = Observations.from_dict({k: v[:n] for k, v in feats.items()})
        with torch.no_grad():
            ctx = self.policy.encode(o)
            if self.code >= 0:
                ctx = with_code(ctx, torch.full((n,), self.code), self.k)
            s = self.policy.sample(ctx, 1, self.gen)
            dec = Decisions(s.act[:, 0], s.aircraft[:, 0], s.type[:, 0], s.value[:, 0])
            lp = self.policy.log_prob(ctx, dec)
        for key in OBS_KEYS:
            self.rows[key].append(np.asarray(feats[key][:n], dtype=np.float32))
        act, ac, ty, va = (x.cpu().numpy() for x in (dec.act, dec.aircraft, dec.type, dec.value))
        for key, v in (("act", act), ("aircraft", ac), ("type", ty), ("value", va), ("log_prob", lp.cpu().numpy())):
            self.rows[key].append(v)
        kinds = ["conflict" if k in self.first_shown else "resume" for k in keys[:n]]
        self.rows["seq"].extend(f"{self.scenario}|{kind}|{a}|{b}" for kind, (a, b) in zip(kinds, keys[:n]))
        self.rows["step"].append(np.full(n, self.step_i, dtype=np.int64))
        self.rows["code"].append(np.full(n, self.code, dtype=np.int64))
        firsts = samples["first_detection"].to_numpy()
        self.prev = {k: (self.n + j, firsts[j]) for j, k in enumerate(keys[:n])}
        self.n += n
        out, used = [], set()
        for j in np.flatnonzero(act == 1):
            f1, f2 = keys[j]
            fid, other = (f1, f2) if ac[j] == 0 else (f2, f1)
            kind = ACTION_TYPES[int(ty[j])]
            if fid in used:
                continue
            if kind == "direct_to":
                self.skipped += 1
                continue
            used.add(fid)
            out.append(Clearance(fid, kind, 0.0 if kind == "resume" else float(va[j]), against=other))
        return Decision(out)

    def records(self) -> dict:
        """The recorded decision steps as arrays (next states zero where ``has_next`` is False; :func:`transitions`
        puts the record's own decision-time state there)."""
        n = self.n
        if n == 0:
            return {"n": 0}
        out: dict[str, Any] = {k: np.concatenate(self.rows[k]) for k in (*OBS_KEYS, "act", "aircraft", "type", "value",
                                                                       "log_prob", "step", "code")}
        out["seq"] = list(self.rows["seq"])
        f_pose, f_geom = out["pair"].shape[-1], out["geometry"].shape[-1]
        out["next_pair"] = np.stack([self.next_pair.get(i, np.zeros((2, f_pose), np.float32)) for i in range(n)])
        out["next_geometry"] = np.stack([self.next_geom.get(i, np.zeros(f_geom, np.float32)) for i in range(n)])
        out["has_next"] = np.array([i in self.next_pair for i in range(n)])
        out["next_decided"] = np.array([self.next_decided.get(i, False) for i in range(n)])
        out["n"] = n
        return out


# ---------------------------------------------------------------------------------------------- rollouts
@dataclass(frozen=True)
class RolloutJob:
    policy_dir: str
    scenario_json: str
    seed: int
    info: bool = False            # act under a session's InfoGAIL code


def _los(tracks: pd.DataFrame) -> tuple[int, int]:
    """(conflicts, losses of separation) on the true tracks, as simeval counts them."""
    from pipelines.conflicts import build_episodes, detect
    if tracks.empty:
        return 0, 0
    eps, _ = build_episodes(detect(tracks, progress=False), tracks)
    return len(eps), int(eps["los"].sum()) if len(eps) else 0


def run_rollouts(jobs: list[RolloutJob]) -> list[dict]:
    """Several scenarios on one BlueSky process (picklable, for run_parallel): each one's records and meta."""
    from simulator_adapters.bluesky_sim import BlueSkySim
    from simulator_adapters.rollout import rollout
    from simulator_adapters.scenarios import Scenario
    out = []
    with BlueSkySim() as sim:
        ctl: RecordingController | None = None
        for job in jobs:
            if ctl is None or ctl.uri != job.policy_dir or ctl.info != job.info:
                ctl = RecordingController(job.policy_dir, info=job.info)
            res = rollout(Scenario.from_json(job.scenario_json), ctl, sim, seed=job.seed)
            conflicts, los = _los(res.tracks)
            out.append({"records": ctl.records(), "sim_s": float(res.meta["sim_s"]), "wall_s": res.meta["wall_s"],
                        "clearances": len(res.actions), "skipped": ctl.skipped, "conflicts": conflicts, "los": los,
                        "rejected": len(res.meta["rejected_clearances"])})
    return out


def transitions(results: list[dict]) -> Transitions:
    """Every scenario's records as one batch of :class:`Transitions` (sequence ids numbered across scenarios)."""
    recs = [r["records"] for r in results if r["records"]["n"]]
    if not recs:
        raise ConfigError("adversarial: the rollouts recorded no decision step (no conflict was shown)")

    def cat(k):
        return torch.from_numpy(np.concatenate([r[k] for r in recs]))
    obs = Observations(*(cat(k).float() for k in OBS_KEYS))
    dec = Decisions(cat("act").long(), cat("aircraft").long(), cat("type").long(), cat("value").float())
    seq = torch.from_numpy(pd.factorize(pd.Series([s for r in recs for s in r["seq"]]))[0].astype(np.int64))
    has = cat("has_next").bool()
    own = NextStates.at_decision(obs)          # where a record has no next state: its own decision-time state
    nxt = NextStates(torch.where(has[:, None, None], cat("next_pair").float(), own.pair),
                     torch.where(has[:, None], cat("next_geometry").float(), own.geometry))
    batch = DiscBatch(obs, dec, nxt, has)
    code = cat("code").long()
    return Transitions(batch, cat("log_prob").float(), seq, cat("step").long(), has & cat("next_decided").bool(),
                       code if bool((code >= 0).all()) else None)


@dataclass(frozen=True)
class RolloutPlan:
    scenarios: int = 4            # new scenarios rolled out per iteration
    workers: int = 2              # parallel BlueSky processes
    seed: int = 2000              # iteration i rolls out scenario_set(scenarios, seed + i)
    duration_s: float = 1800.0
    density: float = 4.0
    conflicts: int = 8

    def __post_init__(self):
        if self.scenarios < 1 or self.workers < 1:
            raise ConfigError("adversarial: scenarios per iteration and workers must be at least 1")


class BlueSkyAdversarialTrainer(AdversarialTrainer):
    """:class:`AdversarialTrainer` whose rollouts run in BlueSky; saves the policy after every iteration into
    ``out/iter-NN/policy`` and tracks the iteration (``_Record``)."""

    def __init__(self, policy: Policy, expert: DiscBatch, cfg: AdversarialConfig, plan: RolloutPlan, out: Path,
                 init: str | Path, record: _Record):
        super().__init__(policy, expert, cfg)
        self.plan, self.out, self.record = plan, out, record
        self.policy_dir = str(Path(init).resolve())

    def collect(self, iteration: int) -> tuple[Transitions, dict]:
        from simulator_adapters.parallel import run_parallel
        from simulator_adapters.scenarios import scenario_set
        p = self.plan
        scs = scenario_set(p.scenarios, p.seed + iteration, duration_s=p.duration_s, density=p.density,
                           conflicts=p.conflicts)
        jobs = [RolloutJob(self.policy_dir, sc.to_json(), sc.seed, self.posterior is not None) for sc in scs]
        t0 = time.perf_counter()
        n = max(1, min(p.workers, len(jobs)))
        batches = [jobs[i::n] for i in range(n) if jobs[i::n]]
        results = [r for b in run_parallel(run_rollouts, batches, workers=n) for r in b]
        wall = time.perf_counter() - t0
        sim_s = sum(r["sim_s"] for r in results)
        info = {"rollout_scenarios": len(results), "rollout_sim_s": sim_s, "rollout_wall_s": round(wall, 2),
                "sim_seconds_per_wall_second": sim_s / max(wall, 1e-9),
                "rollout_conflicts": sum(r["conflicts"] for r in results),
                "rollout_los": sum(r["los"] for r in results),
                "rollout_clearances": sum(r["clearances"] for r in results),
                "rollout_skipped_direct_to": sum(r["skipped"] for r in results),
                "rollout_rejected_clearances": sum(r["rejected"] for r in results)}
        return transitions(results), info

    def after_iteration(self, iteration: int, row: dict) -> None:
        d = self.out / f"iter-{iteration:02d}"
        self.policy.save(d / "policy")
        torch.save({k: v.detach().cpu() for k, v in self.disc.state_dict().items()}, d / "discriminator.pt")
        self.policy_dir = str((d / "policy").resolve())
        row["policy"] = self.policy_dir
        self.record.log(row)


class _Record:
    """adversarial_report.json beside the iterations, and an MLflow run when tracking."""

    def __init__(self, out: Path, tracking_uri: str | None | bool, params: dict):
        self.out, self.rows, self.run_id = out, cast(list[dict], []), ""
        self.client: Any = None
        if tracking_uri is not False:
            from mlflow.tracking import MlflowClient

            from models.registry import EXPERIMENT, setup
            uri = setup(tracking_uri if isinstance(tracking_uri, str) else None)
            self.client = MlflowClient(uri)
            exp = self.client.get_experiment_by_name(EXPERIMENT)
            if exp is None:
                raise ConfigError(f"adversarial: MLflow experiment {EXPERIMENT!r} is missing in {uri}")
            run = self.client.create_run(exp.experiment_id, run_name="adversarial",
                                         tags={"atc_il.kind": "adversarial"})
            self.run_id = run.info.run_id
            for k, v in params.items():
                self.client.log_param(self.run_id, k, v)

    def log(self, row: dict) -> None:
        self.rows.append(row)
        write_json({"iterations": self.rows, "mlflow_run_id": self.run_id}, self.out / "adversarial_report.json")
        if self.client:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.client.log_metric(self.run_id, k, float(v), step=int(row["iteration"]))

    def end(self, status: str, policy_dir: str | None) -> None:
        if self.client:
            if policy_dir:
                self.client.log_artifacts(self.run_id, policy_dir, "policy")
                self.client.set_tag(self.run_id, "policy_dir", policy_dir)
            self.client.set_terminated(self.run_id, status)


def run_adversarial(init: str | Path, data: str | Path, out: str | Path, cfg: AdversarialConfig = AdversarialConfig(),
                    plan: RolloutPlan = RolloutPlan(), iterations: int = 3, tracking_uri: str | None | bool = None,
                    log: Callable[[str], None] = print) -> dict:
    """Adversarial imitation from the behavioural-cloning policy folder ``init`` against the demonstrations' data
    set ``data`` (its train split) into ``out``; returns the report (also ``out/adversarial_report.json``); the
    last policy folder is ``report["policy"]`` (also copied to ``out/policy``)."""
    from models.policy import load_policy
    if iterations < 1:
        raise ConfigError("adversarial: iterations must be at least 1")
    policy = load_policy(init)
    expert = load_expert(data, "train", expect=policy.spec)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    params = {**{f"adversarial.{k}": v for k, v in asdict(plan).items()}, "adversarial.iterations": iterations,
              "adversarial.init": str(init), "adversarial.data": str(data),
              **{f"adversarial.{k}": json.dumps(v) if isinstance(v, dict) else v
                 for k, v in cfg.model_dump().items()}}
    rec = _Record(out, tracking_uri, params)
    status, last = "FAILED", None
    try:
        trainer = BlueSkyAdversarialTrainer(policy, expert, cfg, plan, out, init, rec)
        trainer.train(iterations, log=log)
        last = trainer.policy_dir
        shutil.rmtree(out / "policy", ignore_errors=True)
        shutil.copytree(last, out / "policy")
        status = "FINISHED"
    finally:
        rec.end(status, str(out / "policy") if status == "FINISHED" else None)
    return {"iterations": rec.rows, "policy": str(out / "policy"), "mlflow_run_id": rec.run_id or None,
            "out": str(out)}


__all__ = ["BlueSkyAdversarialTrainer", "RecordingController", "RolloutJob", "RolloutPlan", "run_adversarial",
           "run_rollouts", "transitions"]
