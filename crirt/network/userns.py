"""A pod's user namespace with its id mappings, and the pod's network, IPC and UTS namespaces inside it, all
pinned on files like the other pod namespaces (``crirt.network.netns``).

util-linux ``unshare --user=FILE`` cannot pin a user namespace here (its helper's bind mount fails with EPERM)
and ``--map-users`` needs newuidmap, which Debian does not install by default. So crirt starts
``unshare --user --net --ipc --uts sh -c 'read _'`` as a holder, waits until the holder is in its new user
namespace, writes the holder's ``uid_map``/``gid_map`` (crirt is root in the parent namespace), bind-mounts
each ``/proc/PID/ns/KIND`` onto the pod's pin files and lets the holder go. The namespaces are created by one
``unshare(2)``, so network, IPC and UTS belong to the new user namespace (sysfs can then be mounted in
containers). The hostname and sysctls are then set by ``nsenter`` as the namespace's root.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from crirt import proc
from crirt.network import netns
from crirt.oci.userns import UserNamespacePlan

HOLDER_WAIT = 5.0
"""Seconds the holder may take to enter its new namespaces."""
USER = "user"


def unsearchable_parent(path: Path) -> Path | None:
    """The first directory on the way to ``path`` (itself included) that others may not search, if any: runc,
    as the root of a pod's user namespace, is "others" for crirt's directories and must reach the pod's files
    and rootfs through them (containerd makes its directories 0711 for the same reason)."""
    for directory in [*reversed(path.parents), path]:
        try:
            if not os.stat(directory).st_mode & stat.S_IXOTH:
                return directory
        except FileNotFoundError:
            return None  # crirt creates it (0755 or 0711)
    return None


def _wait_unshared(holder: subprocess.Popen[bytes]) -> None:
    """Return once ``holder`` is in a user namespace other than crirt's."""
    own = os.readlink("/proc/self/ns/user")
    deadline = time.monotonic() + HOLDER_WAIT
    while True:
        if holder.poll() is not None:
            err = holder.stderr.read().decode(errors="replace").strip() if holder.stderr else ""
            raise netns.NamespaceError(f"creating the pod's user namespace failed: {err or holder.returncode}")
        try:
            if os.readlink(f"/proc/{holder.pid}/ns/user") != own:
                return
        except FileNotFoundError:
            continue  # exited meanwhile: poll() says why
        if time.monotonic() > deadline:
            raise netns.NamespaceError("creating the pod's user namespace timed out")
        time.sleep(0.001)


def create_and_pin(pod_dir: Path, kinds: Sequence[str], plan: UserNamespacePlan) -> dict[str, Path]:
    """Create a user namespace with ``plan``'s mappings and new namespaces of ``kinds`` owned by it; pin each
    on ``pod_dir/<kind>``. Blocking: run it in a thread. On failure some pins may exist: the caller's cleanup
    (``netns.unpin``) removes them."""
    unknown = [k for k in kinds if k not in netns.PINNABLE]
    if unknown:
        raise ValueError(f"cannot pin namespace kinds {unknown}; pinnable: {netns.PINNABLE}")
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    holder = subprocess.Popen([unshare, "--user", *(f"--{k}" for k in kinds), "--", "/bin/sh", "-c", "read _"],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    paths = {kind: pod_dir / kind for kind in (USER, *kinds)}
    try:
        _wait_unshared(holder)
        try:
            Path(f"/proc/{holder.pid}/uid_map").write_text(plan.uid.line())
            Path(f"/proc/{holder.pid}/gid_map").write_text(plan.gid.line())
        except OSError as exc:
            raise netns.NamespaceError(f"writing the pod's id mappings failed: {exc.strerror or exc}") from None
        for kind, path in paths.items():
            path.touch(exist_ok=True)
            try:
                netns.mount(f"/proc/{holder.pid}/ns/{kind}", path, None, netns.MS_BIND)
            except OSError as exc:
                raise netns.NamespaceError(f"pinning the pod's {kind} namespace failed: {exc.strerror}") from None
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # the holder's read ends: it exits
        try:
            holder.wait(timeout=HOLDER_WAIT)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
        if holder.stderr is not None:
            holder.stderr.close()
    return paths


async def pin_user_namespaces(pod_dir: Path, kinds: Sequence[str], plan: UserNamespacePlan, hostname: str = "",
                              sysctls: Sequence[tuple[str, str]] = ()) -> dict[str, Path]:
    """The pod's user namespace and its ``kinds`` namespaces, pinned, with the hostname and sysctls set inside
    (as the user namespace's root, which the kernel asks for IPC sysctls). Returns the pin paths."""
    work = asyncio.ensure_future(asyncio.to_thread(create_and_pin, pod_dir, kinds, plan))
    try:
        paths = await asyncio.shield(work)
    except asyncio.CancelledError:  # let the mounts finish, so the caller's cleanup never races them
        with contextlib.suppress(Exception):
            await work
        raise
    nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
    argv = [nsenter, *(f"--{kind}={path}" for kind, path in paths.items()), "--", "/bin/sh", "-c",
            netns.PIN_SCRIPT, "crirt-pin", hostname, *netns.sysctl_args(sysctls)]
    done = await proc.run(argv)
    message = done.stderr.decode(errors="replace").strip() or f"exit code {done.returncode}"
    if done.returncode == 3:
        raise netns.SysctlError(f"setting the pod's sysctls failed: {message}")
    if done.returncode != 0:
        raise netns.NamespaceError(f"setting up the pod's namespaces failed: {message}")
    return paths
