"""Training data: a split loaded into tensors once, served in index batches.

No per-sample Python work: a sampler yields index tensors (shuffled per epoch from a seed, sharded by
rank under DistributedDataParallel the way ``DistributedSampler`` does), and the "dataset" slices
every big tensor with one ``index_select`` per batch. Batches come out as
``(Observations, Decisions)``; pinned memory when training on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from atc_il.errors import ModelError
from atc_il.feature_spec import FeatureSpec
from models.interface import OBS_KEYS, Decisions, Observations
from pipelines.shards import load_split

LABEL_KEYS = ("label_act", "label_aircraft", "label_type", "label_value")


def _shape(spec: FeatureSpec | dict, name: str) -> list[int] | None:
    if isinstance(spec, FeatureSpec):
        return spec.shape(name) if name in spec.tensors else None
    return spec.get("tensors", {}).get(name, {}).get("shape")     # a partial dict (a checkpoint's summary)


def check_spec(data_spec: FeatureSpec | dict, policy_spec: FeatureSpec | dict, where: str = "data set") -> None:
    """Raise ModelError when a data set's features are not what a policy was built for.

    Either side may be a FeatureSpec or a (possibly partial) dict with ``spec_hash`` and ``tensors``.
    """
    def hash_of(spec: FeatureSpec | dict) -> str | None:
        return spec.spec_hash if isinstance(spec, FeatureSpec) else spec.get("spec_hash")
    want, got = hash_of(policy_spec), hash_of(data_spec)
    diffs = []
    for name in OBS_KEYS:
        ps, ds = _shape(policy_spec, name), _shape(data_spec, name)
        if ps != ds:
            diffs.append(f"{name} {ds} (policy: {ps})")
    if want != got or diffs:
        detail = f"; shapes differ: {', '.join(diffs)}" if diffs else ""
        raise ModelError(f"{where}: feature spec {got} does not match the policy's {want}{detail}; "
                         "train a new model on this data set or use the data set the model was trained on")


@dataclass
class SplitData:
    """One split as contiguous tensors: observation tensors (float32) and labels."""
    split: str
    spec: dict
    tensors: dict

    @property
    def feature_spec(self) -> FeatureSpec:
        """The typed form of ``spec`` (the dict form, kept for callers that index it by key)."""
        return FeatureSpec.of(self.spec)

    def __len__(self) -> int:
        return int(self.tensors["pair"].shape[0])

    def batch(self, idx: torch.Tensor | None = None) -> tuple[Observations, Decisions]:
        t = self.tensors if idx is None else {k: v.index_select(0, idx) for k, v in self.tensors.items()}
        return to_batch(t)


def to_batch(t: dict) -> tuple[Observations, Decisions]:
    return (Observations(*(t[k] for k in OBS_KEYS)),
            Decisions(t["label_act"], t["label_aircraft"], t["label_type"], t["label_value"]))


def load_data(dataset_dir: str | Path, split: str, expect: FeatureSpec | dict | None = None) -> SplitData:
    """Load a split (via :func:`load_split`); with ``expect`` (a policy's spec) check it fits first."""
    typed = FeatureSpec.load(dataset_dir)
    spec = typed.to_dict()
    if expect is not None:
        check_spec(typed, expect, f"{dataset_dir} ({split})")
    raw = load_split(dataset_dir, split, columns=list(OBS_KEYS + LABEL_KEYS))
    tensors = {k: raw[k].float().contiguous() for k in OBS_KEYS}
    for k in LABEL_KEYS:
        tensors[k] = raw[k].float().contiguous() if k == "label_value" else raw[k].long().contiguous()
    for k in OBS_KEYS:
        shape = list(tensors[k].shape[1:])
        if shape != typed.shape(k):
            raise ModelError(f"{dataset_dir} ({split}): {k} has shape {shape}, the spec says {typed.shape(k)}")
    return SplitData(split, spec, tensors)


class IndexBatchSampler(Sampler):
    """Yields index tensors of one batch each; shuffled per epoch from (seed, epoch); sharded by rank.

    Under ``world_size`` > 1 every rank draws the same permutation, pads it (``pad``) to a multiple of
    the world size and keeps every world_size-th index, so all ranks see the same number of batches.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False, pad: bool = True):
        if n <= 0:
            raise ModelError("empty split: nothing to iterate")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last, self.pad = rank, world_size, drop_last, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            idx = torch.randperm(self.n, generator=g)
        else:
            idx = torch.arange(self.n)
        if self.world_size > 1:
            if self.pad and self.n % self.world_size:
                extra = self.world_size - self.n % self.world_size
                idx = torch.cat([idx, idx.repeat(extra // self.n + 1)[:extra]])
            idx = idx[self.rank::self.world_size]
        return idx

    def __len__(self) -> int:
        if self.world_size == 1:
            m = self.n
        elif self.pad:
            m = -(-self.n // self.world_size)
        else:
            m = len(range(self.rank, self.n, self.world_size))
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def __iter__(self):
        idx = self._indices()
        for b in idx.split(self.batch_size):
            if self.drop_last and len(b) < self.batch_size:
                return
            yield b


class _Slices(Dataset):
    def __init__(self, tensors: dict):
        self.tensors = tensors

    def __len__(self) -> int:
        return int(next(iter(self.tensors.values())).shape[0])

    def __getitem__(self, idx: torch.Tensor) -> dict:
        return {k: v.index_select(0, idx) for k, v in self.tensors.items()}


def _identity(x):
    return x


class BatchLoader:
    """Iterates ``(Observations, Decisions)`` batches of a :class:`SplitData`."""

    def __init__(self, data: SplitData, batch_size: int, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, pin_memory: bool = False, num_workers: int = 0, drop_last: bool = False,
                 pad: bool = True):
        self.data = data
        self.sampler = IndexBatchSampler(len(data), batch_size, shuffle, seed, rank, world_size, drop_last, pad)
        self.loader = DataLoader(_Slices(data.tensors), batch_size=None, sampler=self.sampler, collate_fn=_identity,
                                 pin_memory=pin_memory, num_workers=num_workers,
                                 persistent_workers=num_workers > 0)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for t in self.loader:
            yield to_batch(t)
