"""Small building blocks shared by the encoders and the heads (no configs, no registries)."""

from __future__ import annotations

from torch import nn


def mlp(d_in: int, hidden: int, d_out: int, layers: int = 2, dropout: float = 0.0) -> nn.Sequential:
    """``layers`` Linear layers with GELU (and dropout) between them."""
    mods: list[nn.Module] = []
    d = d_in
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden), nn.GELU()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
        d = hidden
    mods.append(nn.Linear(d, d_out))
    return nn.Sequential(*mods)
