"""Policy heads: one module per head, each with its pydantic config beside it.

``HeadConfig`` is the union of the heads' configs, discriminated by ``name`` (a YAML ``head: {name: mdn,
components: 4}`` picks :class:`MDNConfig`; without a ``name`` the head is ``mdn``). Importing this package
imports every head module, and each module registers its head in :data:`HEADS` itself: the modules import
only :mod:`models.heads.base` (and the generative heads' shared :mod:`models.heads.generative`), never this
package, so there is no import cycle.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from models.heads.autoregressive import AutoregressiveConfig, AutoregressiveHead
from models.heads.base import HEADS, RESUME, Head, HeadConfigBase
from models.heads.cvae import CVAEConfig, CVAEHead
from models.heads.deterministic import DeterministicConfig, DeterministicHead
from models.heads.diffusion import DiffusionConfig, DiffusionHead
from models.heads.mdn import MDNConfig, MDNHead

HeadConfig = Annotated[DeterministicConfig | MDNConfig | AutoregressiveConfig | CVAEConfig | DiffusionConfig,
                       Field(discriminator="name")]
HEAD_CONFIGS: dict[str, type[HeadConfigBase]] = {
    "deterministic": DeterministicConfig, "mdn": MDNConfig, "autoregressive": AutoregressiveConfig,
    "cvae": CVAEConfig, "diffusion": DiffusionConfig}
DEFAULT_HEAD = "mdn"
_ADAPTER: TypeAdapter = TypeAdapter(HeadConfig)


def head_config(name: str = DEFAULT_HEAD, **fields: Any) -> HeadConfigBase:
    """The config of head ``name`` with ``fields`` (validated; unknown fields are errors)."""
    return _ADAPTER.validate_python({"name": name, **fields})


def drop_other_heads_fields(head: dict) -> dict:
    """A head section written by the flat config of earlier versions (every head's fields in one section,
    as in the ``config.yaml`` of policies saved then) reduced to the fields of its own head."""
    cls = HEAD_CONFIGS.get(head.get("name", DEFAULT_HEAD))
    if cls is None:
        return head
    others = {f for c in HEAD_CONFIGS.values() for f in c.model_fields} - set(cls.model_fields)
    return {k: v for k, v in head.items() if k not in others}


__all__ = ["HEADS", "HEAD_CONFIGS", "RESUME", "AutoregressiveConfig", "AutoregressiveHead", "CVAEConfig", "CVAEHead",
           "DeterministicConfig", "DeterministicHead", "DiffusionConfig", "DiffusionHead", "Head", "HeadConfig",
           "HeadConfigBase", "MDNConfig", "MDNHead", "drop_other_heads_fields", "head_config"]
