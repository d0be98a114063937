"""Adversarial imitation behind one small trainer: a discriminator (:mod:`models.discriminator`) between the
expert's and the learner's behaviour gives the reward, and PPO improves the policy on it.

:class:`AdversarialTrainer` keeps the loop small, in the way HumanCompatibleAI/imitation keeps its own: one
abstract member, :meth:`~AdversarialTrainer.collect` (the learner's rollouts; the simulator side,
:mod:`simulator_adapters.adversarial`, runs them in BlueSky), and three short concrete ones:
:meth:`~AdversarialTrainer.train_disc` (D on expert vs. learner samples), :meth:`~AdversarialTrainer.train_gen`
(rewards from D, advantages, PPO) and :meth:`~AdversarialTrainer.train` (collect, train_disc, train_gen per
iteration); with the InfoGAIL code (``info.weight > 0``, :mod:`models.infogail`) also
:meth:`~AdversarialTrainer.train_info` (the code posterior), whose ``weight * (log q(c | h, d) + log K)`` is added
to the reward, and the policy's log-likelihoods are taken given the code it acted under. No simulator import here.

Generator update (:func:`ppo_update`): every decision step of every conflict the learner saw is a transition
(its observation history, the decision sampled there and its log-probability under the policy that sampled it);
the reward is D's (the objective's) per decision; advantages are GAE(gamma, lambda) along each conflict pair's
sequence of steps (the pair's last step is terminal) against a value baseline, a small critic on the policy's
context (detached: the critic does not train the policy's encoder); the policy maximises the clipped PPO
objective on its log-likelihood of its sampled decisions (:meth:`PolicyInterface.log_prob`, exact for the heads
that say so; a head whose log-likelihood is an estimate is refused).
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import nn

from atc_il.config import Section
from atc_il.errors import ModelError
from atc_il.feature_spec import FeatureSpec
from models.data import LABEL_KEYS, check_spec, to_batch
from models.discriminator import (
    OBJECTIVES,
    DiscBatch,
    Discriminator,
    DiscriminatorConfig,
    NextStates,
    accuracy,
    cat_batches,
    disc_step,
)
from models.infogail import CodePosterior, InfoConfig, code_count, info_reward, posterior_step, with_code
from models.interface import OBS_KEYS, Context, Decisions, Observations
from models.layers import mlp
from models.policy import Policy
from pipelines.shards import load_split


class PPOConfig(Section):
    lr: float = Field(1e-4, gt=0, description="policy learning rate")
    critic_lr: float = Field(1e-3, gt=0)
    critic_hidden: int = Field(64, ge=4)
    epochs: int = Field(4, ge=1, description="passes over each iteration's transitions")
    batch_size: int = Field(256, ge=2)
    clip: float = Field(0.2, gt=0, lt=1)
    gamma: float = Field(0.99, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0)
    reward_center: bool = Field(False, description="subtract the iteration's mean reward before GAE: a reward that "
                                "is positive everywhere (GAIL's softplus, AMP's) otherwise pays a conflict for lasting "
                                "longer, whatever the decisions")


class AdversarialConfig(Section):
    disc: DiscriminatorConfig = DiscriminatorConfig()
    ppo: PPOConfig = PPOConfig()
    info: InfoConfig = InfoConfig()
    reward_on: Literal["trained", "fresh"] = Field(
        "trained", description="trained: the rewards are D's after it trains on this iteration's learner samples "
        "(GAIL's usual order); fresh: D's before it does (from the second iteration on), so that with a few hundred "
        "learner samples per iteration the reward is D's judgement of behaviour, not its memory of the samples")
    seed: int = 0


@dataclass
class Transitions:
    """The learner's decision steps: ``batch`` (observations, sampled decisions, next states), ``log_prob`` (B,)
    of the sampled decision under the policy that sampled it, ``seq`` (B,) the conflict pair's sequence id and
    ``step`` (B,) the decision step's index (order within a sequence), ``disc_ok`` (B,) bool: usable to train
    D (for state-only D: the next step was itself a decision step of the pair, as the expert's pairs are);
    ``code`` (B,) the InfoGAIL code the policy acted under (None without one)."""
    batch: DiscBatch
    log_prob: torch.Tensor
    seq: torch.Tensor
    step: torch.Tensor
    disc_ok: torch.Tensor
    code: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.batch)


# -- the expert's samples ------------------------------------------------------------------------------
def load_expert(dataset_dir: str | Path, split: str = "train", expect: FeatureSpec | dict | None = None) -> DiscBatch:
    """A data set split as D's expert batch: observations, labels, and each sample's next state, the
    decision-time step of the same episode's sample one grid step later (``has_next`` False where the episode
    has none there: its last sample, or a gap)."""
    spec = FeatureSpec.load(dataset_dir)
    if expect is not None:
        check_spec(spec, expect, f"{dataset_dir} ({split})")
    raw = load_split(dataset_dir, split, columns=list(OBS_KEYS + LABEL_KEYS) + ["episode_id", "time"])
    t = {k: raw[k].float().contiguous() for k in OBS_KEYS}
    for k in LABEL_KEYS:
        t[k] = raw[k].float() if k == "label_value" else raw[k].long()
    obs, dec = to_batch(t)
    key = pd.DataFrame({"episode_id": raw["episode_id"], "time": np.asarray(raw["time"], dtype=np.int64)})
    step_ns = int(round(float(spec.step_s) * 1e9))
    where = pd.Series(np.arange(len(key)), index=pd.MultiIndex.from_frame(key))
    where = where[~where.index.duplicated()]
    nxt = where.reindex(pd.MultiIndex.from_arrays([key["episode_id"], key["time"] + step_ns])).to_numpy()
    has = torch.from_numpy(~np.isnan(nxt))
    idx = torch.from_numpy(np.where(np.isnan(nxt), np.arange(len(key)), nxt).astype(np.int64))
    at = NextStates.at_decision(obs)
    return DiscBatch(obs, dec, NextStates(at.pair.index_select(0, idx), at.geometry.index_select(0, idx)), has)


# -- advantages and PPO --------------------------------------------------------------------------------
def gae(rewards: torch.Tensor, values: torch.Tensor, seq: torch.Tensor, step: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by GAE along each sequence (rows ordered by ``step`` within ``seq``); a sequence's
    last step is terminal (next value 0)."""
    order = np.lexsort((step.numpy(), seq.numpy()))
    r, v, s = rewards.double().numpy()[order], values.double().numpy()[order], seq.numpy()[order]
    adv = np.zeros(len(r))
    run = 0.0
    for j in range(len(r) - 1, -1, -1):
        cont = j + 1 < len(r) and s[j + 1] == s[j]
        delta = r[j] + (gamma * v[j + 1] if cont else 0.0) - v[j]
        run = delta + (gamma * lam * run if cont else 0.0)
        adv[j] = run
    out = np.empty_like(adv)
    out[order] = adv
    a = torch.from_numpy(out).float()
    return a, a + values.float()


class Critic(nn.Module):
    """V(context): a small MLP on the policy's (detached) context."""

    def __init__(self, ctx_dim: int, hidden: int):
        super().__init__()
        self.net = mlp(ctx_dim, hidden, 1, 3)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        return self.net(ctx).squeeze(-1)


def ppo_update(policy: Policy, critic: Critic, opt_pi: torch.optim.Optimizer, opt_v: torch.optim.Optimizer,
               obs: Observations, dec: Decisions, old_log_prob: torch.Tensor, advantages: torch.Tensor,
               returns: torch.Tensor, cfg: PPOConfig, generator: torch.Generator, codes: torch.Tensor | None = None,
               ) -> dict[str, float]:
    """Clipped PPO on ``policy.log_prob`` of the given decisions (advantages normalised per call) and the critic's
    squared error to ``returns``; returns the mean logs of the last epoch. With ``codes`` (B,), the policy's
    decisions given those InfoGAIL codes (:func:`models.infogail.with_code`)."""
    n = obs.batch_size
    adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8) if n > 1 else advantages
    with torch.no_grad():     # before any update the policy is the one that sampled: the ratio must be 1
        gap = torch.cat([(policy.log_prob(conditioned(policy, Observations(*(getattr(obs, k)[i] for k in OBS_KEYS)),
                                                      None if codes is None else codes[i]),
                                          Decisions(dec.act[i], dec.aircraft[i], dec.type[i], dec.value[i])).cpu()
                          - old_log_prob[i]).abs() for i in torch.arange(n).split(1024)])
    logs: dict[str, list[float]] = {}
    for _ in range(cfg.epochs):
        logs = {}
        for idx in torch.randperm(n, generator=generator).split(cfg.batch_size):
            o = Observations(*(getattr(obs, k).index_select(0, idx) for k in OBS_KEYS))
            d = Decisions(dec.act[idx], dec.aircraft[idx], dec.type[idx], dec.value[idx])
            ctx = conditioned(policy, o, None if codes is None else codes[idx])
            lp = policy.log_prob(ctx, d)
            ratio = torch.exp(lp - old_log_prob[idx].to(lp.device))
            a = adv[idx].to(lp.device)
            loss_pi = -torch.min(ratio * a, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * a).mean()
            opt_pi.zero_grad(set_to_none=True)
            loss_pi.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            opt_pi.step()
            loss_v = (critic(ctx.tensor.detach()) - returns[idx].to(lp.device)).pow(2).mean()
            opt_v.zero_grad(set_to_none=True)
            loss_v.backward()
            opt_v.step()
            with torch.no_grad():
                kl = (old_log_prob[idx].to(lp.device) - lp).mean()
                clipped = ((ratio - 1).abs() > cfg.clip).float().mean()
            for k, v in (("ppo_policy_loss", loss_pi), ("ppo_value_loss", loss_v), ("ppo_approx_kl", kl),
                         ("ppo_clip_fraction", clipped)):
                logs.setdefault(k, []).append(float(v.detach()))
    return {**{k: float(np.mean(v)) for k, v in logs.items()}, "ppo_logprob_mismatch": float(gap.max()) if n else 0.0}


def conditioned(policy: Policy, obs: Observations, codes: torch.Tensor | None) -> Context:
    """The policy's context of ``obs``, given the InfoGAIL ``codes`` when there are some."""
    ctx = policy.encode(obs)
    return ctx if codes is None else with_code(ctx, codes, code_count(policy))


# -- the trainer ---------------------------------------------------------------------------------------
class AdversarialTrainer(ABC):
    """Adversarial imitation of ``expert`` by ``policy`` (a :class:`models.policy.Policy`, trained in place).
    Subclasses implement :meth:`collect`; :meth:`after_iteration` is a hook (tracking, saving)."""

    def __init__(self, policy: Policy, expert: DiscBatch, cfg: AdversarialConfig = AdversarialConfig()):
        if not policy.exact_log_prob:
            raise ModelError(f"adversarial training: the {policy.config.head.name} head's log-likelihood is an "
                             "estimate; PPO's ratio needs an exact one (use the mdn, autoregressive or cvae head)")
        torch.manual_seed(cfg.seed)
        self.policy, self.cfg = policy.eval(), cfg
        self.expert = expert.with_next() if cfg.disc.state_only else expert
        if len(self.expert) < 2:
            raise ModelError(f"adversarial training: {len(self.expert)} expert samples"
                             + (" with a next state" if cfg.disc.state_only else "") + "; need a larger data set")
        self.disc = Discriminator(policy.spec, cfg.disc).to(policy.device)
        self.objective = OBJECTIVES.get(cfg.disc.objective)()
        with torch.no_grad():
            ctx_dim = policy.encode(self.expert.index(torch.arange(2)).obs).tensor.shape[-1]
        self.critic = Critic(ctx_dim, cfg.ppo.critic_hidden).to(policy.device)
        self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=cfg.disc.lr, weight_decay=cfg.disc.weight_decay)
        self.opt_pi = torch.optim.Adam(policy.parameters(), lr=cfg.ppo.lr)
        self.opt_v = torch.optim.Adam(self.critic.parameters(), lr=cfg.ppo.critic_lr)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.disc_trained = False
        self.replay: list[DiscBatch] = []       # earlier iterations' learner samples for D (disc.replay > 0)
        self.posterior: CodePosterior | None = None
        if cfg.info.weight > 0:
            self.posterior = CodePosterior(policy.spec, code_count(policy), cfg.info).to(policy.device)
            self.opt_q = torch.optim.Adam(self.posterior.parameters(), lr=cfg.info.lr)

    @abstractmethod
    def collect(self, iteration: int) -> tuple[Transitions, dict]:
        """The current policy's rollouts: its transitions and a dict of rollout metrics."""

    def after_iteration(self, iteration: int, row: dict) -> None:  # noqa: B027  (optional hook)
        """Called with each iteration's metrics once the policy is updated."""

    def _draw(self, data: DiscBatch, n: int) -> DiscBatch:
        return data.index(torch.randint(len(data), (min(n, len(data)),), generator=self.gen))

    def train_disc(self, learner: Transitions) -> dict[str, float]:
        """``disc.steps`` updates of D on random expert and learner batches (state-only D: the learner's steps
        with ``disc_ok``); the last step's logs and the balanced accuracy on all those learner samples and as many
        expert samples."""
        usable = learner.disc_ok if self.cfg.disc.state_only else torch.ones(len(learner), dtype=torch.bool)
        ok = learner.batch.index(torch.nonzero(usable, as_tuple=False).flatten())
        if len(ok) == 0:
            return {"disc_samples_learner": 0}
        c = self.cfg.disc
        logs: dict[str, float] = {}
        n_old = int(round(c.replay * c.batch_size)) if self.replay else 0
        old = cat_batches(self.replay) if n_old else None
        updates = 0
        fresh: dict[str, float] = {}
        if self.disc_trained:     # D so far on samples it has never seen: does it generalise or memorise?
            fresh["disc_accuracy_heldout"] = accuracy(self.disc, self._draw(self.expert, len(ok)), ok)
        self.disc_trained = True
        for _ in range(c.steps):
            lb = self._draw(ok, c.batch_size - n_old)
            if old is not None:
                lb = cat_batches([lb, self._draw(old, n_old)])
            update = not logs or logs["disc_accuracy"] <= c.target_accuracy
            logs = disc_step(self.disc, self.objective, self.opt_d, self._draw(self.expert, c.batch_size), lb,
                             c.grad_penalty, c.label_smoothing, c.instance_noise, update=update)
            updates += update
        if c.replay > 0:
            self.replay = (self.replay + [ok])[-c.replay_iterations:]
        logs["disc_accuracy_all"] = accuracy(self.disc, self._draw(self.expert, len(ok)), ok)
        return {**logs, **fresh, "disc_updates": updates, "disc_samples_learner": len(ok),
                "disc_samples_expert": len(self.expert)}

    def train_info(self, learner: Transitions) -> dict[str, float]:
        """``info.steps`` updates of the code posterior q(c | history, decision) on the learner's own triples."""
        if self.posterior is None:
            return {}
        if learner.code is None:
            raise ModelError("InfoGAIL (info.weight > 0): the rollouts carry no code; collect them under codes")
        logs: dict[str, float] = {}
        for _ in range(self.cfg.info.steps):
            i = torch.randint(len(learner), (min(self.cfg.info.batch_size, len(learner)),), generator=self.gen)
            logs = posterior_step(self.posterior, self.opt_q, learner.batch.index(i), learner.code[i])
        return logs

    @torch.no_grad()
    def rewards(self, learner: Transitions) -> torch.Tensor:
        """The objective's reward of D's logit, per decision (B,)."""
        self.disc.eval()
        return torch.cat([self.objective.reward(self.disc(learner.batch.index(i))).cpu()
                          for i in torch.arange(len(learner)).split(1024)])

    def train_gen(self, learner: Transitions, rewards: torch.Tensor | None = None) -> dict[str, float]:
        """Rewards from D (or the given D rewards), GAE along each conflict's steps against the critic, PPO on the
        policy."""
        rew = self.rewards(learner) if rewards is None else rewards
        info: dict[str, float] = {}
        if self.posterior is not None and learner.code is not None:
            mi = info_reward(self.posterior, learner.batch, learner.code)
            info = {"info_reward_mean": float(mi.mean()), "disc_reward_mean": float(rew.mean())}
            rew = rew + self.cfg.info.weight * mi
        code = learner.code if self.posterior is not None else None
        raw = rew
        if self.cfg.ppo.reward_center:
            rew = rew - rew.mean()
        with torch.no_grad():
            values = torch.cat([self.critic(conditioned(self.policy, learner.batch.index(i).obs,
                                                        None if code is None else code[i]).tensor).cpu()
                                for i in torch.arange(len(learner)).split(1024)])
        adv, ret = gae(rew, values, learner.seq, learner.step, self.cfg.ppo.gamma, self.cfg.ppo.lam)
        b = learner.batch
        logs = ppo_update(self.policy, self.critic, self.opt_pi, self.opt_v, b.obs, b.dec, learner.log_prob, adv, ret,
                          self.cfg.ppo, self.gen, code)
        return {**logs, **info, "reward_mean": float(raw.mean()), "reward_std": float(raw.std()) if len(raw) > 1 else 0.0,
                "advantage_mean": float(adv.mean()), "advantage_std": float(adv.std()) if len(adv) > 1 else 0.0, "transitions": len(learner),
                "act_rate": float((b.dec.act == 1).float().mean())}

    def train(self, iterations: int, log: Callable[[str], None] = print) -> list[dict]:
        """``iterations`` rounds of collect, train_disc (and train_info), train_gen; returns the per-iteration rows
        (with the seconds each phase took: ``collect_s``, ``disc_s``, ``gen_s``)."""
        rows = []
        for i in range(1, iterations + 1):
            t0 = time.perf_counter()
            learner, info = self.collect(i)
            if len(learner) == 0:
                raise ModelError(f"adversarial iteration {i}: the rollouts gave no decision step (no conflict was "
                                 "shown); roll out more or denser scenarios")
            t1 = time.perf_counter()
            rew = self.rewards(learner) if self.cfg.reward_on == "fresh" and self.disc_trained else None
            disc = {**self.train_disc(learner), **self.train_info(learner)}
            t2 = time.perf_counter()
            gen = self.train_gen(learner, rew)
            row = {"iteration": i, **info, **disc, **gen, "collect_s": round(t1 - t0, 2),
                   "disc_s": round(t2 - t1, 2), "gen_s": round(time.perf_counter() - t2, 2)}
            self.after_iteration(i, row)
            rows.append(row)
            log(f"adversarial iteration {i}: " + ", ".join(
                f"{k} {row[k]:.4g}" if isinstance(row[k], float) else f"{k} {row[k]}" for k in
                ("transitions", "disc_accuracy_all", "reward_mean", "sim_seconds_per_wall_second", "rollout_los")
                if k in row and not (isinstance(row[k], float) and math.isnan(row[k]))))
        return rows


__all__ = ["AdversarialConfig", "AdversarialTrainer", "Critic", "PPOConfig", "Transitions", "conditioned", "gae",
           "load_expert", "ppo_update"]
