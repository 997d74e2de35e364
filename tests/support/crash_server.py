"""Run the real crirt daemon, and kill it with SIGKILL right after one chosen step of a container's life.

``python crash_server.py POINT --config FILE``, where POINT is one of:
- ``rootfs``: CreateContainer mounted the root filesystem (no bundle, task or record yet);
- ``create``: the runtime created the task (no record yet);
- ``start``: the task started (the record still says CREATED);
- ``kill``: StopContainer signalled the task (its exit is not recorded yet);
- ``delete``: RemoveContainer deleted the task (rootfs, bundle and record are still there).
POINT may also be ``@ARMFILE``: every point is instrumented, and the daemon dies at the one ``ARMFILE`` names
when it is reached, deleting the file first (so the restarted daemon does not die there again); while the file
is missing or names no point, the daemon runs on. Only container steps are instrumented: use pods without an
infra container. Everything else is crirt as ``crirt serve`` runs it.
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

POINTS = ("rootfs", "create", "start", "kill", "delete")


def armed_by(arm_file: Path) -> Callable[[str], bool]:
    """A check that ``arm_file`` names a point; a point found armed is disarmed (the file is deleted)."""
    def armed(point: str) -> bool:
        try:
            if arm_file.read_text().strip() != point:
                return False
        except FileNotFoundError:
            return False
        arm_file.unlink()
        return True

    return armed


def crash_after(step: Callable[..., Awaitable[Any]], point: str,
                armed: Callable[[str], bool]) -> Callable[..., Awaitable[Any]]:
    """``step``, then SIGKILL of this process if ``point`` is armed."""
    @functools.wraps(step)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = await step(*args, **kwargs)
        if not armed(point):
            return result
        logging.getLogger(__name__).warning("crash point reached after %s: SIGKILL", step.__name__)
        os.kill(os.getpid(), signal.SIGKILL)

    return wrapper


def instrument(points: tuple[str, ...], armed: Callable[[str], bool]) -> Callable[[App], None]:
    """Wrap the steps of ``points`` so that the daemon dies after one when ``armed`` says so."""
    def setup(app: App) -> None:
        shim = app.registry.resolve("")
        for point in points:
            if point == "rootfs":
                snapshots = app.images.snapshots
                snapshots.prepare_rootfs = crash_after(snapshots.prepare_rootfs, point,  # type: ignore[method-assign]
                                                       armed)
            else:
                setattr(shim, point, crash_after(getattr(shim, point), point, armed))

    return setup


def main() -> None:
    point, config = sys.argv[1], load_config(Path(sys.argv[3]))
    if point.startswith("@"):
        setup = instrument(POINTS, armed_by(Path(point[1:])))
    elif point in POINTS:
        setup = instrument((point,), lambda _: True)
    else:
        raise SystemExit(f"unknown crash point {point!r}; one of {', '.join(POINTS)} or @ARMFILE")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(config, setup)


if __name__ == "__main__":
    main()
