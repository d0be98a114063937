"""Observation-history shards: parquet files with fixed-size-list tensor columns, the feature spec,
normalisation statistics (training split only) and loading as tensors without per-sample loops."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from atc_il.errors import DataError
from atc_il.feature_spec import SPEC_FILE as _SPEC_FILE
from atc_il.feature_spec import FeatureSpec
from atc_il.io import atomic_write_table
from atc_il.runs import require_complete

TENSORS = ("pair", "neighbours", "geometry", "clearances")
SPEC_FILE = _SPEC_FILE


class RunningStats:
    """Per-feature mean and standard deviation over valid entries, accumulated chunk by chunk (float64)."""

    def __init__(self, n_features: int):
        self.n = np.zeros(n_features)
        self.s = np.zeros(n_features)
        self.ss = np.zeros(n_features)

    def update(self, x: np.ndarray) -> None:
        flat = x.reshape(-1, x.shape[-1])
        valid = flat[:, -1] > 0.5          # the last feature of every tensor is `valid`
        v = flat[valid].astype(np.float64)  # the valid rows only, then float64 (the same values and order)
        self.n += len(v)
        self.s += v.sum(0)
        self.ss += (v * v).sum(0)

    def result(self, normalise: list[bool]) -> dict:
        n = np.maximum(self.n, 1)
        mean = self.s / n
        std = np.sqrt(np.maximum(self.ss / n - mean * mean, 0.0))
        std = np.where(std < 1e-6, 1.0, std)
        keep = np.array(normalise)
        return {"mean": np.where(keep, mean, 0.0).round(6).tolist(),
                "std": np.where(keep, std, 1.0).round(6).tolist(), "count": int(self.n.max())}


def write_shard(path: Path, meta: pd.DataFrame, tensors: dict[str, np.ndarray], labels: pd.DataFrame) -> Path:
    cols = {c: pa.array(meta[c].to_numpy() if c != "time" else meta[c]) for c in meta.columns}
    for name, arr in tensors.items():
        if arr.size == 0 and arr.ndim > 1 and int(np.prod(arr.shape[1:])) == 0:
            continue       # an empty tensor (M = 0 clearances, K = 0 neighbours): arrow has no 0-size lists
        flat = pa.array(np.ascontiguousarray(arr, dtype=np.float32).reshape(-1))
        cols[name] = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(arr.shape[1:])))
    for c in labels.columns:
        cols[c] = pa.array(labels[c].to_numpy())
    # float tensors: no dictionary or statistics (useless there), fastest zstd level (measured: 40 % faster, smaller)
    return atomic_write_table(pa.table(cols), path, compression="zstd", compression_level=1,
                              use_dictionary=False, write_statistics=False)


def spec_hash(spec: dict) -> str:
    """Hash of what a model depends on: tensor shapes, feature names and units, label coding."""
    core = {"tensors": spec["tensors"], "labels": spec["labels"]}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def read_spec(dataset_dir: str | Path) -> dict:
    """The data set's feature spec in its plain dict form (validated, one-line errors naming the file; a data set
    whose run was interrupted is refused); :meth:`FeatureSpec.load` gives the typed one."""
    path = Path(dataset_dir) / SPEC_FILE
    if not path.exists():
        raise DataError(f"{path}: no feature spec; build the data set with `atc-il dataset` first")
    require_complete(dataset_dir, "dataset")
    return FeatureSpec.load(path).to_dict()


def load_split(dataset_dir: str | Path, split: str, as_torch: bool = True, columns: list[str] | None = None) -> dict:
    """Load every shard of a split as arrays shaped by the feature spec: ``pair`` (N, H, 2, F), labels (N,)...

    No Python loop per sample: each column is read once and reshaped.
    """
    dataset_dir = Path(dataset_dir)
    spec = FeatureSpec.load(dataset_dir / SPEC_FILE)
    files = sorted((dataset_dir / f"split={split}").glob("*.parquet"))
    if not files:
        units = {s: len(v.get("keys", [])) for s, v in (spec.splits or {}).items() if isinstance(v, dict)}
        unit = next((v.get("unit") for v in (spec.splits or {}).values() if isinstance(v, dict)), None)
        hint = (f"; its samples come from {sum(units.values())} {unit}(s) and a split takes whole {unit}s: rebuild "
                f"it from more data or with smaller split units (a day or two of tracks: atc-il dataset --split hour)") if unit else ""
        raise DataError(f"{dataset_dir}: split {split!r} has no shards (splits: {list(spec.splits or {})}){hint}")
    empty = [k for k, t in spec.tensors.items() if int(np.prod(t.shape)) == 0
             and (columns is None or k in columns)]            # not stored (see write_shard): zeros
    read = None if columns is None else [c for c in columns if c not in empty]
    table = pa.concat_tables([pq.read_table(f, columns=read) for f in files])
    out: dict = {k: np.zeros([table.num_rows] + spec.shape(k), dtype=np.float32) for k in empty}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if name in spec.tensors:
            shape = spec.shape(name)
            arr = col.values.to_numpy(zero_copy_only=False).reshape([len(col)] + shape)
        elif pa.types.is_timestamp(col.type):
            arr = col.cast(pa.int64()).to_numpy(zero_copy_only=False)
        elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            out[name] = col.to_pylist()
            continue
        else:
            arr = col.to_numpy(zero_copy_only=False)
        out[name] = arr
    if as_torch:
        import torch
        # arrow buffers are read-only; torch needs writable memory (one copy, no per-sample work)
        out = {k: torch.from_numpy(v if v.flags.writeable and v.flags.c_contiguous else np.array(v))
               if isinstance(v, np.ndarray) else v for k, v in out.items()}
    return out
