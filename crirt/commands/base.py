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

    run_to_completion: ClassVar[bool] = False
    """True when the work must finish even if the caller goes away (a teardown cut in half would leave a pod
    half torn down): the handler then runs on, holding its locks, and the caller only stops waiting."""

    def lock_keys(self) -> tuple[str, ...]:
        """Keys of the objects this command touches, ``kind:id``; commands sharing a key never interleave.
        The id is the caller's (maybe a prefix): the bus resolves it to the full id first."""
        return ()
