"""Capture BlueSky's stack-command replies (detached mode drops them: trap 3 in docs).

Used by the simulator worker (:mod:`simulator_adapters._worker`), the parity test and the conflicts bench, so the
one capture is what all of them check. Imports nothing from BlueSky itself: pass its modules in.
"""
from __future__ import annotations

from typing import Any


def capture_replies(simstack: Any, bstack: Any = None) -> list[tuple[int, str]]:
    """Route ``simstack.echo`` (and ``bstack.echo``, BlueSky's base echo, when given) into a list of
    ``(flags, text)`` replies, and return that list. A reply with ``flags != 0`` (``bs.BS_OK``) is an error."""
    replies: list[tuple[int, str]] = []

    def echo(text="", flags=0, to_group=b""):
        replies.append((int(flags or 0), str(text)))

    def echo_base(*args, **kwargs):   # bluesky.stack.echo(self, text, flags) in detached mode
        text = next((a for a in args if isinstance(a, str) and a), kwargs.get("text", ""))
        replies.append((0, str(text)))

    simstack.echo = echo
    if bstack is not None:
        bstack.echo = echo_base
    return replies
