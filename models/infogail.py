"""The InfoGAIL code (Li, Song and Ermon 2017): a discrete code c given to the policy, a posterior network
q(c | history, decision), and the mutual-information term ``lambda * log q(c | history, decision)`` added to the
discriminator's reward, so that different codes drive distinguishable behaviour (a variational lower bound on
I(c; decision | history)).

The code is the policy's session style code (:mod:`models.style`, ``style.enabled``): a style policy decides by
``sum_c q(c | session) p(d | history, c)``, with ``log q(c | session)`` riding at the end of its context tensor.
:func:`with_code` replaces those K logits by a log one-hot of a given code, so that every policy method called on
that context (sampling, log-likelihood) is the policy's decision *given c*: in the adversarial rollouts each
session (scenario) draws one code, uniformly, and the learner acts under it; PPO's log-likelihoods are taken under
the same code. A saved policy keeps inferring c from the session as it was trained to (``simeval``, ``predict``
and the service see no change).

:class:`CodePosterior` has the discriminator's architecture (the policies' encoders over the history, the
decision embedded as in :func:`models.discriminator.decision_features`) with K outputs; it is trained by
cross-entropy on the learner's own (history, decision, code) triples. The reward term is
``log q(c | h, d) + log K``: 0 for a posterior that cannot tell the codes apart, up to ``log K``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

import models.encoders  # noqa: F401  (registers the encoders)
from atc_il.config import Section
from atc_il.errors import ModelError
from atc_il.feature_spec import FeatureSpec
from models.config import EncoderConfig
from models.discriminator import DiscBatch, decision_features
from models.interface import ENCODERS, N_TYPES, Context
from models.layers import mlp
from models.normalizer import Normalizer


class InfoConfig(Section):
    weight: float = Field(0.0, ge=0, description="lambda of the mutual-information reward lambda * (log q(c | "
                          "history, decision) + log K); 0 = no InfoGAIL code (needs a policy with style.enabled)")
    encoder: EncoderConfig = EncoderConfig(name="gru", hidden=32, layers=1)
    hidden: int = Field(64, ge=4)
    lr: float = Field(1e-3, gt=0)
    steps: int = Field(50, ge=1, description="posterior updates per iteration")
    batch_size: int = Field(128, ge=2)


def code_count(policy: Any) -> int:
    """K, the policy's number of style codes (ModelError when it has none)."""
    if getattr(policy, "style", None) is None:
        raise ModelError("the InfoGAIL code is the policy's style code: train the behavioural-cloning policy with "
                         "style.enabled = true (and dataset.controller_history), or set info.weight = 0")
    return int(policy.style.K)


def with_code(ctx: Context, codes: torch.Tensor, k: int) -> Context:
    """A style policy's context with q(c | session) replaced by the given codes (B,): the decision given c."""
    t = ctx.tensor
    logits = torch.full((t.shape[0], k), -1e4, dtype=t.dtype, device=t.device)
    logits.scatter_(1, codes.long().to(t.device)[:, None], 0.0)
    return Context(torch.cat([t[:, :-k], logits], dim=-1))


class CodePosterior(nn.Module):
    """q(c | history, decision) -> logits (B, K)."""

    def __init__(self, spec: FeatureSpec | dict, k: int, cfg: InfoConfig):
        super().__init__()
        fs = FeatureSpec.of(spec, error=ModelError)
        self.k = k
        self.normalizer = Normalizer(fs)
        self.encoder = ENCODERS.get(cfg.encoder.name)(fs.to_dict(), cfg.encoder)
        self.side = mlp(1 + 2 + 2 * N_TYPES, cfg.hidden, cfg.hidden, 2)
        self.body = mlp(self.encoder.out_dim + cfg.hidden, cfg.hidden, k, 3)

    def forward(self, batch: DiscBatch) -> torch.Tensor:
        dev = next(self.body.parameters()).device
        summary, _ = self.encoder(self.normalizer(batch.obs.to(dev)))
        x = decision_features(batch.dec.to(dev))
        return self.body(torch.cat([F.gelu(summary), F.gelu(self.side(x))], dim=-1))


def posterior_step(q: CodePosterior, optimizer: torch.optim.Optimizer, batch: DiscBatch,
                   codes: torch.Tensor) -> dict[str, float]:
    """One cross-entropy update of q on (history, decision, code) triples; its logs."""
    q.train()
    logits = q(batch)
    c = codes.long().to(logits.device)
    loss = F.cross_entropy(logits, c)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"info_loss": float(loss.detach()),
            "info_accuracy": float((logits.detach().argmax(-1) == c).float().mean())}


@torch.no_grad()
def info_reward(q: CodePosterior, batch: DiscBatch, codes: torch.Tensor) -> torch.Tensor:
    """log q(c | history, decision) + log K per sample (B,)."""
    q.eval()
    logp = torch.log_softmax(q(batch).float(), -1)
    return logp.gather(1, codes.long().to(logp.device)[:, None]).squeeze(1).cpu() + math.log(q.k)


__all__ = ["CodePosterior", "InfoConfig", "code_count", "info_reward", "posterior_step", "with_code"]
