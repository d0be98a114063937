"""The discriminator of adversarial imitation: D(observation history, decision) or, state-only, D(observation
history, next state), with the GAIL and AMP objectives and a gradient penalty on the expert samples' inputs.

What D sees (``D = body(encoder(history), embed(side input))``, a logit ``d`` per sample, high = expert):

- the observation history, normalised with the data set's statistics (the same :class:`Normalizer` a policy
  holds) and summarised by one of the policies' encoders (``disc.encoder.name``: markov, mlp, gru, transformer;
  the expert is non-Markovian, so the default is the gru, which sees the whole history and the recent clearances);
- ``decision`` (default): the decision as a vector of ``1 + 2 + 2 * N_TYPES`` numbers (:func:`decision_features`):
  act (0/1), the aircraft one-hot, the type one-hot, and the value divided by its type's unit scale
  (``models.interface.VALUE_SCALE``: 30 deg, 1000 ft, 20 kt, ...) in its type's slot; all zero but ``act`` when
  the controller does not act now;
- ``next_state`` (``disc.state_only``, as AMP and GAIfO): not the clearance but the pair's state at the next grid
  step (:class:`NextStates`: the decision-time step of the same conflict's next sample), as
  ``2 * F_pose + 2 * F_pose + G`` numbers (:func:`next_state_features`): the two aircraft's normalised pose
  features at the next step, their change from the decision step (next minus now, normalised units, times
  :data:`DELTA_GAIN`), and the
  next step's geometry features except those derived from the controller's own clearances or from how long the
  conflict has been shown (:func:`models.encoders.history_feature_names`), so that the clearance does not reach
  D through the next state's bookkeeping. The history itself is what the data set gives the policies (with its
  recent-clearances tensor when the data set has one).

Objectives (:data:`OBJECTIVES`, by name): ``gail``, binary cross-entropy with expert = 1, reward
``-log(1 - sigmoid(d))``; ``amp``, least squares to +1 (expert) and -1 (learner), bounded reward
``max(0, 1 - 0.25 (d - 1)^2)``. The gradient penalty is ``E_expert ||grad_(history, side input) d||^2`` over the
normalised inputs D's layers see (Mescheder et al. 2018's R1; AMP's penalty).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

import models.encoders  # noqa: F401  (registers the encoders)
from atc_il.config import Section
from atc_il.errors import ModelError
from atc_il.feature_spec import FeatureSpec
from models.config import EncoderConfig
from models.interface import ENCODERS, N_TYPES, OBS_KEYS, VALUE_SCALE_T, Decisions, Observations, Registry
from models.layers import mlp
from models.normalizer import Normalizer


class DiscriminatorConfig(Section):
    objective: Literal["gail", "amp"] = Field("gail", description="gail: cross-entropy, reward -log(1 - D); amp: "
                                              "least squares to +-1, reward max(0, 1 - 0.25 (d - 1)^2)")
    state_only: bool = Field(False, description="D sees the history and the pair's next state, not the decision")
    encoder: EncoderConfig = EncoderConfig(name="gru", hidden=32, layers=1)
    hidden: int = Field(64, ge=4)
    layers: int = Field(2, ge=1)
    grad_penalty: float = Field(5.0, ge=0, description="weight of E_expert ||grad d||^2")
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    steps: int = Field(50, ge=1, description="discriminator updates per iteration")
    batch_size: int = Field(128, ge=2)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="one-sided: the expert's target is 1 - this "
                                   "(gail) or 1 - 2 x this (amp); the learner's stays 0 / -1")
    instance_noise: float = Field(0.0, ge=0, description="std of Gaussian noise added, while D trains, to the "
                                  "normalised pair and geometry history and to the side input (both sides)")
    target_accuracy: float = Field(1.0, gt=0.5, le=1.0, description="skip an update while the last batch's balanced "
                                   "accuracy is above this (1 = never skip)")
    replay: float = Field(0.0, ge=0, lt=1, description="share of each learner batch drawn from earlier iterations' "
                          "learner samples (a replay of past policies)")
    replay_iterations: int = Field(5, ge=1, description="how many earlier iterations the replay keeps")
    blind: list[str] = Field(default_factory=list, description="geometry features D does not see (set to the data "
                             "set's mean at every step; e.g. the session_* shares of the controller's clearances, "
                             "a whole-session statistic that no single decision's reward can be credited for)")


@dataclass
class NextStates:
    """The pair's raw features at the next grid step: ``pair`` (B, 2, F_pose) and ``geometry`` (B, F_geom), the
    decision-time step of the same conflict's next sample."""
    pair: torch.Tensor
    geometry: torch.Tensor

    @classmethod
    def at_decision(cls, obs: Observations) -> NextStates:
        """The decision-time step of ``obs`` (what a sample is for the sample before it)."""
        return cls(obs.pair[:, -1], obs.geometry[:, -1])

    def to(self, device: torch.device | str) -> NextStates:
        return NextStates(self.pair.to(device), self.geometry.to(device))


@dataclass
class DiscBatch:
    """What D is trained on: observations, the decisions taken there and the next states (``has_next`` False
    where the sample has none; state-only D uses only rows with one)."""
    obs: Observations
    dec: Decisions
    nxt: NextStates
    has_next: torch.Tensor

    def __len__(self) -> int:
        return self.obs.batch_size

    def index(self, idx: torch.Tensor) -> DiscBatch:
        def sel(x):
            return type(x)(*(getattr(x, f.name).index_select(0, idx) for f in fields(x)))
        return DiscBatch(sel(self.obs), sel(self.dec), sel(self.nxt), self.has_next.index_select(0, idx))

    def with_next(self) -> DiscBatch:
        return self.index(torch.nonzero(self.has_next, as_tuple=False).flatten())


def decision_features(dec: Decisions) -> torch.Tensor:
    """(B, 1 + 2 + 2 N_TYPES): act, aircraft one-hot, type one-hot, value / type scale in the type's slot."""
    act = (dec.act == 1)
    ac = F.one_hot(dec.aircraft.clamp(min=0, max=1), 2).float() * act[:, None]
    ty = F.one_hot(dec.type.clamp(min=0, max=N_TYPES - 1), N_TYPES).float() * act[:, None]
    scale = VALUE_SCALE_T.to(dec.value.device)[dec.type.clamp(min=0, max=N_TYPES - 1)]
    v = torch.where(act & torch.isfinite(dec.value), dec.value.float() / scale, torch.zeros_like(scale))
    return torch.cat([act.float()[:, None], ac, ty, ty * v[:, None]], dim=-1)


#: gain on the one-step change of the normalised pose: over one grid step (5 s) a manoeuvre moves a feature by about
#: a tenth of its spread over the data set (6 deg of track, 125 ft of altitude), as small as the radar noise
DELTA_GAIN = 10.0


def next_state_features(norm: Normalizer, obs: Observations, nxt: NextStates, geom_keep: torch.Tensor) -> torch.Tensor:
    """(B, 4 F_pose + G): next pose (normalised), its change from the decision step (times :data:`DELTA_GAIN`),
    next non-history geometry."""
    now = norm.normalise("pair", obs.pair[:, -1]).flatten(1)
    nxt_pose = norm.normalise("pair", nxt.pair).flatten(1)
    geom = norm.normalise("geometry", nxt.geometry).index_select(-1, geom_keep)
    return torch.cat([nxt_pose, DELTA_GAIN * (nxt_pose - now), geom], dim=-1)


class _SideInput(nn.Module):
    dim: int

    def features(self, norm: Normalizer, obs: Observations, dec: Decisions, nxt: NextStates) -> torch.Tensor:
        raise NotImplementedError


SIDE_INPUTS = Registry("discriminator input")


@SIDE_INPUTS.register("decision")
class DecisionInput(_SideInput):
    def __init__(self, spec: FeatureSpec):
        super().__init__()
        self.dim = 1 + 2 + 2 * N_TYPES

    def features(self, norm: Normalizer, obs: Observations, dec: Decisions, nxt: NextStates) -> torch.Tensor:
        return decision_features(dec)


@SIDE_INPUTS.register("next_state")
class NextStateInput(_SideInput):
    geom_keep: torch.Tensor

    def __init__(self, spec: FeatureSpec):
        super().__init__()
        from models.encoders import history_feature_names
        names = spec.feature_names("geometry")
        keep = [i for i, n in enumerate(names) if n not in history_feature_names()]
        self.register_buffer("geom_keep", torch.tensor(keep, dtype=torch.long), persistent=False)
        self.dim = 4 * spec.shape("pair")[-1] + len(keep)

    def features(self, norm: Normalizer, obs: Observations, dec: Decisions, nxt: NextStates) -> torch.Tensor:
        return next_state_features(norm, obs, nxt, self.geom_keep)


class Discriminator(nn.Module):
    """D(history, decision) or D(history, next state) -> logit (B,), high = expert."""

    def __init__(self, spec: FeatureSpec | dict, cfg: DiscriminatorConfig):
        super().__init__()
        fs = FeatureSpec.of(spec, error=ModelError)
        self.cfg = cfg
        self.input_name = "next_state" if cfg.state_only else "decision"
        self.normalizer = Normalizer(fs)
        names = fs.feature_names("geometry")
        unknown = sorted(set(cfg.blind) - set(names))
        if unknown:
            raise ModelError(f"discriminator: blind features {unknown} are not geometry features ({names})")
        self.register_buffer("geom_seen", torch.tensor([n not in cfg.blind for n in names], dtype=torch.float32),
                             persistent=False)
        self.encoder = ENCODERS.get(cfg.encoder.name)(fs.to_dict(), cfg.encoder)
        self.side = SIDE_INPUTS.get(self.input_name)(fs)
        self.side_net = mlp(self.side.dim, cfg.hidden, cfg.hidden, 2)
        self.body = mlp(self.encoder.out_dim + cfg.hidden, cfg.hidden, 1, cfg.layers + 1)

    @property
    def device(self) -> torch.device:
        return next(self.body.parameters()).device

    def inputs(self, batch: DiscBatch) -> tuple[Observations, torch.Tensor]:
        """The normalised history and the side input, as D's layers see them (the gradient penalty's inputs)."""
        obs, dec, nxt = batch.obs.to(self.device), batch.dec.to(self.device), batch.nxt.to(self.device)
        obs_n = self.normalizer(obs)
        if self.cfg.blind:
            obs_n = Observations(obs_n.pair, obs_n.neighbours, obs_n.geometry * self.geom_seen, obs_n.clearances)
        return obs_n, self.side.features(self.normalizer, obs, dec, nxt)

    def logits_of(self, obs_n: Observations, x: torch.Tensor) -> torch.Tensor:
        summary, _ = self.encoder(obs_n)
        return self.body(torch.cat([F.gelu(summary), F.gelu(self.side_net(x))], dim=-1)).squeeze(-1)

    def forward(self, batch: DiscBatch) -> torch.Tensor:
        return self.logits_of(*self.inputs(batch))


def gradient_penalty(disc: Discriminator, batch: DiscBatch) -> torch.Tensor:
    """E ||grad d||^2 over the normalised history tensors and the side input (a scalar >= 0, differentiable)."""
    obs_n, x = disc.inputs(batch)
    leaves = [getattr(obs_n, k).detach().requires_grad_(True) for k in OBS_KEYS] + [x.detach().requires_grad_(True)]
    d = disc.logits_of(Observations(*leaves[:4]), leaves[4])
    grads = torch.autograd.grad(d.sum(), leaves, create_graph=True, allow_unused=True)
    sq = sum(g.pow(2).flatten(1).sum(1) for g in grads if g is not None)
    return torch.as_tensor(sq, dtype=d.dtype, device=d.device).mean()


# -- objectives --------------------------------------------------------------------------------------
class Objective(ABC):
    """How D is trained and how its logit becomes the policy's reward. D's logit > 0 reads "expert"."""

    @abstractmethod
    def loss(self, d_expert: torch.Tensor, d_learner: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor: ...

    @abstractmethod
    def reward(self, d: torch.Tensor) -> torch.Tensor: ...


OBJECTIVES = Registry("adversarial objective")


@OBJECTIVES.register("gail")
class GailObjective(Objective):
    """Binary cross-entropy (expert 1, learner 0); reward -log(1 - D) = softplus(d) (Ho and Ermon 2016)."""

    def loss(self, d_expert: torch.Tensor, d_learner: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(d_expert, torch.full_like(d_expert, 1.0 - smoothing)) \
            + F.binary_cross_entropy_with_logits(d_learner, torch.zeros_like(d_learner))

    def reward(self, d: torch.Tensor) -> torch.Tensor:
        return F.softplus(d)


@OBJECTIVES.register("amp")
class AmpObjective(Objective):
    """Least squares to +1 (expert) and -1 (learner); bounded reward max(0, 1 - 0.25 (d - 1)^2) (Peng et al. 2021)."""

    def loss(self, d_expert: torch.Tensor, d_learner: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        return (d_expert - (1.0 - 2.0 * smoothing)).pow(2).mean() + (d_learner + 1).pow(2).mean()

    def reward(self, d: torch.Tensor) -> torch.Tensor:
        return (1 - 0.25 * (d - 1).pow(2)).clamp(min=0.0)


#: the history tensors instance noise perturbs (the neighbours' and clearances' tensors carry presence flags)
NOISY_KEYS = ("pair", "geometry")


def noisy_logits(disc: Discriminator, batch: DiscBatch, sigma: float) -> torch.Tensor:
    """D's logits with Gaussian instance noise of std ``sigma`` on its normalised pair and geometry history and side
    input (Sonderby et al. 2016; Arjovsky and Bottou 2017: overlapping supports keep D's gradients informative)."""
    obs_n, x = disc.inputs(batch)
    if sigma > 0:
        def jitter(t: torch.Tensor) -> torch.Tensor:   # not the last feature, ``valid`` (the padding mask)
            return torch.cat([t[..., :-1] + sigma * torch.randn_like(t[..., :-1]) * t[..., -1:], t[..., -1:]], -1)
        obs_n = Observations(*(jitter(getattr(obs_n, k)) if k in NOISY_KEYS else getattr(obs_n, k) for k in OBS_KEYS))
        x = x + sigma * torch.randn_like(x)
    return disc.logits_of(obs_n, x)


def disc_step(disc: Discriminator, objective: Objective, optimizer: torch.optim.Optimizer, expert: DiscBatch,
              learner: DiscBatch, grad_penalty: float, label_smoothing: float = 0.0, instance_noise: float = 0.0,
              update: bool = True) -> dict[str, float]:
    """One update of D on an expert and a learner batch (``update`` False: only the logs, no step); its logs
    (loss, penalty, accuracies)."""
    disc.train()
    with torch.set_grad_enabled(update):
        d_e, d_l = noisy_logits(disc, expert, instance_noise), noisy_logits(disc, learner, instance_noise)
        loss = objective.loss(d_e, d_l, label_smoothing)
    gp = torch.zeros((), device=d_e.device)
    if update:
        if grad_penalty > 0:
            gp = gradient_penalty(disc, expert)
        optimizer.zero_grad(set_to_none=True)
        (loss + grad_penalty * gp).backward()
        torch.nn.utils.clip_grad_norm_(disc.parameters(), 10.0)
        optimizer.step()
    acc_e, acc_l = (d_e.detach() > 0).float().mean(), (d_l.detach() <= 0).float().mean()
    return {"disc_loss": float(loss.detach()), "disc_grad_penalty": float(gp.detach()),
            "disc_accuracy_expert": float(acc_e), "disc_accuracy_learner": float(acc_l),
            "disc_accuracy": float((acc_e + acc_l) / 2)}


@torch.no_grad()
def cat_batches(batches: list[DiscBatch]) -> DiscBatch:
    """Several :class:`DiscBatch` as one (same shapes but the batch dimension)."""
    def cat(parts):
        return type(parts[0])(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(parts[0])))
    return DiscBatch(cat([b.obs for b in batches]), cat([b.dec for b in batches]), cat([b.nxt for b in batches]),
                     torch.cat([b.has_next for b in batches]))


def accuracy(disc: Discriminator, expert: DiscBatch, learner: DiscBatch) -> float:
    """Balanced accuracy of ``d > 0`` = expert on two batches."""
    disc.eval()
    return float(((disc(expert) > 0).float().mean() + (disc(learner) <= 0).float().mean()) / 2)


__all__ = ["OBJECTIVES", "SIDE_INPUTS", "DiscBatch", "Discriminator", "DiscriminatorConfig", "NextStates", "Objective",
           "accuracy", "cat_batches", "decision_features", "disc_step", "gradient_penalty", "next_state_features",
           "noisy_logits"]
