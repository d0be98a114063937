"""Controllers by name: ``make_controller("atco")``, ``"varied"``, ``"mvp"``, ``"none"`` or ``"model:URI"``.

A table of names to ``"module:attribute"`` resolved with importlib when a controller is made, so that this
module imports none of the modules that define controllers (no import cycle, and ``model:URI`` loads the
model stack only when asked for). Plug-ins add a factory with :func:`register`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from atc_il.errors import ConfigError

BUILTIN = {
    "none": "simulator_adapters.controllers:NoController",
    "mvp": "simulator_adapters.controllers:MVPController",
    "atco": "simulator_adapters.atco:SyntheticAtco",
    "varied": "simulator_adapters.varied:VariedController",  # real-world clearance kinds, for extraction benches
    "model": "simulator_adapters.model_controller:ModelController",   # model:URI, a learned policy in the loop
    "dagger": "simulator_adapters.dagger:DaggerController",   # dagger:URI, the learner drives, the expert labels
}
_PLUGINS: dict[str, Callable[..., Any]] = {}


def register(name: str, factory: Callable[..., Any]) -> None:
    """Add a controller factory under ``name`` (``name:ARG`` passes ARG as its first argument)."""
    if name in BUILTIN or name in _PLUGINS:
        raise ConfigError(f"controller {name!r} is already registered")
    _PLUGINS[name] = factory


def known() -> list[str]:
    return sorted({*BUILTIN, *_PLUGINS})


def factory(name: str) -> Callable[..., Any]:
    if name in _PLUGINS:
        return _PLUGINS[name]
    if name not in BUILTIN:
        raise ConfigError(f"unknown controller {name!r}; known: {known()}")
    module, _, attr = BUILTIN[name].partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise ConfigError(f"controller {name!r}: {module} cannot be loaded: {exc}") from exc


def make_controller(spec: str, **kwargs: Any) -> Any:
    """Build a controller (:class:`simulator_adapters.controllers.Controller`) from ``atco``, ``mvp``, ``none``,
    ``model:URI`` or a registered plug-in's ``name[:ARG]``."""
    name, _, arg = spec.partition(":")
    make = factory(name)
    return make(arg, **kwargs) if arg else make(**kwargs)
