"""A learned policy as a controller in the closed loop: ``atc-il simeval --controller model:URI``.

At every decision step the controller keeps the last H radar pictures, turns each conflict on the
current picture into an observation history with the data set's own feature builder
(:func:`pipelines.features.build_features`, so features are computed exactly as in training), asks the
policy for a decision and issues the clearances it decides (at most one per aircraft per step).

Acting is a per-step decision with a small probability (a hazard: the controller acts once over many
steps), so the most likely decision at every step is "not now" and a controller that thresholds
P(act) at 1/2 never acts. By default the controller therefore rolls the learned policy out as it was
trained: at each step it acts on a conflict with probability P(act now | history) (``act="sample"``), and
then draws the clearance given that it acts from the policy (``action="sample"``: aircraft, type and value),
both from a generator seeded by the session seed. ``action="mode"`` issues the most likely clearance given
acting instead: every decision then takes the type the policy finds most likely, and a controller that mixes
kinds of clearance (as the synthetic expert does within its style) is reduced to its favourite kind
(bench/RESULTS.md, "The session style code in the closed loop"). ``act="argmax"`` keeps the threshold (the
single most likely decision).

Besides the conflicts, the policy is asked at the resume steps of its own clearances (``pipelines.resume``: the
pair it cleared diverges, no other clearance since, within ``dataset.resume_window_s``), as the data set samples
them, so that it can send aircraft back on their routes.

A policy with a session style code (``style.enabled``, models/style.py) plays one controller: its code is drawn
once per session from the code's prior and held (``style="session"``, the default; recorded as the rollout's
``style``), as the expert keeps its style for a session; ``style="marginal"`` decides every step under the
code's posterior given the session's clearances instead, whose most probable code given acting is the prior's
mode in every session at first, so every session drifts to the same style.

The observation's flight plans go to the feature builder as flight-plan contract rows (read by goal-conditioned
models, ``dataset.goal``). ``direct_to`` decisions, which need a waypoint the model does not choose, are not
issued and are counted in ``skipped``.
"""

from __future__ import annotations

import zlib
from collections import deque

import numpy as np
import pandas as pd

from models.serving import Predictor
from simulator_adapters.controllers import Clearance, Controller, Decision, Observation, flight_plan_rows


class ModelController(Controller):
    name = "model"

    def __init__(self, uri: str, act: str = "sample", style: str = "session", action: str = "sample"):
        if act not in ("sample", "argmax"):
            raise ValueError(f"act must be 'sample' or 'argmax', got {act!r}")
        if action not in ("mode", "sample"):
            raise ValueError(f"action must be 'mode' or 'sample', got {action!r}")
        self.action = action
        if style not in ("session", "marginal"):
            raise ValueError(f"style must be 'session' or 'marginal', got {style!r}")
        self.uri, self.act, self.style_mode = uri, act, style
        self.predictor = Predictor.from_uri(uri)
        self.name = f"model:{uri}"
        self.reset("", 0)

    def reset(self, scenario_name: str, seed: int) -> None:
        self.frames: deque = deque(maxlen=self.predictor.dcfg.history_steps)
        self.first_shown: dict[tuple[str, str], pd.Timestamp] = {}   # start of each pair's run of detections
        self.last_seen: dict[tuple[str, str], pd.Timestamp] = {}
        self.skipped = 0
        self.last_decisions: pd.DataFrame | None = None
        self.rng = np.random.default_rng([int(seed), zlib.crc32(scenario_name.encode())])
        self.code = self.draw_code()
        self._plans: tuple[dict | None, pd.DataFrame | None] = (None, None)

    def draw_code(self) -> int:
        """The session's style code (a policy with one, ``style = "session"``): drawn once per session from
        q(c | no clearance yet) and held for every decision, as a controller keeps their style; -1 otherwise
        (every decision marginal over q(c | the session's clearances so far) and the most probable code given
        acting, which sends every session to the same code, the prior's mode: bench/RESULTS.md)."""
        prior = self.predictor.policy.session_prior() if self.style_mode == "session" else None
        if prior is None:
            return -1
        p = prior.probs.detach().double().numpy()
        return int(self.rng.choice(len(p), p=p / p.sum()))

    @property
    def style(self) -> str | None:
        """The session's style code as the rollout records it (``code K``), None without one."""
        return f"code {self.code}" if self.code >= 0 else None

    def plan_rows(self, plans: dict | None) -> pd.DataFrame | None:
        """The observation's flight plans as contract rows (converted once per plans object)."""
        if not plans:
            return None
        if self._plans[0] is not plans:
            self._plans = (plans, flight_plan_rows(plans))
        return self._plans[1]

    def resume_samples(self, obs: Observation, shown: set) -> pd.DataFrame:
        """The resume steps at this decision step (:mod:`pipelines.resume`, as the data set builds them): pairs
        whose aircraft this controller cleared against each other, not resumed or cleared since, within the
        window, diverging on the current picture, and not a conflict shown now."""
        from pipelines.resume import diverging, ordered, outstanding
        cols = ["time", "flight_id_1", "flight_id_2", "first_detection"]
        if not self.predictor.dcfg.resume_samples or obs.cleared is None or len(obs.cleared) == 0:
            return pd.DataFrame(columns=cols)
        outs = outstanding(obs.cleared)
        now = int(obs.time.value)
        outs = outs[(outs["t_end"] > now) & (now - outs["t_clear"] <= int(self.predictor.dcfg.resume_window_s * 1e9))
                    & (outs["t_clear"] < now)]
        radar = obs.radar.set_index("flight_id")
        outs = outs[outs["flight_id"].isin(radar.index) & outs["other"].isin(radar.index)]
        if outs.empty:
            return pd.DataFrame(columns=cols)
        a, b = radar.loc[outs["flight_id"]], radar.loc[outs["other"]]
        div = diverging(*(x[c].to_numpy(float) for x in (a, b) for c in ("lat_deg", "lon_deg", "gs_kt", "trk_deg")))
        outs = outs[div]
        f1, f2, _ = ordered(outs["flight_id"].to_numpy(dtype=object), outs["other"].to_numpy(dtype=object))
        out = pd.DataFrame({"time": obs.time, "flight_id_1": f1, "flight_id_2": f2,
                            "first_detection": pd.to_datetime(outs["t_clear"].to_numpy(), unit="ns", utc=True)})
        out = out[[(x, y) not in shown for x, y in zip(out["flight_id_1"], out["flight_id_2"])]]
        return out.drop_duplicates(["flight_id_1", "flight_id_2"]).reset_index(drop=True)

    def step_samples(self, obs: Observation) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """Keep the radar picture; the samples the policy is asked about at this step (the conflicts shown, then
        the resume steps) and the kept pictures as tracks (None when there is nothing to ask)."""
        self.frames.append(obs.radar)
        conf = obs.conflicts
        if len(obs.radar) < 2:
            self.first_shown.clear()
            self.last_seen.clear()
            return pd.DataFrame(columns=["time", "flight_id_1", "flight_id_2", "first_detection"]), None
        if conf is None or len(conf) == 0:
            conf = pd.DataFrame({"flight_id_1": [], "flight_id_2": [], "conflict": [], "los": [], "tcpa_s": []})
        # a pair's first detection is the start of its current run of detections (in conflict or LoS), runs broken
        # by gaps longer than max_episode_gap_s: the data set's episodes and the Picture's rule. A conflict that
        # flickers off the noisy picture for a step keeps its age (time_in_conflict_s), as in training.
        hit = conf["conflict"].astype(bool) | conf["los"].astype(bool)
        gap = pd.Timedelta(seconds=self.predictor.conflicts.max_episode_gap_s)
        for k in zip(conf.loc[hit, "flight_id_1"], conf.loc[hit, "flight_id_2"]):
            if k not in self.first_shown or obs.time - self.last_seen[k] > gap:
                self.first_shown[k] = obs.time
            self.last_seen[k] = obs.time
        for k in [k for k, t in self.last_seen.items() if obs.time - t > gap]:
            del self.first_shown[k], self.last_seen[k]
        conf = conf[conf["conflict"].astype(bool)]            # the data set's decision steps (select_samples)
        shown = set(zip(conf["flight_id_1"], conf["flight_id_2"]))
        samples = pd.DataFrame({"time": obs.time, "flight_id_1": conf["flight_id_1"].to_numpy(),
                                "flight_id_2": conf["flight_id_2"].to_numpy()})
        samples["first_detection"] = [self.first_shown[(a, b)] for a, b in zip(samples["flight_id_1"], samples["flight_id_2"])]
        samples = pd.concat([samples, self.resume_samples(obs, shown)], ignore_index=True)
        if samples.empty:
            return samples, None
        return samples, pd.concat(list(self.frames), ignore_index=True)

    def decide(self, obs: Observation) -> Decision:
        samples, tracks = self.step_samples(obs)
        if tracks is None:
            return Decision()
        draw = int(self.rng.integers(2**63)) if self.action == "sample" else None
        dec, _ = self.predictor.predict_samples(samples, tracks, obs.cleared,
                                                flight_plans=self.plan_rows(obs.flight_plans), code=self.code,
                                                draw_seed=draw)
        self.last_decisions = dec               # the policy's decisions at this step (p_act per pair), for inspection
        if self.act == "sample":
            dec["act"] = self.rng.random(len(dec)) < dec["p_act"].to_numpy(float)
        out, used = [], set()
        for r in dec[dec["act"]].itertuples():
            if r.flight_id in used:
                continue
            if r.action_type == "direct_to":
                self.skipped += 1
                continue
            used.add(r.flight_id)
            other = r.flight_id_2 if r.flight_id == r.flight_id_1 else r.flight_id_1
            out.append(Clearance(r.flight_id, r.action_type, 0.0 if r.action_type == "resume" else float(r.value),
                                 against=other))
        return Decision(out)

