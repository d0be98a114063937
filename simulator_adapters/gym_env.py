"""The learner's side of the closed loop as a Gymnasium environment: ``atc-il/ConflictResolution-v0``.

One episode is one scenario in BlueSky, one step one decision step of the closed loop
(:class:`simulator_adapters.rollout.ClosedLoop`, the same stepper as :func:`~simulator_adapters.rollout.rollout`:
default every 5 s). So that any RL or IL library (Stable-Baselines3, imitation, ...) can be plugged into
atc-il's scenarios and expert::

    import gymnasium as gym
    import simulator_adapters.gym_env  # noqa: F401  (registers the id)
    env = gym.make("atc-il/ConflictResolution-v0", scenario_kwargs={"duration_s": 900}, max_conflicts=8)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(info["expert_action"])   # follow the expert

Observation (a ``Dict`` of fixed shapes): for up to ``max_conflicts`` conflicts in view (the pairs in conflict
on the noisy radar picture, as the synthetic expert sees them: most urgent first, by time to CPA), the
observation-history tensors of the data set's feature spec (:func:`pipelines.features.feature_spec` for the
env's :class:`~atc_il.config.DatasetConfig`: ``pair``, ``neighbours``, ``geometry``, ``clearances``, each with
a leading slot axis), built with :func:`pipelines.features.build_features` on the last H radar pictures, as the
model controller builds them (unnormalised, as the data set stores them, so a trained atc-il policy reads
them); empty slots are zeros and ``mask`` (MultiBinary) marks the valid ones. Conflicts beyond
``max_conflicts`` are not in the observation: they are counted in ``info["conflicts_dropped"]`` and named in
``info["dropped_pairs"]``. The pairs of the slots are in ``info["pairs"]`` (flight_id_1 < flight_id_2).

Action (a ``Dict``, one hybrid decision per slot): ``act`` (MultiBinary: issue a clearance for this conflict
now), ``aircraft`` (MultiBinary: 0 = flight_id_1, 1 = flight_id_2), ``type`` (MultiDiscrete over
:data:`ACTION_KINDS`: heading, altitude, speed, resume) and ``value`` (Box, the signed change in the type's
unit as in :class:`~simulator_adapters.controllers.Clearance`: deg + = right, ft + = climb, kt + = faster;
clipped to the type's limit in :class:`ValueLimits`; ignored for resume). Acts on empty slots are ignored
(``info["acts_on_padding"]``); at most one clearance per aircraft per step, as the model controller issues
them (the first slot wins; the others are counted in ``info["skipped_same_aircraft"]``); a clearance BlueSky
rejects is counted in ``info["rejected"]``. Aircraft that are no longer in a conflict have no slot, so no
resume can be sent to them; with ``expert_resumes=True`` the env issues the shadow expert's resumes for them.

Reward (:class:`RewardConfig`): ``los`` (default -1) per pair newly in loss of separation on the true state
(in LoS now and not at the previous decision step; atc-il's detection with the rollout's ConflictConfig),
``clearance`` (default -0.05) per clearance issued and ``rejected`` (default -0.05) per clearance BlueSky
rejected. ``terminated`` is always False; ``truncated`` is True once the scenario's duration is reached.

Expert (``expert=True``): the synthetic expert (:class:`~simulator_adapters.atco.SyntheticAtco`) runs in shadow
on the same observation at every step (:meth:`~simulator_adapters.atco.SyntheticAtco.propose`), and its memory
(who was cleared, which conflicts are handled) follows the clearances actually executed
(:meth:`~simulator_adapters.atco.SyntheticAtco.commit`), not its proposals. ``info["expert"]`` has per slot its
exact ``p_act``, ``p_aircraft_1`` and ``joint`` distribution (aircraft, type, value, probability given acting)
and its sampled decision; ``info["expert_action"]`` is that decision in the action space's format (a DAgger
label, or an action to follow). A conflict the expert does not consider at this step (handled: cleared within
``recheck_s``; or one of its aircraft is cleared for a more urgent conflict in its own decision) has
``considered`` = 0 and ``p_act`` = 0. ``info["expert"]["resumes"]`` lists its resume decisions (aircraft past
their conflicts, which no slot addresses).

Seeding: ``reset(seed=...)`` seeds the env's generator, which picks the scenario (from
``scenario_set(n_scenarios, scenario_seed, **scenario_kwargs)``, or the ``scenarios`` given) and the loop's
seed (radar noise, BlueSky's seed, the expert's style and draws); ``options={"scenario": i, "loop_seed": s}``
chooses them. ``close()`` stops the BlueSky process the env started (not a ``sim`` passed in).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
from gymnasium import spaces

from atc_il.config import DatasetConfig
from atc_il.errors import SimulatorError
from atc_il.schemas import ACTION_SCHEMA, conform
from pipelines.conflicts import detect_snapshot
from pipelines.features import TrackIndex, build_features, feature_spec
from simulator_adapters.atco import AtcoParams, SyntheticAtco
from simulator_adapters.bluesky_sim import BlueSkySim
from simulator_adapters.controllers import Clearance, Decision, Observation, flight_plan_rows
from simulator_adapters.rollout import ClosedLoop, RolloutConfig, RolloutResult
from simulator_adapters.scenarios import Scenario, scenario_set

ENV_ID = "atc-il/ConflictResolution-v0"
ACTION_KINDS = ("heading", "altitude", "speed", "resume")     # the action types the synthetic expert uses
TENSORS = ("pair", "neighbours", "geometry", "clearances")


@dataclass(frozen=True)
class RewardConfig:
    """Reward weights: per pair newly in loss of separation (true state), per clearance issued, per rejected."""
    los: float = -1.0
    clearance: float = -0.05
    rejected: float = -0.05


@dataclass(frozen=True)
class ValueLimits:
    """The largest |value| issued per type (the action's value is clipped to it); the Box spans the largest."""
    heading_deg: float = 90.0
    altitude_ft: float = 4000.0
    speed_kt: float = 60.0

    def of(self, kind: str) -> float:
        return {"heading": self.heading_deg, "altitude": self.altitude_ft, "speed": self.speed_kt}.get(kind, 0.0)


class ConflictResolutionEnv(gym.Env):
    """Conflict resolution in BlueSky with padded conflict slots (see the module doc for the spaces)."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, scenario_kwargs: dict | None = None, n_scenarios: int = 16, scenario_seed: int = 0,
                 scenarios: Sequence[Scenario] | None = None, dataset: DatasetConfig = DatasetConfig(),
                 max_conflicts: int = 8, rollout: RolloutConfig = RolloutConfig(),
                 reward: RewardConfig = RewardConfig(), limits: ValueLimits = ValueLimits(),
                 expert: bool = True, expert_params: AtcoParams = AtcoParams(), expert_style: str | None = None,
                 expert_resumes: bool = False, sim: BlueSkySim | None = None, render_mode: str | None = None):
        if max_conflicts < 1:
            raise ValueError(f"max_conflicts must be at least 1, got {max_conflicts}")
        if expert_resumes and not expert:
            raise ValueError("expert_resumes=True needs expert=True (the resumes are the shadow expert's)")
        if render_mode is not None:
            raise ValueError(f"render_mode {render_mode!r} is not supported (none is)")
        self.scenarios = list(scenarios) if scenarios is not None else \
            scenario_set(n_scenarios, scenario_seed, **(scenario_kwargs or {}))
        if not self.scenarios:
            raise ValueError("no scenario to run (n_scenarios=0 or an empty scenarios list)")
        self.dataset, self.cfg, self.reward_cfg, self.limits = dataset, rollout, reward, limits
        self.max_conflicts = n = int(max_conflicts)
        self.spec_features = feature_spec(dataset, rollout.decision_dt_s)
        self._shapes = {k: (n, *self.spec_features["tensors"][k]["shape"]) for k in TENSORS}
        self.observation_space = spaces.Dict(
            {k: spaces.Box(-np.inf, np.inf, s, np.float32) for k, s in self._shapes.items()}
            | {"mask": spaces.MultiBinary(n)})
        vmax = max(limits.heading_deg, limits.altitude_ft, limits.speed_kt)
        self.action_space = spaces.Dict({"act": spaces.MultiBinary(n), "aircraft": spaces.MultiBinary(n),
                                         "type": spaces.MultiDiscrete([len(ACTION_KINDS)] * n),
                                         "value": spaces.Box(-vmax, vmax, (n,), np.float32)})
        self.render_mode = render_mode
        self.expert = SyntheticAtco(expert_params, style=expert_style) if expert else None
        self.expert_resumes = expert_resumes
        self._sim, self._own_sim = sim, sim is None
        self.loop: ClosedLoop | None = None
        self._proposal: tuple[Decision, list[tuple[str, str]]] | None = None
        self._pairs: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        options = options or {}
        i = options.get("scenario")
        i = int(self.np_random.integers(len(self.scenarios))) if i is None else int(i)
        loop_seed = options.get("loop_seed")
        loop_seed = int(self.np_random.integers(2**31 - 1)) if loop_seed is None else int(loop_seed)
        if self._sim is None:
            self._sim = BlueSkySim(self.cfg.sim)
        scenario = self.scenarios[i]
        self.loop = ClosedLoop(scenario, self._sim, self.cfg, seed=loop_seed)
        self.loop.reset()
        if self.expert is not None:
            self.expert.reset(scenario.name, loop_seed)
        self._plan_rows = flight_plan_rows(self.loop.plans)
        self._frames: deque = deque(maxlen=self.dataset.history_steps)
        self._first: dict[tuple[str, str], pd.Timestamp] = {}
        self._los: set = set()
        self._los_total = 0
        obs, info = self._observe()
        info.update(scenario_index=i, loop_seed=loop_seed)
        return obs, info

    def step(self, action: dict) -> tuple[dict, float, bool, bool, dict]:
        loop = self.loop
        if loop is None or loop.done:
            raise SimulatorError("step() before reset() or after the episode ended: call reset()")
        clearances, counts = self._clearances(action)
        if self.expert_resumes and self._proposal is not None:
            used = {c.flight_id for c in clearances}
            clearances += [c for c in self._proposal[0].clearances if c.action_type == "resume" and c.flight_id not in used]
        issued, rejected = [], 0
        for c in clearances:
            rows = loop.apply([c])
            if rows:
                issued.append((c, rows[0]))
            else:
                rejected += 1
        if self.expert is not None and self._proposal is not None:
            done = [c for c, _ in issued]
            dec, handled = self._proposal    # its own decision executed as proposed: the conflicts it would mark
            self.expert.commit(self._obs.sim_s, done, handled if done == dec.clearances else None)
        loop.advance()
        obs, info = self._observe()
        r = self.reward_cfg
        reward = r.los * len(info["los_new"]) + r.clearance * len(issued) + r.rejected * rejected
        info.update(counts, rejected=rejected,
                    clearances=[{"flight_id": c.flight_id, "action_type": c.action_type, "value": float(row["value"]),
                                 "against": c.against} for c, row in issued])
        return obs, float(reward), False, bool(loop.done), info

    def close(self) -> None:
        if self._own_sim and self._sim is not None:
            self._sim.close()
            self._sim = None
        self.loop = None

    # ------------------------------------------------------------------ the loop's side
    def result(self) -> RolloutResult:
        """The episode so far as a rollout result (tracks, clearances, meta; with the terminal frame)."""
        if self.loop is None:
            raise SimulatorError("result() before reset()")
        return self.loop.result("gym", getattr(self.expert, "style", None))

    def _clearances(self, action: dict) -> tuple[list[Clearance], dict]:
        n_valid = len(self._pairs)
        act = np.asarray(action["act"]).reshape(-1).astype(bool)
        aircraft = np.asarray(action["aircraft"]).reshape(-1).astype(int)
        kinds = np.asarray(action["type"]).reshape(-1).astype(int)
        values = np.asarray(action["value"], dtype=float).reshape(-1)
        out, used, skipped = [], set(), 0
        for s in np.flatnonzero(act[:n_valid]):
            pair = self._pairs[s]
            k = int(aircraft[s] != 0)
            fid, other = pair[k], pair[1 - k]
            if fid in used:
                skipped += 1
                continue
            if not 0 <= kinds[s] < len(ACTION_KINDS):
                raise ValueError(f"action type {kinds[s]} of slot {s} is not in 0..{len(ACTION_KINDS) - 1}")
            kind = ACTION_KINDS[kinds[s]]
            lim = self.limits.of(kind)
            used.add(fid)
            out.append(Clearance(fid, kind, float(np.clip(values[s], -lim, lim)), against=other))
        return out, {"skipped_same_aircraft": skipped, "acts_on_padding": int(act[n_valid:].sum())}

    def _observe(self) -> tuple[dict, dict]:
        loop = self.loop
        assert loop is not None
        o = self._obs = loop.observe()
        self._frames.append(o.radar)
        conf = o.conflicts
        if len(conf):
            conf = conf[conf["conflict"].astype(bool)].sort_values("tcpa_s", kind="stable")
        pairs = list(zip(conf["flight_id_1"], conf["flight_id_2"])) if len(conf) else []
        self._first = {k: v for k, v in self._first.items() if k in set(pairs)}
        for k in pairs:
            self._first.setdefault(k, o.time)
        n = self.max_conflicts
        self._pairs = shown = pairs[:n]
        obs = {k: np.zeros(self._shapes[k], np.float32) for k in TENSORS}
        obs["mask"] = np.zeros(n, np.int8)
        if shown:
            feats = self._features(o, shown)
            for name in TENSORS:
                obs[name][:len(shown)] = feats[name]
            obs["mask"][:len(shown)] = 1
        new_los = self._new_los(loop.state)
        info: dict[str, Any] = {
            "scenario": loop.scenario.name, "sim_s": float(o.sim_s), "time": o.time.isoformat(),
            "pairs": list(shown), "tcpa_s": _slot_array(conf["tcpa_s"].to_numpy(float)[:n] if len(conf) else [], n),
            "conflicts_in_view": len(pairs), "conflicts_dropped": len(pairs) - len(shown),
            "dropped_pairs": pairs[n:], "los_new": new_los, "los_total": self._los_total,
            "aircraft": len(o.radar)}
        if self.expert is not None:
            info.update(self._expert_labels(o, shown))
        return obs, info

    def _features(self, o: Observation, shown: list[tuple[str, str]]) -> dict:
        samples = pd.DataFrame({"time": o.time, "flight_id_1": [a for a, _ in shown],
                                "flight_id_2": [b for _, b in shown]})
        samples["first_detection"] = [self._first[k] for k in shown]
        idx = TrackIndex.build(pd.concat(list(self._frames), ignore_index=True), self.cfg.decision_dt_s)
        acts = conform(o.cleared, ACTION_SCHEMA, "clearances").sort_values("time", kind="stable") \
            if len(o.cleared) else ACTION_SCHEMA.empty_table().to_pandas()
        return build_features(samples, idx, acts, self.dataset, self._plan_rows, self.cfg.conflicts)

    def _new_los(self, state: pd.DataFrame) -> list[tuple[str, str]]:
        """Pairs in loss of separation on the true state now and not at the previous decision step."""
        los: set = set()
        if len(state) > 1:
            c = detect_snapshot(state["flight_id"].to_numpy(), state["lat_deg"].to_numpy(), state["lon_deg"].to_numpy(),
                                state["alt_ft"].to_numpy(), state["gs_kt"].to_numpy(), state["trk_deg"].to_numpy(),
                                state["vs_fpm"].to_numpy(), self.cfg.conflicts)
            if len(c):
                c = c[c["los"].astype(bool)]
                los = set(zip(c["flight_id_1"], c["flight_id_2"]))
        new = sorted(los - self._los)
        self._los = los
        self._los_total += len(new)
        return new

    def _expert_labels(self, o: Observation, shown: list[tuple[str, str]]) -> dict:
        """The shadow expert's decision on this observation, per slot (probabilities and the sampled decision)."""
        assert self.expert is not None
        self._proposal = self.expert.propose(o)
        dec = self._proposal[0]
        n = self.max_conflicts
        slot = {k: i for i, k in enumerate(shown)}
        considered, p_act, p_ac1 = np.zeros(n, np.int8), np.zeros(n), np.zeros(n)
        joint: list[list[tuple[int, str, float, float]]] = [[] for _ in range(n)]
        act: dict[str, np.ndarray] = {"act": np.zeros(n, np.int8), "aircraft": np.zeros(n, np.int8), "type": np.zeros(n, np.int64),
               "value": np.zeros(n, np.float32)}
        resumes = []
        for r in dec.truth:
            key = (r["flight_id_1"], r["flight_id_2"])
            if r["kind"] == "resume":
                fid = key[r["aircraft"]] if r["acted"] else (key[0] if r["p_aircraft_1"] == 1.0 else key[1])
                resumes.append({"flight_id": fid, "against": key[1] if fid == key[0] else key[0],
                                "p_act": float(r["p_act"]), "acted": bool(r["acted"])})
                continue
            s = slot.get(key)
            if s is None:
                continue
            considered[s] = 1
            p_act[s], p_ac1[s] = float(r["p_act"]), float(r["p_aircraft_1"])
            joint[s] = [(int(k), str(t), float(v), float(p)) for k, t, v, p in r["joint"]]
            if r["acted"]:
                act["act"][s], act["aircraft"][s] = 1, int(r["aircraft"])
                act["type"][s] = ACTION_KINDS.index(r["action_type"])
                act["value"][s] = float(r["value"])
        lab = {"considered": considered, "p_act": p_act, "p_aircraft_1": p_ac1, "joint": joint,
               "style": self.expert.style, "resumes": resumes}
        return {"expert": lab, "expert_action": act}


def _slot_array(values: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n)
    out[:len(values)] = values
    return out


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="simulator_adapters.gym_env:ConflictResolutionEnv")
