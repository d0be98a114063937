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

:class:`PolicyInterface` is the only way callers reach a model (serving, evaluation, the model controller,
batch prediction, the benches): they never reach into a policy's modules. Every method that takes
observations also takes a :class:`Context`, the batch's conditioning computed once by ``encode`` (or by the
exported context network, :mod:`models.onnx_context`), so a caller asking several questions of one batch
runs the encoder once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from atc_il.errors import ModelError
from atc_il.schemas import ACTION_TYPES

T = TypeVar("T", bound=Callable)

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

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Observations:
        return Observations(*(getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)))

    @property
    def batch_size(self) -> int:
        return self.pair.shape[0]

    @classmethod
    def from_dict(cls, d: dict) -> Observations:
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

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Decisions:
        return Decisions(*(getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)))

    @classmethod
    def from_labels(cls, d: dict) -> Decisions:
        """From data-set label columns (label_act, label_aircraft, label_type, label_value)."""
        return cls(torch.as_tensor(d["label_act"]).long(), torch.as_tensor(d["label_aircraft"]).long(),
                   torch.as_tensor(d["label_type"]).long(), torch.as_tensor(d["label_value"]).float())


class Registry:
    """Names to factories; configs pick by name, never by nested if/else."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
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


@dataclass(frozen=True)
class Context:
    """A batch's conditioning (B, C), from :meth:`PolicyInterface.encode`; slicing gives a sub-batch's."""
    tensor: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, rows: slice) -> Context:
        return Context(self.tensor[rows])


@runtime_checkable
class PolicyInterface(Protocol):
    """What a policy offers its callers. ``obs`` is an :class:`Observations` batch or its :class:`Context`.

    - ``loss(obs, dec) -> (loss, logs)``: the training loss on a batch (logs: floats for tracking);
    - ``encode(obs) -> Context``: the conditioning of a batch, to pass to the methods below;
    - ``p_act(obs) -> (B,)``: the probability of acting now (float32);
    - ``predict(obs) -> Decisions`` (B,): the most likely decision (act or not, and the action);
    - ``predict_action(obs) -> Decisions`` (B,): the most likely action GIVEN that the controller acts (act = 1);
    - ``sample(obs, n, generator) -> Decisions`` (B, n): decisions drawn from the policy;
    - ``sample_actions(obs, n, generator) -> Decisions`` (B, n): actions drawn given that the controller acts;
    - ``log_prob(obs, dec) -> (B,)``: log-likelihood of given decisions, in nats, with the value's density in
      the type's unit (so numbers compare across heads); where ``exact_log_prob`` is False it is an estimate;
    - ``log_prob_terms(obs, dec)``: its terms (B,) each: ``act``, ``aircraft``, ``type``, ``value``;
    - ``has_latent``, ``posterior_mean(obs) -> (B, L)``: E[z | history] of the history VAE (ModelError
      without one);
    - ``has_discrete_code``, ``code_prior(obs)``, ``code_posterior(obs, dec)``: a head's discrete code
      (cvae, ``latent = discrete``; ModelError for other heads) or the session style code;
    - ``session_prior()``: the session style code's distribution before any clearance (None without one);
      ``p_act``, ``predict_action`` and ``sample_actions`` take ``code`` (B,) to hold the style code fixed
      where >= 0;
    - ``context_module() -> nn.Module``: the context network alone, (pair, neighbours, geometry, clearances)
      -> (B, C), for export (:mod:`models.onnx_context`).

    ``predict``, ``predict_action``, ``sample``, ``sample_actions`` and ``log_prob`` pass keyword ``options``
    to the head (the diffusion head's ``sampling_steps``).
    """

    config: Any
    spec: Any
    exact_log_prob: bool

    def loss(self, obs: Observations, dec: Decisions) -> tuple[torch.Tensor, dict[str, float]]: ...

    def encode(self, obs: Observations | Context) -> Context: ...

    def p_act(self, obs: Observations | Context, code: torch.Tensor | None = None) -> torch.Tensor: ...

    def predict(self, obs: Observations | Context, **options: Any) -> Decisions: ...

    def predict_action(self, obs: Observations | Context, code: torch.Tensor | None = None,
                       **options: Any) -> Decisions: ...

    def session_prior(self) -> torch.distributions.Categorical | None: ...

    def sample(self, obs: Observations | Context, n: int, generator: torch.Generator | None = None,
               **options: Any) -> Decisions: ...

    def sample_actions(self, obs: Observations | Context, n: int, generator: torch.Generator | None = None,
                       code: torch.Tensor | None = None, **options: Any) -> Decisions: ...

    def log_prob(self, obs: Observations | Context, dec: Decisions, **options: Any) -> torch.Tensor: ...

    def log_prob_terms(self, obs: Observations | Context, dec: Decisions) -> dict[str, torch.Tensor]: ...

    @property
    def has_latent(self) -> bool: ...

    def posterior_mean(self, obs: Observations) -> torch.Tensor: ...

    @property
    def has_discrete_code(self) -> bool: ...

    def code_prior(self, obs: Observations | Context) -> torch.distributions.Distribution: ...

    def code_posterior(self, obs: Observations | Context, dec: Decisions) -> torch.distributions.Distribution: ...

    def context_module(self) -> nn.Module: ...

    def eval(self) -> Any: ...
