"""The one prediction function behind the REST service, batch prediction and the closed loop.

From canonical track points of a radar picture (any sampling: they are resampled onto the model's grid,
never across gaps), at a decision time: detect the conflicts (atc-il's state-based detection), build
each conflict's observation history with the data set's own feature builder, and return the policy's
most likely decision, its probability of acting now, and n sampled alternatives grouped into modes with
their estimated probabilities (so that a controller sees the modes, not one averaged answer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from atc_il.config import ConflictConfig, DatasetConfig
from atc_il.errors import DataError
from atc_il.schemas import ACTION_SCHEMA, ACTION_TYPES, ACTION_UNITS, TRACK_SCHEMA, conform
from models.ceiling import MODE_TOLERANCE
from models.interface import Decisions, Observations
from pipelines.dataset import TrackIndex, build_features
from pipelines.picture import Picture

DECISION_COLUMNS = ["time", "flight_id_1", "flight_id_2", "tcpa_s", "dcpa_nm", "act", "p_act", "aircraft",
                    "flight_id", "action_type", "value", "unit"]


@dataclass
class Predictor:
    policy: object
    uri: str = ""
    conflicts: ConflictConfig = ConflictConfig()

    def __post_init__(self):
        self.policy.eval()
        self.dcfg = DatasetConfig(**self.policy.spec["config"])
        self.step_s = float(self.policy.spec["step_s"])

    @classmethod
    def from_uri(cls, uri: str, **kwargs) -> "Predictor":
        from models.registry import load_policy_uri
        return cls(load_policy_uri(uri), uri=str(uri), **kwargs)

    def metadata(self) -> dict:
        return {"uri": self.uri, "name": self.policy.config.name, "spec_hash": self.policy.spec.get("spec_hash"),
                "history_steps": self.dcfg.history_steps, "step_s": self.step_s,
                "exact_log_prob": bool(self.policy.exact_log_prob)}

    # ------------------------------------------------------------------ preparation
    def grid(self, tracks: pd.DataFrame) -> pd.DataFrame:
        """Canonical points -> the model's regular grid (kinematics derived where missing)."""
        from pipelines.clean import derive_kinematics, resample_tracks
        df = conform(tracks, TRACK_SCHEMA, "tracks")
        df = derive_kinematics(df.sort_values(["flight_id", "time"], kind="stable"))
        g = resample_tracks(df, self.step_s)
        if g.empty:
            raise DataError("tracks: no flight has two points close enough in time to resample onto the grid")
        return g

    def detect(self, grid: pd.DataFrame) -> pd.DataFrame:
        """Conflicts at every grid time, with the time each pair's current run of detections began."""
        from pipelines.conflicts import detect
        c = detect(grid, self.conflicts, progress=False)
        if c.empty:
            return c.assign(first_detection=pd.Series(dtype="datetime64[ns, UTC]"))
        c = c.sort_values(["flight_id_1", "flight_id_2", "time"], kind="stable")
        pair_change = (c["flight_id_1"] != c["flight_id_1"].shift()) | (c["flight_id_2"] != c["flight_id_2"].shift())
        gap = c["time"].diff().dt.total_seconds().fillna(np.inf) > self.conflicts.max_episode_gap_s
        run = (pair_change | gap).cumsum()
        c["first_detection"] = c.groupby(run)["time"].transform("min")
        return c

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict_samples(self, samples: pd.DataFrame, grid: pd.DataFrame, clearances: pd.DataFrame | None = None,
                        n_alternatives: int = 0, seed: int = 0, index: TrackIndex | None = None,
                        flight_plans: pd.DataFrame | None = None) -> tuple[pd.DataFrame, list]:
        """Decisions for ``samples`` (time, flight_id_1, flight_id_2, first_detection[, tcpa_s, dcpa_nm])."""
        if samples.empty:
            return pd.DataFrame(columns=DECISION_COLUMNS), []
        acts = ACTION_SCHEMA.empty_table().to_pandas() if clearances is None or clearances.empty else \
            conform(clearances, ACTION_SCHEMA, "clearances").sort_values("time", kind="stable")
        idx = index or TrackIndex.build(grid, self.step_s)
        obs = Observations.from_dict(build_features(samples, idx, acts, self.dcfg, flight_plans))
        ctx = self.policy.context(obs)
        head = self.policy.head
        best = head.predict(ctx)
        cond = head.predict(ctx, given_act=True)
        p_act = torch.softmax(head.act_out(head.trunk(ctx)).float(), -1)[:, 1].cpu().numpy()
        out = _decision_frame(samples, best, cond, p_act)
        alts = []
        if n_alternatives > 0:
            gen = torch.Generator(device="cpu").manual_seed(seed)
            s = head.sample(ctx, n_alternatives, gen, given_act=True)
            for i in range(len(samples)):
                alts.append(_modes(s.aircraft[i].cpu().numpy(), s.type[i].cpu().numpy(), s.value[i].cpu().numpy(),
                                   float(p_act[i]), samples.iloc[i]))
        return out, alts

    def detect_and_predict(self, tracks, at=None, clearances=None, n_alternatives: int = 0,
                           pairs: list[tuple[str, str]] | None = None, seed: int = 0,
                           flight_plans: pd.DataFrame | None = None):
        """The conflicts at ``at`` (default: the latest grid time) and a decision for each (or for ``pairs``,
        in conflict or not). ``tracks``: canonical track points (DataFrame) or a :class:`Picture`."""
        pic = tracks if isinstance(tracks, Picture) else Picture.from_frame(tracks, self.step_s)
        step_ns = int(round(self.step_s * 1e9))
        at_ns = pic.last_ns if at is None else pd.Timestamp(at).tz_convert("UTC").value // step_ns * step_ns
        samples = pic.samples(at_ns, self.conflicts, pairs)
        dec, alts = self.predict_samples(samples, None, clearances, n_alternatives, seed, index=pic.index,
                                         flight_plans=flight_plans)
        return samples, dec, alts


def _decision_frame(samples: pd.DataFrame, best: Decisions, cond: Decisions, p_act: np.ndarray) -> pd.DataFrame:
    ac = cond.aircraft.cpu().numpy()
    ty = cond.type.cpu().numpy()
    f1, f2 = samples["flight_id_1"].to_numpy(), samples["flight_id_2"].to_numpy()
    types = np.array(ACTION_TYPES, dtype=object)[np.clip(ty, 0, None)]
    return pd.DataFrame({
        "time": samples["time"].to_numpy(), "flight_id_1": f1, "flight_id_2": f2,
        "tcpa_s": samples["tcpa_s"].to_numpy() if "tcpa_s" in samples else np.nan,
        "dcpa_nm": samples["dcpa_nm"].to_numpy() if "dcpa_nm" in samples else np.nan,
        "act": best.act.cpu().numpy().astype(bool), "p_act": p_act, "aircraft": ac,
        "flight_id": np.where(ac == 0, f1, f2), "action_type": types,
        "value": cond.value.cpu().numpy().astype(float), "unit": [ACTION_UNITS[t] for t in types]})


def _modes(ac: np.ndarray, ty: np.ndarray, val: np.ndarray, p_act: float, sample) -> list[dict]:
    """Group sampled actions into modes (same aircraft and type, values within the mode tolerance)."""
    tol = np.array([MODE_TOLERANCE[t] for t in ACTION_TYPES])[ty]
    key = pd.DataFrame({"ac": ac, "ty": ty, "bin": np.where(np.isfinite(val), np.round(val / (2 * tol)), 0), "v": val})
    g = key.groupby(["ac", "ty", "bin"]).agg(n=("v", "size"), value=("v", "median")).reset_index()
    g = g.sort_values("n", ascending=False)
    n = len(ac)
    out = []
    for r in g.itertuples():
        t = ACTION_TYPES[int(r.ty)]
        out.append({"aircraft": int(r.ac), "flight_id": sample["flight_id_1"] if r.ac == 0 else sample["flight_id_2"],
                    "action_type": t, "value": 0.0 if t == "resume" else float(r.value), "unit": ACTION_UNITS[t],
                    "probability_given_act": r.n / n, "probability": p_act * r.n / n})
    return out
