"""Run the real crirt daemon, and kill it with SIGKILL right after one chosen step of a container's life.

``python crash_server.py POINT --config FILE``, where POINT is one of:
- ``rootfs``: CreateContainer mounted the root filesystem (no bundle, task or record yet);
- ``create``: the runtime created the task (no record yet);
- ``start``: the task started (the record still says CREATED);
- ``delete``: RemoveContainer deleted the task (rootfs, bundle and record are still there).
Only container steps are instrumented: use pods without an infra container. Everything else is crirt as
``crirt serve`` runs it.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from crirt.config import load_config
from crirt.server import App, run

POINTS = ("rootfs", "create", "start", "delete")


def crash_after(step: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(step)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        await step(*args, **kwargs)
        logging.getLogger(__name__).warning("crash point reached after %s: SIGKILL", step.__name__)
        os.kill(os.getpid(), signal.SIGKILL)

    return wrapper


def instrument(point: str) -> Callable[[App], None]:
    def setup(app: App) -> None:
        if point == "rootfs":
            snapshots = app.images.snapshots
            snapshots.prepare_rootfs = crash_after(snapshots.prepare_rootfs)  # type: ignore[method-assign]
        else:
            shim = app.registry.resolve("")
            setattr(shim, point, crash_after(getattr(shim, point)))

    return setup


def main() -> None:
    point, config = sys.argv[1], load_config(Path(sys.argv[3]))
    if point not in POINTS:
        raise SystemExit(f"unknown crash point {point!r}; one of {', '.join(POINTS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(config, instrument(point))


if __name__ == "__main__":
    main()
