"""The service's model: loaded once, checked against the features this code builds, and called through the
one prediction function (:meth:`models.serving.Predictor.detect_and_predict`) the offline paths use.

Also the conversions at the edge: request schemas -> canonical track / action DataFrames, and the
predictor's frames -> response dicts (non-finite numbers become null, never a JSON error).
"""

from __future__ import annotations

import logging
import math
import re
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from atc_il.errors import DataError, ModelError
from atc_il.schemas import ACTION_UNITS, action_id

log = logging.getLogger("atc_il.api")
TRACK_COLUMNS = ["time", "flight_id", "callsign", "lat_deg", "lon_deg", "alt_ft", "gs_kt", "trk_deg", "vs_fpm",
                 "cfl_ft"]
ACTION_COLUMNS = ["action_id", "time", "flight_id", "action_type", "value", "unit", "target_value", "waypoint",
                  "source", "confidence"]


class ItemError(DataError):
    """A DataError raised for one conflict of a batch (``index``)."""

    def __init__(self, index: int, exc: Exception):
        self.index = index
        super().__init__(f"conflicts[{index}]: {exc}")


def check_feature_spec(spec: dict, expect_spec_hash: str | None = None) -> str:
    """The policy's feature spec must be exactly what this service's feature builder produces for the
    policy's own data-set configuration (shapes, features, units, label coding); returns its hash."""
    from atc_il.config import DatasetConfig
    from pipelines.dataset import feature_spec
    from pipelines.shards import spec_hash

    missing = [k for k in ("tensors", "labels", "config", "step_s", "spec_hash", "normalisation") if not spec.get(k)]
    if missing:
        raise ModelError(f"the model's feature spec lacks {missing}; it was not saved from a data set built by "
                         "atc-il's dataset stage and cannot be served")
    try:
        own = spec_hash(spec)
        built = spec_hash(feature_spec(DatasetConfig(**spec["config"]), float(spec["step_s"])))
    except Exception as exc:   # noqa: BLE001  (any malformed spec is the model's fault: one clear message)
        raise ModelError(f"the model's feature spec is malformed ({type(exc).__name__}: {exc})") from None
    if own != spec["spec_hash"]:
        raise ModelError(f"the model's feature spec was altered: it declares spec_hash {spec['spec_hash']} but "
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


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)


def _times(ts) -> pd.DatetimeIndex:
    """Aware datetimes -> UTC nanosecond timestamps, exactly (integer microseconds, no float rounding)."""
    us = np.fromiter(((t - _EPOCH) // _US for t in ts), dtype=np.int64)
    return pd.DatetimeIndex(us * 1000, tz="UTC").as_unit("ns") if len(us) else pd.DatetimeIndex([], tz="UTC")


def _floats(values) -> np.ndarray:
    return np.fromiter((np.nan if v is None else v for v in values), dtype=float)


def tracks_frame(tracks) -> pd.DataFrame:
    """Aircraft tracks (request schema) -> canonical track points (built column-wise: ~0.2 ms for 48 points)."""
    pts = [p for ac in tracks for p in ac.points]
    counts = [len(ac.points) for ac in tracks]
    cols = {"time": _times(p.time for p in pts),
            "flight_id": np.repeat(np.array([ac.flight_id for ac in tracks], dtype=object), counts),
            "callsign": np.repeat(np.array([ac.callsign for ac in tracks], dtype=object), counts)}
    for c in TRACK_COLUMNS[3:]:
        cols[c] = _floats(getattr(p, c) for p in pts)
    return pd.DataFrame(cols).assign(source="api")


def clearances_frame(clearances) -> pd.DataFrame | None:
    if not clearances:
        return None
    rows = [(c.action_id or action_id(c.flight_id, c.time, c.action_type), c.time, c.flight_id, c.action_type,
             float(c.value), ACTION_UNITS[c.action_type] if c.unit is None else c.unit, c.target_value, c.waypoint,
             c.source, float(c.confidence)) for c in clearances]
    df = pd.DataFrame(rows, columns=ACTION_COLUMNS)
    df["time"] = pd.to_datetime(df["time"], utc=True)
    df["target_value"] = pd.to_numeric(df["target_value"], errors="coerce").astype(float)
    return df


def prediction(sample: pd.Series, dec: pd.Series, alts: list | None) -> dict:
    """One conflict's decision in the response schema (aircraft numbered 1 and 2 as in the contracts)."""
    conflict = sample.get("conflict")
    known = conflict is not None and not pd.isna(conflict)
    los = sample.get("los")
    return {
        "time": pd.Timestamp(dec["time"]).to_pydatetime(),
        "conflict": {"flight_id_1": str(dec["flight_id_1"]), "flight_id_2": str(dec["flight_id_2"]),
                     "in_conflict": bool(conflict) if known else False,
                     "los": bool(los) if los is not None and not pd.isna(los) else False,
                     "tcpa_s": _num(sample.get("tcpa_s")), "dcpa_nm": _num(sample.get("dcpa_nm")),
                     "dist_nm": _num(sample.get("dist_nm"))},
        "decision": {"act": bool(dec["act"]), "p_act": _num(dec["p_act"]), "aircraft": int(dec["aircraft"]) + 1,
                     "flight_id": str(dec["flight_id"]), "action_type": str(dec["action_type"]),
                     "value": _num(dec["value"]), "unit": str(dec["unit"])},
        "alternatives": [{"aircraft": int(m["aircraft"]) + 1, "flight_id": str(m["flight_id"]),
                          "action_type": m["action_type"], "value": _num(m["value"]), "unit": m["unit"],
                          "probability": _num(m["probability"]),
                          "probability_given_act": float(m["probability_given_act"])} for m in (alts or [])],
    }


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

    def __init__(self, uri: str, expect_spec_hash: str | None = None, torch_threads: int | None = None):
        self.uri = str(uri)
        self.expect_spec_hash = expect_spec_hash
        self.torch_threads = torch_threads
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
        check_feature_spec(pred.policy.spec, self.expect_spec_hash)
        try:
            _, dec, _ = pred.detect_and_predict(_warmup_tracks(pred.step_s, pred.dcfg.history_steps + 4),
                                                pairs=[("WARM1", "WARM2")], n_alternatives=4)
        except Exception as exc:   # noqa: BLE001
            raise ModelError(f"the model failed its warm-up prediction: {type(exc).__name__}: {exc}") from None
        if len(dec) != 1:
            raise ModelError("the model failed its warm-up prediction: no decision returned")
        meta = pred.metadata()
        self.info = {**meta, "version": model_version(self.uri), "loaded_at": datetime.now(timezone.utc)}
        self.predictor = pred
        log.info("model %s loaded (spec_hash %s, %d history steps)", self.uri, meta["spec_hash"],
                 meta["history_steps"])

    def ref(self) -> dict:
        return {"name": self.info["name"], "spec_hash": self.info["spec_hash"]}

    def predict_conflicts(self, requests: list, batch: bool = False) -> list[dict]:
        """One decision per conflict request, each through ``detect_and_predict`` with ``pairs``."""
        out = []
        for i, req in enumerate(requests):
            ids = (req.aircraft[0].flight_id, req.aircraft[1].flight_id)
            try:
                samples, dec, alts = self.predictor.detect_and_predict(
                    tracks_frame([*req.aircraft, *req.neighbours]), at=req.at,
                    clearances=clearances_frame(req.clearances), n_alternatives=req.n_alternatives,
                    pairs=[ids], seed=req.seed)
            except DataError as exc:
                if batch:
                    raise ItemError(i, exc) from None
                raise
            if len(dec) != 1:   # the prediction function returns one row per requested pair
                raise RuntimeError(f"expected one decision, got {len(dec)}")
            out.append(prediction(samples.iloc[0], dec.iloc[0], alts[0] if alts else None))
        return out

    def detect(self, req) -> dict:
        step = self.predictor.step_s
        samples, dec, alts = self.predictor.detect_and_predict(
            tracks_frame(req.aircraft), at=req.at, clearances=clearances_frame(req.clearances),
            n_alternatives=req.n_alternatives, seed=req.seed)
        if len(dec):
            t = pd.Timestamp(dec["time"].iloc[0])
        else:
            last = req.at or max(ac.points[-1].time for ac in req.aircraft)
            t = pd.Timestamp(last).floor(f"{int(step)}s")
        return {"time": t.to_pydatetime(), "n_aircraft": len(req.aircraft),
                "conflicts": [prediction(samples.iloc[i], dec.iloc[i], alts[i] if alts else None)
                              for i in range(len(dec))]}
