"""A learned policy as a controller in the closed loop: ``atc-il simeval --controller model:URI``.

At every decision step the controller keeps the last H radar pictures, turns each conflict on the
current picture into an observation history with the data set's own feature builder
(:func:`pipelines.dataset.build_features`, so features are computed exactly as in training), asks the
policy for its most likely decision and issues the clearances it decides (at most one per aircraft per
step). ``direct_to`` decisions, which need a waypoint the model does not choose, are not issued and
are counted in ``skipped``.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pandas as pd
import torch

from atc_il.config import DatasetConfig
from atc_il.schemas import ACTION_SCHEMA, ACTION_TYPES
from models.interface import Observations
from pipelines.dataset import TrackIndex, build_features
from simulator_adapters.controllers import Clearance, Controller, Decision, Observation, register


class ModelController(Controller):
    name = "model"

    def __init__(self, uri: str):
        from models.registry import load_policy_uri
        self.uri = uri
        self.policy = load_policy_uri(uri)
        self.policy.eval()
        cfg = dict(self.policy.spec["config"])
        self.dcfg = DatasetConfig(**cfg)
        self.step_s = float(self.policy.spec["step_s"])
        self.name = f"model:{uri}"
        self.reset("", 0)

    def reset(self, scenario_name: str, seed: int) -> None:
        self.frames: deque = deque(maxlen=self.dcfg.history_steps)
        self.first_shown: dict[tuple[str, str], pd.Timestamp] = {}
        self.skipped = 0
        torch.manual_seed(seed)

    def decide(self, obs: Observation) -> Decision:
        self.frames.append(obs.radar)
        conf = obs.conflicts
        if conf is None or len(conf) == 0 or len(obs.radar) < 2:
            self.first_shown.clear()
            return Decision()
        conf = conf[conf["conflict"].astype(bool) & (conf["tcpa_s"] > 0)]
        shown = set(zip(conf["flight_id_1"], conf["flight_id_2"]))
        self.first_shown = {k: v for k, v in self.first_shown.items() if k in shown}
        for k in shown:
            self.first_shown.setdefault(k, obs.time)
        if not shown:
            return Decision()
        samples = pd.DataFrame({"time": obs.time, "flight_id_1": conf["flight_id_1"].to_numpy(),
                                "flight_id_2": conf["flight_id_2"].to_numpy()})
        samples["first_detection"] = [self.first_shown[(a, b)] for a, b in zip(samples["flight_id_1"], samples["flight_id_2"])]
        tracks = pd.concat(list(self.frames), ignore_index=True)
        actions = obs.cleared if len(obs.cleared) else ACTION_SCHEMA.empty_table().to_pandas()
        feats = build_features(samples, TrackIndex.build(tracks, self.step_s), actions.sort_values("time"), self.dcfg)
        with torch.no_grad():
            d = self.policy.predict(Observations.from_dict(feats))
        out, used = [], set()
        for i in np.flatnonzero(d.act.numpy() == 1):
            fid = samples.iloc[i][("flight_id_1", "flight_id_2")[int(d.aircraft[i])]]
            kind = ACTION_TYPES[int(d.type[i])]
            if fid in used:
                continue
            if kind == "direct_to":
                self.skipped += 1
                continue
            used.add(fid)
            out.append(Clearance(fid, kind, 0.0 if kind == "resume" else float(d.value[i])))
        return Decision(out)


register("model")(ModelController)
