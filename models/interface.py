"""The policy interface every atc-il model implements, and the tensors that flow through it.

Shape contract (from the data set's feature spec; B = batch, H = history steps, K = neighbours,
M = recent clearances, F_* = features per tensor, see docs/contracts.md):

    Observation batch                                  Decision batch
    pair        (B, H, 2, F_pose)   float32            act       (B,)   long   0 = no action now, 1 = act
    neighbours  (B, H, K, F_pose)   float32            aircraft  (B,)   long   0 = aircraft 1, 1 = aircraft 2 (-1 if act = 0)
    geometry    (B, H, F_geom)      float32            type      (B,)   long   index into ACTION_TYPES (-1 if act = 0)
    clearances  (B, M, F_clr)       float32            value     (B,)   float  signed change in the type's unit (NaN if act = 0)

The last feature of every observation tensor is ``valid`` (1 = observed, 0 = padding); raw (not
normalised) features go in, and each policy normalises them itself with the statistics of its
training split, which it saves with its weights.

A policy (``torch.nn.Module``):
- ``loss(obs, dec) -> (loss, logs)``: the training loss on a batch (logs: floats for tracking);
- ``sample(obs, n, generator=None) -> Decisions`` with tensors shaped (B, n);
- ``log_prob(obs, dec) -> (B,)``: log-likelihood of given decisions under the model, in nats, with the
  value's density in the type's unit (so numbers compare across heads); a head without an exact
  likelihood sets ``exact_log_prob = False`` and returns an estimate, or raises NotImplementedError;
- ``predict(obs) -> Decisions`` (B,): the deterministic most-likely decision, for serving.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch

from atc_il.errors import ModelError
from atc_il.schemas import ACTION_TYPES

OBS_KEYS = ("pair", "neighbours", "geometry", "clearances")
N_TYPES = len(ACTION_TYPES)
# the scale of a "unit" change per type, used to put values of different types on one footing
VALUE_SCALE = {"heading": 30.0, "altitude": 1000.0, "speed": 20.0, "direct_to": 30.0, "resume": 1.0}
VALUE_SCALE_T = torch.tensor([VALUE_SCALE[t] for t in ACTION_TYPES])


@dataclass
class Observations:
    pair: torch.Tensor
    neighbours: torch.Tensor
    geometry: torch.Tensor
    clearances: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> "Observations":
        return Observations(*(getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)))

    @property
    def batch_size(self) -> int:
        return self.pair.shape[0]

    @classmethod
    def from_dict(cls, d: dict) -> "Observations":
        missing = [k for k in OBS_KEYS if k not in d]
        if missing:
            raise ModelError(f"observations lack {missing}")
        return cls(*(torch.as_tensor(d[k], dtype=torch.float32) for k in OBS_KEYS))


@dataclass
class Decisions:
    act: torch.Tensor
    aircraft: torch.Tensor
    type: torch.Tensor
    value: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> "Decisions":
        return Decisions(*(getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)))

    @classmethod
    def from_labels(cls, d: dict) -> "Decisions":
        """From data-set label columns (label_act, label_aircraft, label_type, label_value)."""
        return cls(torch.as_tensor(d["label_act"]).long(), torch.as_tensor(d["label_aircraft"]).long(),
                   torch.as_tensor(d["label_type"]).long(), torch.as_tensor(d["label_value"]).float())


class Registry:
    """Names to factories; configs pick by name, never by nested if/else."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable] = {}

    def register(self, name: str):
        def deco(obj):
            if name in self._items:
                raise ModelError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj
        return deco

    def get(self, name: str) -> Callable:
        if name not in self._items:
            raise ModelError(f"unknown {self.kind} {name!r}; known: {sorted(self._items)}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)


ENCODERS = Registry("encoder")
HEADS = Registry("head")
