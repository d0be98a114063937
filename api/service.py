"""The service's model: loaded once, checked against the features this code builds, and called through the
two halves of the one prediction function the offline paths use (:meth:`models.serving.Predictor.prepare`,
per request, and :meth:`~models.serving.Predictor.infer`, one forward pass for many requests).

Also the conversions at the edge: request schemas -> the grid picture and action / flight-plan DataFrames,
and the predictor's arrays -> response dicts (non-finite numbers become null, never a JSON error).
"""

from __future__ import annotations

import logging
import math
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from atc_il.errors import ConfigError, DataError, ModelError
from atc_il.feature_spec import FeatureSpec
from atc_il.schemas import ACTION_SCHEMA, ACTION_UNITS, TRACK_SCHEMA, action_id

log = logging.getLogger("atc_il.api")
TRACK_COLUMNS = [c for c in TRACK_SCHEMA.names if c != "source"]   # the track contract's columns a request carries
RUNTIMES = ("auto", "torch", "onnx")   # where the context network runs (models/onnx_context.py)
ACTION_COLUMNS = list(ACTION_SCHEMA.names)     # the action contract's columns (atc_il/schemas.py)


class ItemError(DataError):
    """A DataError raised for one conflict of a batch (``index``)."""

    def __init__(self, index: int, exc: Exception):
        self.index = index
        super().__init__(f"conflicts[{index}]: {exc}")


def check_feature_spec(spec: FeatureSpec | dict, expect_spec_hash: str | None = None) -> str:
    """The policy's feature spec must be exactly what this service's feature builder produces for the
    policy's own data-set configuration (shapes, features, units, label coding); returns its hash."""
    from atc_il.config import DatasetConfig
    from pipelines.features import feature_spec

    if isinstance(spec, dict):
        missing = [k for k in ("tensors", "labels", "config", "step_s", "spec_hash", "normalisation")
                   if not spec.get(k)]
        if not missing:
            try:
                spec = FeatureSpec.of(spec, error=ModelError)
            except ModelError as exc:
                raise ModelError(f"the model's feature spec is malformed ({exc})") from None
    if isinstance(spec, FeatureSpec):
        missing = [k for k in ("tensors", "labels", "config", "step_s", "spec_hash", "normalisation")
                   if not getattr(spec, k)]
    if missing:
        raise ModelError(f"the model's feature spec lacks {missing}; it was not saved from a data set built by "
                         "atc-il's dataset stage and cannot be served")
    try:
        own = spec.hash()
        built = FeatureSpec.of(feature_spec(DatasetConfig(**spec.config), float(spec.step_s))).hash()
    except Exception as exc:   # noqa: BLE001  (any malformed spec is the model's fault: one clear message)
        raise ModelError(f"the model's feature spec is malformed ({type(exc).__name__}: {exc})") from None
    if own != spec.spec_hash:
        raise ModelError(f"the model's feature spec was altered: it declares spec_hash {spec.spec_hash} but "
                         f"its content hashes to {own}")
    if built != own:
        raise ModelError(f"the model expects features with spec_hash {own} but this service builds {built} for "
                         "the model's configuration (features, units or shapes changed); retrain the model on a "
                         "data set built by this version")
    if expect_spec_hash and own != expect_spec_hash:
        raise ModelError(f"the model's feature spec_hash is {own}, not the expected {expect_spec_hash} "
                         "(--expect-spec-hash)")
    return own


def model_version(uri: str) -> str | None:
    m = re.fullmatch(r"models:/([^/@]+)/(\d+)/?", uri)
    if m:
        return m.group(2)
    m = re.fullmatch(r"models:/([^/@]+)@([^/]+)/?", uri)
    if m:
        try:
            from mlflow import MlflowClient
            return str(MlflowClient().get_model_version_by_alias(m.group(1), m.group(2)).version)
        except Exception:   # noqa: BLE001  (best effort: the version is informative only)
            return None
    return None


def _num(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _floats(values) -> np.ndarray:
    return np.fromiter((np.nan if v is None else v for v in values), dtype=float)


def clearances_frame(clearances) -> pd.DataFrame | None:
    if not clearances:
        return None
    rows = [(c.action_id or action_id(c.flight_id, c.time, c.action_type), c.time, c.flight_id, c.action_type,
             float(c.value), ACTION_UNITS[c.action_type] if c.unit is None else c.unit, c.target_value, c.waypoint,
             c.source, float(c.confidence), c.against_flight_id) for c in clearances]
    df = pd.DataFrame(rows, columns=ACTION_COLUMNS)
    df["time"] = pd.to_datetime(df["time"], utc=True)
    df["target_value"] = pd.to_numeric(df["target_value"], errors="coerce").astype(float)
    return df


def _warmup_tracks(step_s: float, steps: int) -> pd.DataFrame:
    """Two aircraft converging head-on at FL300 (a conflict), ``steps`` grid steps long."""
    t = pd.Timestamp("2024-01-01T12:00:00Z") + pd.to_timedelta(np.arange(steps) * step_s, unit="s")
    dlon = 450 / 3600 * step_s / 60 / math.cos(math.radians(50))   # 450 kt along the parallel, in degrees per step
    rows = []
    for fid, lon0, sign, trk in (("WARM1", 4.7, 1, 90.0), ("WARM2", 5.3, -1, 270.0)):
        lon = lon0 + sign * dlon * np.arange(steps)
        rows.append(pd.DataFrame({"time": t, "flight_id": fid, "lat_deg": 50.0, "lon_deg": lon, "alt_ft": 30000.0,
                                  "gs_kt": 450.0, "trk_deg": trk, "vs_fpm": 0.0}))
    return pd.concat(rows, ignore_index=True)


class ModelService:
    """The loaded predictor; ``load`` once at start (it raises :class:`ModelError` on a model it refuses)."""

    def __init__(self, uri: str, expect_spec_hash: str | None = None, torch_threads: int | None = None,
                 runtime: str = "auto", max_conflicts: int | None = None, max_alternative_samples: int | None = None):
        if runtime not in RUNTIMES:
            raise ConfigError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        self.uri = str(uri)
        self.expect_spec_hash = expect_spec_hash
        self.torch_threads = torch_threads
        self.runtime = runtime
        self.max_conflicts, self.max_alternative_samples = max_conflicts, max_alternative_samples
        self.predictor = None
        self.info: dict | None = None

    @property
    def ready(self) -> bool:
        return self.predictor is not None

    def load(self) -> None:
        import torch

        from models.serving import Predictor
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        pred = Predictor.from_uri(self.uri)   # models.registry: weights_only loading
        check_feature_spec(pred.feature_spec, self.expect_spec_hash)
        warm_tracks = _warmup_tracks(pred.step_s, pred.dcfg.history_steps + 4)
        try:
            warm = pred.prepare(warm_tracks, pairs=[("WARM1", "WARM2")], n_alternatives=4)
            (dec, _), = pred.infer([warm])
        except Exception as exc:   # noqa: BLE001
            raise ModelError(f"the model failed its warm-up prediction: {type(exc).__name__}: {exc}") from None
        if len(dec["time"]) != 1:
            raise ModelError("the model failed its warm-up prediction: no decision returned")
        if self.runtime != "torch":
            self._use_onnx(pred, warm)
        try:
            for n in (2, 8):   # the batched shapes the micro-batcher will use, on the runtime that will serve
                pred.infer([warm] * n)
        except Exception as exc:   # noqa: BLE001
            raise ModelError(f"the model failed its batched warm-up: {type(exc).__name__}: {exc}") from None
        meta = pred.metadata()
        self.info = {**meta, "version": model_version(self.uri), "loaded_at": datetime.now(UTC)}
        self.predictor = pred
        log.info("model %s loaded (spec_hash %s, %d history steps, context network on %s)", self.uri,
                 meta["spec_hash"], meta["history_steps"], meta["runtime"])

    def _use_onnx(self, pred, warm) -> None:
        """The context network on ONNX Runtime (checked against PyTorch on the warm-up features ``warm``);
        ``auto`` keeps PyTorch with a warning when that is not possible, ``onnx`` refuses to start."""
        why = pred.use_onnx([warm.features])
        if why and self.runtime == "onnx":
            raise ModelError(f"--runtime onnx: {why}")
        if why:
            log.warning("the context network stays on PyTorch: %s", why)

    def ref(self) -> dict:
        return {"name": self.info["name"], "spec_hash": self.info["spec_hash"]}

    # ------------------------------------------------------------------ the two halves of a prediction
    def picture(self, aircraft):
        """Request aircraft -> the model's grid picture (no DataFrame on the way)."""
        from pipelines.picture import Picture
        pts = [p for ac in aircraft for p in ac.points]
        counts = [len(ac.points) for ac in aircraft]
        ids = np.repeat(np.array([ac.flight_id for ac in aircraft], dtype=object), counts)
        us = np.fromiter(((p.time - _EPOCH) // _US for p in pts), dtype=np.int64, count=len(pts))
        cols = {c: _floats(getattr(p, c) for p in pts) for c in TRACK_COLUMNS[3:]}
        return Picture.from_points(ids, us * 1000, cols, self.predictor.step_s)

    def prepare_conflict(self, req, index: int | None = None):
        """A conflict request -> its features (CPU work; raises DataError, as ItemError for a batch item)."""
        try:
            return self.predictor.prepare(
                self.picture([*req.aircraft, *req.neighbours]), at=req.at,
                clearances=clearances_frame(req.clearances), n_alternatives=req.n_alternatives,
                pairs=[(req.aircraft[0].flight_id, req.aircraft[1].flight_id)], seed=req.seed,
                flight_plans=flight_plans_frame(req.flight_plans))
        except DataError as exc:
            if index is not None:
                raise ItemError(index, exc) from None
            raise

    def conflict_limit(self, n_alternatives: int) -> int | None:
        """Most conflicts one request may create: ``max_conflicts``, and fewer when each asks for alternatives
        (``max_alternative_samples`` sampled decisions in all)."""
        limits = [x for x in (self.max_conflicts,
                              self.max_alternative_samples // n_alternatives
                              if self.max_alternative_samples and n_alternatives else None) if x is not None]
        return min(limits) if limits else None

    def prepare_detect(self, req):
        return self.predictor.prepare(self.picture(req.aircraft), at=req.at,
                                      clearances=clearances_frame(req.clearances),
                                      n_alternatives=req.n_alternatives, seed=req.seed,
                                      flight_plans=flight_plans_frame(req.flight_plans),
                                      max_conflicts=self.conflict_limit(req.n_alternatives))

    def infer(self, items: list) -> list:
        """One forward pass for the prepared requests (see :meth:`models.serving.Predictor.infer`)."""
        return self.predictor.infer(items)

    @staticmethod
    def conflicts_out(item, result) -> list[dict]:
        """A prepared request and its inference result -> one response dict per conflict."""
        dec, alts = result
        s = item.samples
        cols = {k: s.extra[k] if k in s.extra else np.full(len(s), None, dtype=object)
                for k in ("conflict", "los", "tcpa_s", "dcpa_nm", "dist_nm")}
        out = []
        for i in range(len(s)):
            conflict, los = cols["conflict"][i], cols["los"][i]
            out.append({
                "time": _utc(dec["time"][i]),
                "conflict": {"flight_id_1": str(dec["flight_id_1"][i]), "flight_id_2": str(dec["flight_id_2"][i]),
                             "in_conflict": _flag(conflict), "los": _flag(los), "tcpa_s": _num(cols["tcpa_s"][i]),
                             "dcpa_nm": _num(cols["dcpa_nm"][i]), "dist_nm": _num(cols["dist_nm"][i])},
                "decision": {"act": bool(dec["act"][i]), "p_act": _num(dec["p_act"][i]),
                             "aircraft": int(dec["aircraft"][i]) + 1, "flight_id": str(dec["flight_id"][i]),
                             "action_type": str(dec["action_type"][i]), "value": _num(dec["value"][i]),
                             "unit": str(dec["unit"][i])},
                "alternatives": [{"aircraft": int(m["aircraft"]) + 1, "flight_id": str(m["flight_id"]),
                                  "action_type": m["action_type"], "value": _num(m["value"]), "unit": m["unit"],
                                  "probability": _num(m["probability"]),
                                  "probability_given_act": float(m["probability_given_act"])}
                                 for m in (alts[i] if alts else [])]})
        return out

    def detect_out(self, req, item, result) -> dict:
        conflicts = self.conflicts_out(item, result)
        if conflicts:
            t = conflicts[0]["time"]
        else:
            last = req.at or max(ac.points[-1].time for ac in req.aircraft)
            t = pd.Timestamp(last).floor(f"{int(self.predictor.step_s)}s").to_pydatetime()
        return {"time": t, "n_aircraft": len(req.aircraft), "conflicts": conflicts}


def _utc(ns) -> datetime:
    """UTC nanoseconds -> an aware datetime (microseconds)."""
    return _EPOCH + timedelta(microseconds=int(ns) // 1000)


def _flag(x) -> bool:
    return bool(x) if x is not None and not pd.isna(x) else False


def flight_plans_frame(plans) -> pd.DataFrame | None:
    """Request flight plans -> flight-plan contract rows (None when there are none)."""
    if not plans:
        return None
    rows = [(fp.flight_id, w.seq, w.waypoint, w.lat_deg, w.lon_deg, w.alt_ft, w.time)
            for fp in plans for w in fp.waypoints]
    df = pd.DataFrame(rows, columns=["flight_id", "seq", "waypoint", "lat_deg", "lon_deg", "alt_ft", "time"])
    df["time"] = pd.to_datetime(df["time"], utc=True)
    df["alt_ft"] = pd.to_numeric(df["alt_ft"], errors="coerce").astype(float)
    return df
