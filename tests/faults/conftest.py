"""Injected faults (a hung runtime, a killed conmon, a hung or failing CNI DEL, a stalled registry, a full disk):
each test starts its own daemon, injects one fault, checks that the daemon keeps serving, and that once the fault
is gone nothing of the test's pods and containers is left on the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Collection, Iterator
from pathlib import Path

from support.network import BridgeNetwork


def processes_mentioning(*needles: str) -> dict[int, str]:
    """Processes (other than this one) one of whose arguments contains one of ``needles``: pid -> command line."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(needle.encode() in arg for needle in needles for arg in argv):
            found[int(entry.name)] = b" ".join(argv).decode(errors="replace").strip()
    return found


def traces(base: Path, net: BridgeNetwork, ids: Collection[str]) -> dict[str, list[str]]:
    """What is left on the host of the pods and containers ``ids`` of the daemon under ``base``: processes
    (conmon, runc, plugins) naming them, mounts (netns and /dev/shm pins, rootfs) and files or directories under
    ``base`` (bundles, rootfs dirs, runc state, exit files, CNI cache) named after them, and the addresses the
    network's host-local store holds for them. Empty when everything is gone."""
    mounts = [line.split(" ")[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    paths = [str(Path(d, n).relative_to(base)) for d, dirs, files in os.walk(base) for n in dirs + files
             if any(i in n for i in ids)]
    store = Path("/var/lib/cni/networks") / net.name
    addresses = [ip for ip in net.allocations()
                 if any(i in (store / ip).read_text(errors="replace") for i in ids)]
    found = {"processes": sorted(processes_mentioning(*ids).values()),
             "mounts": [m for m in mounts if any(i in m for i in ids)],
             "paths": sorted(paths), "addresses": addresses}
    return {key: value for key, value in found.items() if value}


@contextlib.contextmanager
def held(lock: Path) -> Iterator[None]:
    """Hold an exclusive flock(2) on ``lock``: a ``flock <lock> ...`` in an injected script waits meanwhile."""
    with lock.open("a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def executable_script(path: Path, text: str) -> Path:
    """Write an executable script (a wrapper that injects a fault) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path
