"""Run the real crirt daemon with one test middleware that lets a test make a call slow or crash.

``python instrumented_server.py MARKER_DIR --config FILE``. A Version request whose ``version`` is
``sleep:<seconds>`` sleeps first; ``crash`` raises inside the handler chain. When a sleeping call is
cancelled, the middleware writes ``MARKER_DIR/cancelled``; when it completes, ``MARKER_DIR/completed``.
``spawns`` answers with the number of programs the daemon has started so far (through ``subprocess.Popen``,
which ``crirt.proc`` and the drivers use, or asyncio's subprocess functions) as ``runtime_version``.
Everything else is crirt exactly as ``crirt serve`` runs it.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from crirt.bus import CallNext
from crirt.commands.base import Command
from crirt.commands.runtime import VersionCommand, VersionResult
from crirt.config import load_config
from crirt.server import App, run

SPAWNS = [0]


def count_spawns() -> None:
    """Count every program the daemon starts, whichever way it is started."""
    execute_child = subprocess.Popen._execute_child  # type: ignore[attr-defined]

    def counted_execute_child(self: Any, *args: Any, **kwargs: Any) -> Any:
        SPAWNS[0] += 1
        return execute_child(self, *args, **kwargs)

    subprocess.Popen._execute_child = counted_execute_child  # type: ignore[attr-defined]
    for name in ("create_subprocess_exec", "create_subprocess_shell"):
        original = getattr(asyncio, name)

        async def counted(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            SPAWNS[0] += 1
            return await _original(*args, **kwargs)

        setattr(asyncio, name, counted)


def instrument(markers: Path) -> Any:
    async def middleware(command: Command, call_next: CallNext) -> Any:
        if isinstance(command, VersionCommand) and command.version == "spawns":
            return VersionResult(version="spawns", runtime_name="crirt", runtime_version=str(SPAWNS[0]),
                                 runtime_api_version="v1")
        if isinstance(command, VersionCommand):
            if command.version == "crash":
                raise RuntimeError("instrumented crash")
            if command.version.startswith("sleep:"):
                try:
                    await asyncio.sleep(float(command.version.removeprefix("sleep:")))
                except asyncio.CancelledError:
                    (markers / "cancelled").touch()
                    raise
                (markers / "completed").touch()
        return await call_next(command)

    def setup(app: App) -> None:
        app.bus.middleware.append(middleware)

    return setup


def main() -> None:
    markers, config = Path(sys.argv[1]), load_config(Path(sys.argv[3]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    count_spawns()
    run(config, instrument(markers))


if __name__ == "__main__":
    main()
