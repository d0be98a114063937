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
from atc_il.errors import DataError, LimitError, ModelError
from atc_il.feature_spec import FeatureSpec
from atc_il.schemas import ACTION_SCHEMA, ACTION_TYPES, ACTION_UNITS, DECISION_SCHEMA, TRACK_SCHEMA, conform
from models.ceiling import MODE_TOLERANCE
from models.interface import Context, Observations, PolicyInterface
from pipelines.features import Samples, TrackIndex, build_features
from pipelines.picture import Picture

DECISION_COLUMNS = list(DECISION_SCHEMA.names)     # the decision contract's columns (atc_il/schemas.py)
ENCODE_BATCH = 128      # rows per context-network pass in large batches (cache-sized; see encode_batches)


@dataclass
class Predictor:
    policy: PolicyInterface
    uri: str = ""
    conflicts: ConflictConfig = ConflictConfig()

    def __post_init__(self):
        self.policy.eval()
        self.feature_spec = FeatureSpec.of(self.policy.spec, error=ModelError)
        # a policy whose data set predates resume steps was never trained on them: it is not asked there
        self.dcfg = DatasetConfig(**{"resume_samples": False, **self.feature_spec.config})
        self.step_s = float(self.feature_spec.step_s)
        self.encode = self.policy.encode        # the context network: PyTorch, or ONNX Runtime (use_onnx)
        self.runtime = "torch"

    def use_onnx(self, examples: list[dict], model_bytes: bytes | None = None) -> str:
        """Run the context network on ONNX Runtime (:mod:`models.onnx_context`) when it reproduces PyTorch on
        the feature dicts ``examples`` (``model_bytes``: a graph exported for this policy before, opened instead
        of exporting again); returns "" or why it stays on PyTorch."""
        from models.onnx_context import onnx_context
        fast, why = onnx_context(self.policy, examples, model_bytes) if model_bytes else onnx_context(self.policy, examples)
        if fast is not None:
            self.encode, self.runtime = fast, "onnxruntime"
        return why

    def example_features(self, n: int = 2) -> dict:
        """Feature arrays of ``n`` all-padding samples in the model's shapes (e.g. to export the context network
        before any real feature is built; :func:`models.onnx_context.onnx_context` also checks perturbed copies)."""
        return {name: np.zeros((n, *t.shape), dtype=np.float32) for name, t in self.feature_spec.tensors.items()}

    def use_torch(self) -> None:
        """Run the context network on PyTorch (undoes :meth:`use_onnx`)."""
        self.encode, self.runtime = self.policy.encode, "torch"

    @classmethod
    def from_uri(cls, uri: str, **kwargs) -> Predictor:
        from models.registry import load_policy_uri
        return cls(load_policy_uri(uri), uri=str(uri), **kwargs)

    def metadata(self) -> dict:
        return {"uri": self.uri, "name": self.policy.config.name, "spec_hash": self.feature_spec.spec_hash,
                "history_steps": self.dcfg.history_steps, "step_s": self.step_s,
                "exact_log_prob": bool(self.policy.exact_log_prob), "runtime": self.runtime}

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
    def prepare(self, tracks, at=None, clearances=None, n_alternatives: int = 0,
                pairs: list[tuple[str, str]] | None = None, seed: int = 0,
                flight_plans: pd.DataFrame | None = None, max_conflicts: int | None = None) -> Prepared:
        """The CPU part of :meth:`detect_and_predict`: the conflicts at ``at`` (default: the latest grid time),
        or ``pairs`` (in conflict or not), and their feature tensors. ``tracks``: canonical track points
        (DataFrame) or a :class:`Picture`."""
        pic = tracks if isinstance(tracks, Picture) else Picture.from_frame(tracks, self.step_s)
        step_ns = int(round(self.step_s * 1e9))
        at_ns = pic.last_ns if at is None else pd.Timestamp(at).tz_convert("UTC").value // step_ns * step_ns
        samples = pic.samples(at_ns, self.conflicts, pairs)
        if max_conflicts is not None and len(samples) > max_conflicts:    # before the features: the costly part
            raise LimitError("max_conflicts", f"the picture holds {len(samples):,} conflicts at "
                             f"{pd.Timestamp(at_ns, tz='UTC').isoformat()}, more than one request may ask for "
                             f"(max_conflicts={max_conflicts}"
                             + (f" with n_alternatives={n_alternatives}" if n_alternatives else "")
                             + "); send a smaller picture (split the airspace) or fewer alternatives")
        feats = self.features(samples, pic.index, clearances, flight_plans) if len(samples) else None
        return Prepared(samples, feats, int(n_alternatives), int(seed))

    def features(self, samples: Samples | pd.DataFrame, index: TrackIndex, clearances: pd.DataFrame | None = None,
                 flight_plans: pd.DataFrame | None = None) -> dict:
        acts = _NO_ACTIONS if clearances is None or clearances.empty else \
            conform(clearances, ACTION_SCHEMA, "clearances").sort_values("time", kind="stable")
        return build_features(samples, index, acts, self.dcfg, flight_plans, self.conflicts)

    @torch.inference_mode()
    def encode_batches(self, feats: dict) -> Context:
        """The context network on feature arrays, :data:`ENCODE_BATCH` rows per pass: the intermediate tensors of
        a pass (the neighbour MLP alone is (B, H, K, hidden)) then stay in the CPU's cache; on the 2-core
        machine a pass of 8192 rows ran at about 60 % of the throughput of passes of 128 (bench/RESULTS.md).
        Every row's context is the same as in one pass (rows do not interact)."""
        n = len(feats["pair"])
        if n <= ENCODE_BATCH:
            return self.encode(Observations.from_dict(feats))
        parts = [self.encode(Observations.from_dict({k: v[a:a + ENCODE_BATCH] for k, v in feats.items()})).tensor
                 for a in range(0, n, ENCODE_BATCH)]
        return Context(torch.cat(parts))

    @torch.inference_mode()
    def infer(self, items: list[Prepared]) -> list[tuple[dict, list]]:
        """One forward pass for the conflicts of all ``items`` (requests): per item, its decisions as arrays
        (:data:`DECISION_COLUMNS`) and, when it asked for alternatives, their modes per conflict (sampled
        with the item's own seed, so an item's answer does not depend on what it was batched with)."""
        live = [it for it in items if it.features is not None]
        if not live:
            return [(_decision_arrays(it.samples, None), []) for it in items]
        feats = {k: np.concatenate([it.features[k] for it in live]) if len(live) > 1 else live[0].features[k]
                 for k in live[0].features}
        ctx = self.encode_batches(feats)
        code = None
        if any(it.code >= 0 for it in live):      # a session style code held fixed (ModelController)
            code = torch.from_numpy(np.concatenate([np.full(len(it.samples), it.code, np.int64) for it in live]))
        cond = self.policy.predict_action(ctx, code=code)
        p_act = self.policy.p_act(ctx, code=code)
        cols = {"aircraft": cond.aircraft.cpu().numpy(), "type": cond.type.cpu().numpy(),
                "value": cond.value.cpu().numpy().astype(float), "p_act": p_act.cpu().numpy().astype(float)}
        out, a = [], 0
        for it in items:
            n = len(it.samples) if it.features is not None else 0
            part = {k: v[a:a + n] for k, v in cols.items()}
            if n and it.draw_seed is not None:    # the action drawn from the policy given acting, not its mode
                gen = torch.Generator(device="cpu").manual_seed(it.draw_seed)
                d = self.policy.sample_actions(ctx[a:a + n], 1, gen, code=None if code is None else code[a:a + n])
                part.update(aircraft=d.aircraft[:, 0].cpu().numpy(), type=d.type[:, 0].cpu().numpy(),
                            value=d.value[:, 0].cpu().numpy().astype(float))
            alts = []
            if n and it.n_alternatives > 0:
                gen = torch.Generator(device="cpu").manual_seed(it.seed)
                sm = self.policy.sample_actions(ctx[a:a + n], it.n_alternatives, gen)
                ac, ty, va = (x.cpu().numpy() for x in (sm.aircraft, sm.type, sm.value))
                f1, f2 = it.samples.flight_id_1, it.samples.flight_id_2
                alts = [_modes(ac[i], ty[i], va[i], float(part["p_act"][i]), (f1[i], f2[i])) for i in range(n)]
            out.append((_decision_arrays(it.samples, part), alts))
            a += n
        return out

    def predict_samples(self, samples: pd.DataFrame, grid: pd.DataFrame | None, clearances: pd.DataFrame | None = None,
                        n_alternatives: int = 0, seed: int = 0, index: TrackIndex | None = None,
                        flight_plans: pd.DataFrame | None = None, code: int = -1,
                        draw_seed: int | None = None) -> tuple[pd.DataFrame, list]:
        """Decisions for ``samples`` (time, flight_id_1, flight_id_2, first_detection[, tcpa_s, dcpa_nm]) on
        the grid tracks ``grid`` (or their ``index``); ``code`` >= 0: the session style code to hold fixed
        (a policy with a style code; -1: marginal over the code's posterior given the session); ``draw_seed``:
        the action given acting (aircraft, type, value) is drawn from the policy with this seed instead of
        being its most likely one."""
        if samples.empty:
            return pd.DataFrame(columns=DECISION_COLUMNS), []
        idx = index or TrackIndex.build(grid, self.step_s)
        s = Samples.of(samples, ("tcpa_s", "dcpa_nm"))
        item = Prepared(s, self.features(s, idx, clearances, flight_plans), n_alternatives, seed, code, draw_seed)
        (dec, alts), = self.infer([item])
        return decisions_frame(dec), alts

    def detect_and_predict(self, tracks, at=None, clearances=None, n_alternatives: int = 0,
                           pairs: list[tuple[str, str]] | None = None, seed: int = 0,
                           flight_plans: pd.DataFrame | None = None):
        """The conflicts at ``at`` (default: the latest grid time) and a decision for each (or for ``pairs``,
        in conflict or not): (samples, decisions, alternatives) as tables."""
        item = self.prepare(tracks, at, clearances, n_alternatives, pairs, seed, flight_plans)
        (dec, alts), = self.infer([item])
        return item.samples.frame(), decisions_frame(dec), alts


@dataclass
class Prepared:
    """A request's conflicts (``samples``) and their feature tensors (None when there is no conflict)."""
    samples: Samples
    features: dict | None
    n_alternatives: int = 0
    seed: int = 0
    code: int = -1          # >= 0: the session style code held fixed (see Predictor.predict_samples)
    draw_seed: int | None = None    # draw the action given acting from the policy (seeded) instead of its mode


_NO_ACTIONS = ACTION_SCHEMA.empty_table().to_pandas()
_TYPES = np.array(ACTION_TYPES, dtype=object)
_UNITS = np.array([ACTION_UNITS[t] for t in ACTION_TYPES], dtype=object)
_TOL = np.array([MODE_TOLERANCE[t] for t in ACTION_TYPES])


def decisions_frame(dec: dict) -> pd.DataFrame:
    """:func:`_decision_arrays` as a table (time as UTC datetimes)."""
    df = pd.DataFrame(dec, columns=DECISION_COLUMNS)
    df["time"] = pd.to_datetime(np.asarray(dec["time"], dtype=np.int64), unit="ns", utc=True)
    return df


def _decision_arrays(samples: Samples, part: dict | None) -> dict:
    """The decision columns as arrays (``time`` in UTC ns): ``act`` where p_act > 1/2 (the most likely
    decision), the most likely action given that the controller acts (aircraft 0 or 1, type, value, unit)."""
    n = len(samples)
    if part is None:
        part = {"aircraft": np.zeros(0, np.int64), "type": np.zeros(0, np.int64), "value": np.zeros(0),
                "p_act": np.zeros(0)}
    f1, f2, x = samples.flight_id_1, samples.flight_id_2, samples.extra
    ac, ty = part["aircraft"], np.clip(part["type"], 0, None)
    return {"time": samples.t_ns, "flight_id_1": f1, "flight_id_2": f2,
            "tcpa_s": np.asarray(x["tcpa_s"], float) if "tcpa_s" in x else np.full(n, np.nan),
            "dcpa_nm": np.asarray(x["dcpa_nm"], float) if "dcpa_nm" in x else np.full(n, np.nan),
            "act": part["p_act"] > 0.5, "p_act": part["p_act"], "aircraft": ac,
            "flight_id": np.where(ac == 0, f1, f2), "action_type": _TYPES[ty], "value": part["value"],
            "unit": _UNITS[ty]}


def _modes(ac: np.ndarray, ty: np.ndarray, val: np.ndarray, p_act: float, pair: tuple[str, str]) -> list[dict]:
    """Group sampled actions into modes (same aircraft and type, values within the mode tolerance), most
    frequent first; a mode's value is the median of its samples."""
    n = len(ac)
    b = np.where(np.isfinite(val), np.round(val / (2 * _TOL[ty])), 0)
    order = np.lexsort((b, ty, ac))
    keys = np.stack([ac[order], ty[order], b[order]], axis=1)
    new = np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)]
    starts = np.flatnonzero(new)
    counts = np.diff(np.r_[starts, n])
    out = []
    for g in np.argsort(-counts, kind="stable"):
        s, c = starts[g], counts[g]
        a, t = int(keys[s, 0]), ACTION_TYPES[int(keys[s, 1])]
        out.append({"aircraft": a, "flight_id": pair[a], "action_type": t,
                    "value": 0.0 if t == "resume" else float(np.median(val[order[s:s + c]])),
                    "unit": ACTION_UNITS[t], "probability_given_act": c / n, "probability": p_act * c / n})
    return out
