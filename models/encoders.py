"""Observation encoders: normalised observation histories -> (summary (B, D), per-step features (B, H, D) or None).

- ``markov``: the truly Markovian baseline: the decision-time step of pair, neighbours and geometry, without
  any feature derived from history (time in conflict, the controller's own clearances) and without clearances;
- ``mlp``: the decision-time step only, plus recent clearances and the history features of that step;
- ``gru``: per-step tokens (pair, masked mean of neighbours, geometry) through a GRU over the history;
- ``transformer``: the same tokens with masked attention pooling over neighbours, a learned positional
  embedding and a CLS token, through a TransformerEncoder with a key padding mask on unobserved steps.

Every encoder first embeds each scalar input feature (``encoder.numeric_embedding``, :class:`PeriodicEmbedding`):
the expert's decisions hinge on sharp thresholds of a few features (how long a conflict has been shown, seconds
since an aircraft's last clearance), which a network fed the normalised values fits only with large weights,
slowly, while it overfits the rest (bench/RESULTS.md, "why the act hazard stayed behind gradient boosting").
Masks come from the ``valid`` feature (the last one of every tensor), read before embedding. No data-dependent Python control
flow in ``forward``: every encoder traces with ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from atc_il.errors import ModelError
from atc_il.feature_spec import FeatureSpec
from models.config import EncoderConfig
from models.interface import ENCODERS, Observations
from models.layers import mlp
from models.normalizer import tensor_shapes

#: per-aircraft geometry features ``{name}_ac{1,2}{unit}`` that the aircraft contrast reads with each aircraft's state
#: (those the data set has): its own clearance history (against this pair: dataset.pair_history), and its conflicts with
#: third aircraft (dataset.other_conflicts)
OWN_FEATURES = (("since_clr", "_s"), ("cleared_in_conflict", ""), ("pair_clr", "_s"), ("other_conflicts", ""))


def valid_mask(x: torch.Tensor) -> torch.Tensor:
    """(...,) float mask from the last feature (``valid``)."""
    return (x[..., -1] > 0.5).to(x.dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of ``x`` over ``dim`` where ``mask`` (x's shape without the last axis) is 1; 0 where none is."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1.0)


class PeriodicEmbedding(nn.Module):
    """Per-feature periodic embedding (..., F) -> (..., F * d): ``x_f -> ReLU(W_f [sin 2pi c_f x_f, cos 2pi c_f x_f]
    + b_f)`` with learned frequencies ``c_f`` (k per feature, initialised from N(0, sigma^2)); the "PLR"
    embedding of Gorishniy, Rubachev and Babenko (2022), which closes most of the gap between MLPs and
    gradient-boosted trees on tabular inputs."""

    def __init__(self, f_in: int, dim: int, frequencies: int, sigma: float):
        super().__init__()
        self.freq = nn.Parameter(torch.randn(f_in, frequencies) * sigma)
        self.weight = nn.Parameter(torch.randn(f_in, 2 * frequencies, dim) / math.sqrt(2 * frequencies))
        self.bias = nn.Parameter(torch.zeros(f_in, dim))
        self.out_features = f_in * dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = (2 * math.pi) * self.freq.to(x.dtype) * x.unsqueeze(-1)                  # (..., F, k)
        e = torch.cat([torch.sin(v), torch.cos(v)], dim=-1)                            # (..., F, 2k)
        y = torch.einsum("...fk,fkd->...fd", e, self.weight.to(e.dtype)) + self.bias.to(e.dtype)
        return torch.relu(y).flatten(-2)


class NoEmbedding(nn.Module):
    """The normalised values as they are (``encoder.numeric_embedding = none``)."""

    def __init__(self, f_in: int):
        super().__init__()
        self.out_features = f_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def numeric_embedding(f_in: int, cfg: EncoderConfig) -> nn.Module:
    if cfg.numeric_embedding == "periodic":
        return PeriodicEmbedding(f_in, cfg.embedding_dim, cfg.embedding_frequencies, cfg.embedding_sigma)
    return NoEmbedding(f_in)


class SetEncoder(nn.Module):
    """Permutation-invariant encoder of a padded set (B, ..., N, F) -> (B, ..., D): phi per (embedded) item,
    masked mean."""

    def __init__(self, f_in: int, hidden: int, dropout: float = 0.0, embed: nn.Module | None = None):
        super().__init__()
        self.embed = embed if embed is not None else NoEmbedding(f_in)
        self.phi = mlp(self.embed.out_features, hidden, hidden, 2, dropout)
        self.rho = nn.Sequential(nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rho(masked_mean(self.phi(self.embed(x)), valid_mask(x), dim=-2))


class AttentionPool(nn.Module):
    """Attention of a query (B, H, D) over padded items (B, H, K, F): a learned null item is always
    attendable, so a step with no valid neighbour pools to that null value instead of NaN."""

    def __init__(self, f_in: int, hidden: int):
        super().__init__()
        self.key = nn.Linear(f_in, hidden)
        self.value = nn.Linear(f_in, hidden)
        self.query = nn.Linear(hidden, hidden)
        self.null_key = nn.Parameter(torch.zeros(hidden))
        self.null_value = nn.Parameter(torch.zeros(hidden))
        self.scale = 1.0 / math.sqrt(hidden)

    def forward(self, query: torch.Tensor, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``items`` (B, H, K, F) embedded, ``mask`` (B, H, K) their validity."""
        q = self.query(query)                                            # (B, H, D)
        k, v = self.key(items), self.value(items)                        # (B, H, K, D)
        logits = torch.einsum("bhd,bhkd->bhk", q, k) * self.scale
        logits = logits.masked_fill(mask < 0.5, float("-inf"))
        null = (q * self.null_key).sum(-1, keepdim=True) * self.scale    # (B, H, 1)
        w = torch.softmax(torch.cat([null, logits], dim=-1).float(), dim=-1).to(v.dtype)
        return w[..., :1] * self.null_value + torch.einsum("bhk,bhkd->bhd", w[..., 1:], v)


class _Base(nn.Module):
    def __init__(self, spec: dict, cfg: EncoderConfig):
        super().__init__()
        shapes = tensor_shapes(spec)
        self.H, _, self.f_pose = shapes["pair"]
        self.K = shapes["neighbours"][1]
        self.f_geom = shapes["geometry"][-1]
        self.M, self.f_clr = shapes["clearances"]
        self.cfg = cfg
        self.embed = nn.ModuleDict({k: numeric_embedding(shapes[k][-1], cfg)
                                    for k in ("pair", "neighbours", "geometry", "clearances")})

    def width(self, name: str) -> int:
        """Per-item width of the embedded tensor ``name``."""
        return int(self.embed[name].out_features)


class HazardEncoder(nn.Module):
    """The act hazard's own summary (``head.act_inputs = geometry``): the decision-time geometry step alone
    (timing, the controller's own history and its clearances against the pair, the session's counts, each
    aircraft's other conflicts, where the data set has them; with the session style code's bottleneck the counts
    are hidden here as from the encoder, and the style reaches P(act) through the code: letting the hazard read
    them did not help, bench/RESULTS.md), embedded per feature like the encoders' inputs, through a small network -> (B, hidden). The
    expert's act-or-not hinges on a few sharp thresholds of these; gradient-boosted trees on them alone beat a
    network reading every input (bench/RESULTS.md, the act term), which over-fits the rest."""

    def __init__(self, spec: dict, cfg: EncoderConfig, hidden: int):
        super().__init__()
        f_geom = tensor_shapes(spec)["geometry"][-1]
        self.embed = numeric_embedding(f_geom, cfg)
        self.net = nn.Sequential(mlp(int(self.embed.out_features), hidden, hidden, 2, cfg.dropout), nn.GELU())
        self.out_dim = hidden

    def forward(self, geometry_n: torch.Tensor) -> torch.Tensor:
        return self.net(self.embed(geometry_n[:, -1]))


@ENCODERS.register("mlp")
class MLPEncoder(_Base):
    """The last step of pair, neighbours and geometry (history features of that step included), and the
    clearances, flattened: no sequence model, but not Markovian (see ``markov``)."""

    def __init__(self, spec: dict, cfg: EncoderConfig):
        super().__init__(spec, cfg)
        d_in = 2 * self.width("pair") + self.K * self.width("neighbours") + self.width("geometry") \
            + self.M * self.width("clearances")
        self.net = mlp(d_in, cfg.hidden, cfg.hidden, cfg.layers + 1, cfg.dropout)
        self.out_dim = cfg.hidden
        self.contrast = None
        if cfg.aircraft_contrast:
            names = FeatureSpec.of(spec, error=ModelError).feature_names("geometry")
            own = [[names.index(f"{n}_ac{k}{u}") for n, u in OWN_FEATURES if f"{n}_ac{k}{u}" in names] for k in (1, 2)]
            self.register_buffer("own_idx", torch.tensor(own, dtype=torch.long), persistent=False)   # (2, n)
            self.own_embed = numeric_embedding(len(own[0]), cfg)     # one embedding for both aircraft's features
            self.contrast = mlp(self.width("pair") + int(self.own_embed.out_features), cfg.hidden, cfg.hidden // 2,
                                2, cfg.dropout)
            self.out_dim = cfg.hidden + 2 * (cfg.hidden // 2)

    def forward(self, obs: Observations) -> tuple[torch.Tensor, None]:
        b, e = obs.pair.shape[0], self.embed
        pair, geom = e["pair"](obs.pair[:, -1]), e["geometry"](obs.geometry[:, -1])
        x = torch.cat([pair.reshape(b, -1), e["neighbours"](obs.neighbours[:, -1]).reshape(b, -1),
                       geom, e["clearances"](obs.clearances).reshape(b, -1)], dim=-1)
        h = torch.nn.functional.gelu(self.net(x))
        if self.contrast is None:
            return h, None
        g = obs.geometry[:, -1]
        per = [self.contrast(torch.cat([pair[:, k], self.own_embed(g[:, self.own_idx[k]])], dim=-1)) for k in (0, 1)]
        return torch.cat([h, per[0] - per[1], per[0] + per[1]], dim=-1), None


class StepTokens(nn.Module):
    """Per-step token (B, H, D): pair, pooled neighbours and geometry of each step, embedded together."""

    def __init__(self, embed: nn.ModuleDict, hidden: int, attention: bool, dropout: float = 0.0):
        super().__init__()
        self.embed = embed                                  # the encoder's, shared (registered there too)
        e_pose, e_neigh, e_geom = (int(embed[k].out_features) for k in ("pair", "neighbours", "geometry"))
        self.pair = mlp(2 * e_pose, hidden, hidden, 2, dropout)
        self.neigh = mlp(e_neigh, hidden, hidden, 2, dropout) if not attention else None
        self.attn = AttentionPool(e_neigh, hidden) if attention else None
        self.mix = nn.Sequential(nn.GELU(), nn.Linear(2 * hidden + e_geom, hidden), nn.GELU())

    def forward(self, obs: Observations) -> torch.Tensor:
        p = self.pair(self.embed["pair"](obs.pair).flatten(-2))          # (B, H, D)
        neigh, mask = self.embed["neighbours"](obs.neighbours), valid_mask(obs.neighbours)
        if self.attn is not None:                                         # structural, fixed at build time
            n = self.attn(p, neigh, mask)
        else:
            n = masked_mean(self.neigh(neigh), mask, dim=-2)
        return self.mix(torch.cat([p, n, self.embed["geometry"](obs.geometry)], dim=-1))


@ENCODERS.register("gru")
class GRUEncoder(_Base):
    """GRU over per-step tokens; summary = last hidden state ⊕ clearance-set embedding (out_dim = 2 hidden)."""

    def __init__(self, spec: dict, cfg: EncoderConfig):
        super().__init__(spec, cfg)
        d = cfg.hidden
        self.tokens = StepTokens(self.embed, d, attention=False, dropout=cfg.dropout)
        self.gru = nn.GRU(d, d, num_layers=cfg.layers, batch_first=True,
                          dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.clearances = SetEncoder(self.f_clr, d, cfg.dropout, self.embed["clearances"])
        self.out_dim = 2 * d

    def forward(self, obs: Observations) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokens(obs)
        per_step, _ = self.gru(tok)
        return torch.cat([per_step[:, -1], self.clearances(obs.clearances)], dim=-1), per_step


@ENCODERS.register("transformer")
class TransformerEncoder(_Base):
    """TransformerEncoder over [CLS, step tokens + positions]; steps where neither aircraft of the pair
    is observed are masked out; summary = CLS output ⊕ clearance-set embedding (out_dim = 2 hidden)."""

    def __init__(self, spec: dict, cfg: EncoderConfig):
        super().__init__(spec, cfg)
        d = cfg.hidden
        if d % cfg.heads:
            raise ModelError(f"encoder.hidden ({d}) must be a multiple of encoder.heads ({cfg.heads})")
        self.tokens = StepTokens(self.embed, d, attention=True, dropout=cfg.dropout)
        self.pos = nn.Parameter(torch.randn(self.H, d) * 0.02)
        self.cls = nn.Parameter(torch.randn(d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, cfg.heads, dim_feedforward=2 * d, dropout=cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.clearances = SetEncoder(self.f_clr, d, cfg.dropout, self.embed["clearances"])
        self.out_dim = 2 * d

    def forward(self, obs: Observations) -> tuple[torch.Tensor, torch.Tensor]:
        b = obs.pair.shape[0]
        tok = self.tokens(obs) + self.pos
        x = torch.cat([self.cls.expand(b, 1, -1).to(tok.dtype), tok], dim=1)
        step_valid = (obs.pair[..., -1] > 0.5).any(-1)                            # (B, H)
        pad = torch.cat([torch.zeros_like(step_valid[:, :1]), ~step_valid], dim=1)  # CLS never masked
        y = self.norm(self.body(x, src_key_padding_mask=pad))
        return torch.cat([y[:, 0], self.clearances(obs.clearances)], dim=-1), y[:, 1:]


def history_feature_names() -> set[str]:
    """Names of the geometry features that summarise the past rather than the state at the step (how long the
    conflict has been shown; the controller's own clearances: ``dataset.controller_history`` and ``nuisance``)."""
    from pipelines.history import HISTORY
    return {"time_in_conflict_s", "manoeuvring_ac1", "manoeuvring_ac2"} | {n for n, _, _ in HISTORY}


@ENCODERS.register("markov")
class MarkovEncoder(_Base):
    """The truly Markovian baseline: the decision-time step of pair, neighbours and geometry, with the
    geometry features derived from history left out and no clearances. What a model that ignores the
    controller's history can reach; the synthetic expert is non-Markovian by construction."""

    def __init__(self, spec: dict, cfg: EncoderConfig):
        super().__init__(spec, cfg)
        names = FeatureSpec.of(spec, error=ModelError).feature_names("geometry")
        keep = [i for i, n in enumerate(names) if n not in history_feature_names()]
        self.register_buffer("geom_keep", torch.tensor(keep, dtype=torch.long), persistent=False)
        self.embed["geometry"] = numeric_embedding(len(keep), cfg)
        del self.embed["clearances"]
        d_in = 2 * self.width("pair") + self.K * self.width("neighbours") + self.width("geometry")
        self.net = mlp(d_in, cfg.hidden, cfg.hidden, cfg.layers + 1, cfg.dropout)
        self.out_dim = cfg.hidden

    def forward(self, obs: Observations) -> tuple[torch.Tensor, None]:
        b, e = obs.pair.shape[0], self.embed
        x = torch.cat([e["pair"](obs.pair[:, -1]).reshape(b, -1), e["neighbours"](obs.neighbours[:, -1]).reshape(b, -1),
                       e["geometry"](obs.geometry[:, -1].index_select(-1, self.geom_keep))], dim=-1)
        return torch.nn.functional.gelu(self.net(x)), None
