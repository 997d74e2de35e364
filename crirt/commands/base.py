"""Base classes for the typed commands and results that travel on the bus.

Each CRI RPC has one command (built from its request) and one result (turned into its response).
Field names match the CRI proto so the front end converts them generically.
"""

from __future__ import annotations

from typing import ClassVar

from crirt.model.base import Model


class Result(Model):
    """What a handler returns for a command."""


class Command(Model):
    """A request to do something; exactly one handler serves each command type."""

    rpc: ClassVar[str]
    """The CRI RPC this command comes from, e.g. ``ContainerStatus``."""

    result: ClassVar[type[Result]]
    """The result type the handler returns (for streaming RPCs: yields)."""

    streaming: ClassVar[bool] = False
    """True when the RPC streams several results back."""

    def lock_keys(self) -> tuple[str, ...]:
        """Keys of the objects this command touches; commands sharing a key never interleave."""
        return ()
