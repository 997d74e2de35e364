"""Pinned Linux namespaces and the few mounts a pod needs, without a helper binary of our own.

A pod's network, IPC and UTS namespaces are created by util-linux ``unshare`` with persistent namespace
files (``unshare --net=FILE``): unshare bind-mounts each new namespace onto its file, runs a tiny ``sh``
script inside the namespaces (hostname, sysctls) and exits; the bind mounts keep the namespaces alive with
no process in them (what CRI-O's pinns and ``ip netns add`` do). Unpinning is ``umount2(MNT_DETACH)``.

The directory holding the pins is made a shared mount (bind-mounted onto itself first when needed), as
containerd and ``ip netns`` do, so an unmount here also reaches copies of these mounts in other mount
namespaces and a namespace never outlives its pod there.

Mount and unmount are direct libc calls (ctypes): they are fast and cannot block.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from crirt import proc
from crirt.errors import CrirtError

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 0x2
CLONE_NEWNET = 0x40000000
T = TypeVar("T")
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFREQ = struct.Struct("16sH22x")  # struct ifreq: interface name, then the flags member of its union

PINNABLE = ("net", "ipc", "uts")
"""Namespace kinds crirt pins for a pod (the PID namespace needs a process: the infra container)."""

# Runs inside the new namespaces: $1 is the hostname ("" keeps the inherited one; /proc/sys takes it from the
# node's root only, so inside a pod's user namespace hostname(1) sets it, and domainname(1) the domain name),
# then sysctl path/value pairs relative to /proc/sys. Otherwise shell builtins only, so the whole pin costs one
# unshare and one sh. Exit code 3
# means a sysctl could not be set (sh has printed which file and why).
PIN_SCRIPT = (
    'if [ -n "$1" ]; then { printf %s "$1" > /proc/sys/kernel/hostname; } 2>/dev/null || hostname "$1" || exit 1; '
    'fi; shift; '
    'while [ $# -gt 1 ]; do printf %s "$2" 2>/dev/null > "/proc/sys/$1" || '
    '{ [ "$1" = kernel/domainname ] && domainname "$2" 2>/dev/null; } || '
    '{ echo "the kernel refused $1 = \'$2\'" >&2; exit 3; }; shift 2; done'
)


class NamespaceError(CrirtError):
    """Creating, pinning or mounting failed; the message says which path and why (gRPC UNKNOWN)."""


class SysctlError(NamespaceError):
    """A sysctl could not be set in the pod's namespaces (unknown name or a value the kernel refuses)."""


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


def _enc(value: str | Path | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(source: str | Path | None, target: str | Path, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    """mount(2); raises OSError with the errno and target."""
    if _libc.mount(_enc(source), _enc(target), _enc(fstype), flags, _enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source or fstype} on {target}: {os.strerror(err)}", str(target))


def unmount(target: str | Path) -> bool:
    """Lazily unmount ``target``; False when it was not a mount point (or does not exist)."""
    if _libc.umount2(_enc(target), MNT_DETACH) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):
        return False
    raise OSError(err, f"umount {target}: {os.strerror(err)}", str(target))


def unescape_mountinfo(field: str) -> str:
    """Undo the octal escapes (``\\040`` for a space, ...) the kernel uses in /proc/self/mountinfo."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        digits = field[i + 1 : i + 4]
        if field[i] == "\\" and len(digits) == 3 and all(c in "01234567" for c in digits):
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every line of a mountinfo file, in mount order."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 10 or "-" not in fields:
            continue
        sep = fields.index("-")
        mounts.append((unescape_mountinfo(fields[4]), fields[sep + 1]))
    return mounts


def mounts_under(prefix: Path) -> list[tuple[str, str]]:
    """Mounts of this process's mount namespace at or below ``prefix`` (deepest last)."""
    text = Path("/proc/self/mountinfo").read_text()
    root = str(prefix).rstrip("/")
    return [(point, fstype) for point, fstype in parse_mountinfo(text)
            if point == root or point.startswith(root + "/")]


def is_mount_point(path: Path) -> bool:
    return any(point == str(path) for point, _ in mounts_under(path))


def ensure_shared_dir(path: Path) -> None:
    """Make ``path`` a shared mount point (bind-mounting it onto itself if it is none yet)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        mount(None, path, None, MS_SHARED | MS_REC)
        return
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: not a mount point yet
            raise NamespaceError(f"cannot make {path} a shared mount: {exc.strerror}") from None
    try:
        mount(path, path, None, MS_BIND | MS_REC)
        mount(None, path, None, MS_SHARED | MS_REC)
    except OSError as exc:
        raise NamespaceError(f"cannot bind-mount {path} onto itself as a shared mount: {exc.strerror}") from None


def sysctl_args(sysctls: Iterable[tuple[str, str]]) -> list[str]:
    """Flatten (path relative to /proc/sys, value) pairs into PIN_SCRIPT's arguments."""
    return [part for pair in sysctls for part in pair]


async def pin_namespaces(pod_dir: Path, kinds: Sequence[str], hostname: str = "",
                         sysctls: Sequence[tuple[str, str]] = ()) -> dict[str, Path]:
    """Create new namespaces of ``kinds`` (subset of net/ipc/uts), pin each on ``pod_dir/<kind>``, set the
    hostname (in the new UTS namespace) and sysctls (in the new namespaces). Returns the pin paths.

    On failure some pins may exist: the caller's cleanup (``unpin``) removes them."""
    unknown = [k for k in kinds if k not in PINNABLE]
    if unknown:
        raise ValueError(f"cannot pin namespace kinds {unknown}; pinnable: {PINNABLE}")
    paths = {kind: pod_dir / kind for kind in kinds}
    for path in paths.values():
        path.touch(exist_ok=True)
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    argv = [unshare, *(f"--{kind}={path}" for kind, path in paths.items()), "/bin/sh", "-c", PIN_SCRIPT,
            "crirt-pin", hostname, *sysctl_args(sysctls)]
    done = await proc.run(argv)  # if cancelled, it lets the tiny process finish: cleanup never races its mounts
    err = done.stderr
    message = err.decode(errors="replace").strip() or f"exit code {done.returncode}"
    if done.returncode == 3:
        raise SysctlError(f"setting the pod's sysctls failed: {message}")
    if done.returncode != 0:
        raise NamespaceError(f"creating the pod's {'/'.join(kinds)} namespaces failed: {message}")
    return paths


def unpin(path: Path) -> bool:
    """Unmount a pinned namespace (or any mount) at ``path`` and delete the file; True if it was mounted."""
    was_mounted = unmount(path)
    try:
        if path.is_dir():
            path.rmdir()
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    return was_mounted


def mount_shm(path: Path, size_bytes: int) -> None:
    """A fresh tmpfs for the pod's /dev/shm (shared by its containers)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        mount("shm", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"mode=1777,size={size_bytes}")
    except OSError as exc:
        raise NamespaceError(f"cannot mount the pod's /dev/shm tmpfs on {path}: {exc.strerror}") from None


def is_namespace_file(path: Path) -> bool:
    """True when ``path`` is a pinned namespace (an nsfs mount)."""
    return any(point == str(path) and fstype == "nsfs" for point, fstype in mounts_under(path))


def _enter_netns(netns_path: Path) -> None:
    """Move the calling thread (only it) into the network namespace pinned at ``netns_path``."""
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {netns_path}: {os.strerror(err)}")
    finally:
        os.close(fd)


async def run_in_netns(netns_path: Path, work: Callable[[], T], discard: Callable[[T], None] | None = None) -> T:
    """Run ``work`` inside a network namespace and return its result.

    ``setns`` changes the namespace of the calling thread only, so ``work`` runs in a fresh thread that ends
    right after (never a pool thread that could be reused in the wrong namespace). The thread is not cut short
    by cancellation; a result nobody awaits any more is passed to ``discard`` (e.g. to close sockets)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, error: BaseException | None) -> None:
        if done.cancelled():
            if error is None and discard is not None:
                discard(result)  # type: ignore[arg-type]
        elif error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def thread() -> None:
        try:
            _enter_netns(netns_path)
            result = work()
        except BaseException as exc:  # delivered to the awaiting coroutine
            loop.call_soon_threadsafe(deliver, None, exc)
        else:
            loop.call_soon_threadsafe(deliver, result, None)

    threading.Thread(target=thread, name="crirt-netns", daemon=True).start()
    return await done


def _set_loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        _, flags = IFREQ.unpack(fcntl.ioctl(sock, SIOCGIFFLAGS, IFREQ.pack(b"lo", 0)))
        fcntl.ioctl(sock, SIOCSIFFLAGS, IFREQ.pack(b"lo", flags | IFF_UP))


async def loopback_up(netns_path: Path) -> None:
    """Bring up ``lo`` in a pinned network namespace without starting a process, as the CNI ``loopback``
    plugin does for ADD; doing it here saves a Go process per pod (measured: a third of the RunPodSandbox
    latency with 10 pods created at once on two CPUs). Cancellation waits for the thread to finish."""
    try:
        await asyncio.shield(run_in_netns(netns_path, _set_loopback_up))
    except OSError as exc:
        raise NamespaceError(f"bringing up lo in {netns_path} failed: {exc.strerror or exc}") from None
