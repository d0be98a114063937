"""The data set's feature spec as a typed contract (``feature_spec.json``).

The feature building (:func:`pipelines.features.feature_spec`) and the data-set stage build it; the models,
the serving code, the API and the benches read it through this model instead of string keys. The JSON form is
unchanged: :meth:`FeatureSpec.to_dict` gives the same keys as the plain dict of earlier releases, old files load,
and :meth:`FeatureSpec.hash` equals ``pipelines.shards.spec_hash`` of the dict form.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from atc_il.errors import AtcIlError, DataError

SPEC_FILE = "feature_spec.json"
# keys left out of the JSON form when they are not set (a spec straight from the feature building has none of them)
_OPTIONAL = ("normalisation", "normalisation_split", "splits", "spec_hash")


class Feature(BaseModel):
    """One feature of a tensor's last axis."""
    model_config = ConfigDict(extra="allow")
    name: str
    unit: str
    normalise: bool


class TensorSpec(BaseModel):
    """One input tensor (per sample): its shape, the names of its axes and the features of its last axis."""
    model_config = ConfigDict(extra="allow")
    shape: list[int]
    dims: list[str]
    features: list[Feature]

    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


class NormStats(BaseModel):
    """Per-feature mean and std of one tensor (identity, 0 and 1, for features that are not normalised)."""
    model_config = ConfigDict(extra="allow")
    mean: list[float]
    std: list[float]
    count: int | None = None


class FeatureSpec(BaseModel):
    """What a data set's tensors hold; what a model trained on it depends on."""
    model_config = ConfigDict(extra="allow")
    version: int = 1
    step_s: float
    time_order: str = ""
    frame: str = ""
    tensors: dict[str, TensorSpec]
    labels: dict[str, Any] = {}
    config: dict[str, Any] = {}
    normalisation: dict[str, NormStats] | None = None
    normalisation_split: str | None = None
    splits: dict[str, Any] | None = None
    spec_hash: str | None = None

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def of(cls, spec: FeatureSpec | dict, source: str = "feature spec",
           error: type[AtcIlError] = DataError) -> FeatureSpec:
        """The typed form of ``spec`` (a FeatureSpec is returned as it is; a dict is validated).

        An invalid spec raises ``error`` (DataError, or ModelError where a model reads it) naming the field.
        """
        if isinstance(spec, FeatureSpec):
            return spec
        if not isinstance(spec, dict):
            raise error(f"{source}: a feature spec must be a JSON object, got {type(spec).__name__}")
        try:
            return cls.model_validate(spec)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "(top)"
            raise error(f"{source}: invalid feature spec, field {field}: {err['msg']}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "feature spec",
                  error: type[AtcIlError] = DataError) -> FeatureSpec:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise error(f"{source}: corrupt feature spec, not valid JSON ({e.msg}, line {e.lineno})") from None
        return cls.of(obj, source, error)

    @classmethod
    def load(cls, path: str | Path, error: type[AtcIlError] = DataError) -> FeatureSpec:
        """Read a ``feature_spec.json`` (or the file inside a data-set directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / SPEC_FILE
        if not path.exists():
            raise error(f"{path}: no feature spec; build the data set with `atc-il dataset` first")
        try:
            text = path.read_text()
        except OSError as e:
            raise error(f"{path}: cannot read the feature spec ({e.strerror})") from None
        return cls.from_json(text, str(path), error)

    # ---- serialisation ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The plain dict form, the same keys as ``feature_spec.json`` (unset optional keys left out)."""
        d = self.model_dump(mode="json")
        for key in _OPTIONAL:
            if d.get(key) is None:
                d.pop(key, None)
        for st in (d.get("normalisation") or {}).values():
            if st.get("count") is None:
                st.pop("count", None)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n"

    def hash(self) -> str:
        """Hash of what a model depends on: tensor shapes, feature names and units, label coding.

        Equal to ``pipelines.shards.spec_hash`` of :meth:`to_dict`.
        """
        d = self.to_dict()
        core = {"tensors": d["tensors"], "labels": d["labels"]}
        return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]

    # ---- reading ------------------------------------------------------------------------------------------
    def tensor(self, name: str) -> TensorSpec:
        try:
            return self.tensors[name]
        except KeyError:
            raise DataError(f"feature spec: no tensor {name!r} (has {sorted(self.tensors)})") from None

    def feature_names(self, tensor: str) -> list[str]:
        return self.tensor(tensor).feature_names()

    def index(self, tensor: str, name: str) -> int:
        names = self.feature_names(tensor)
        if name not in names:
            raise DataError(f"feature spec: tensor {tensor!r} has no feature {name!r}")
        return names.index(name)

    def shape(self, tensor: str) -> list[int]:
        return list(self.tensor(tensor).shape)

    def norm(self, tensor: str) -> NormStats | None:
        return (self.normalisation or {}).get(tensor)
