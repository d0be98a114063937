"""``deterministic``: argmax / regression, the mode-collapse baseline; its value "density" is a fixed
unit-variance Gaussian in scaled units, not a fitted density model (``exact_log_prob = False``)."""

from __future__ import annotations

from typing import Literal

from torch.distributions import Normal

from models.heads.base import HEADS, Head, HeadConfigBase
from models.interface import Decisions


class DeterministicConfig(HeadConfigBase):
    name: Literal["deterministic"] = "deterministic"


@HEADS.register("deterministic")
class DeterministicHead(Head):
    """Argmax / regression baseline: cross-entropy for act, aircraft and type; the scaled value regressed
    with a squared error (the loss is the NLL of a unit-variance Gaussian in scaled units, i.e. half the
    MSE plus a constant). ``sample`` repeats the prediction n times: it cannot represent several modes.
    ``log_prob``: categorical parts exact, the value under that fixed unit-variance Gaussian (in the
    type's unit) - a yardstick, not a fitted density."""

    exact_log_prob = False

    def value_log_prob(self, params, type_, value):
        scaled = value / self.log_scale[type_].exp()
        return Normal(params[..., 0], 1.0, validate_args=False).log_prob(scaled) - self.log_scale[type_]

    def value_mode(self, params, type_):
        return params[..., 0] * self.log_scale[type_].exp()

    def sample(self, ctx, n, generator=None, given_act=False):
        d = self.predict(ctx, given_act=given_act)
        return Decisions(*(x[:, None].expand(-1, n).clone() for x in (d.act, d.aircraft, d.type, d.value)))
