"""The typed commands and results of every CRI RPC, and ``ALL_COMMANDS``: RPC name -> command class."""

from __future__ import annotations

from crirt.commands import containers, images, runtime, sandboxes, stats, streaming
from crirt.commands.base import Command


def _collect() -> dict[str, type[Command]]:
    commands: dict[str, type[Command]] = {}
    for module in (runtime, sandboxes, containers, streaming, stats, images):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Command) and value.__module__ == module.__name__:
                commands[value.rpc] = value
    return commands


ALL_COMMANDS: dict[str, type[Command]] = _collect()
