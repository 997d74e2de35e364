"""Id-mapped bind mounts (``open_tree(2)`` + ``mount_setattr(2)`` ``MOUNT_ATTR_IDMAP`` + ``move_mount(2)``), as
containerd makes them for pods with a user namespace, through ctypes syscalls (glibc 2.36 has no wrappers).

Files seen through an id-mapped mount show the owners the pod's user namespace maps them to: a file of host
root appears owned by the mapped root (host id ``uid_map``'s host start), which is root inside the pod. So image
layers need no chown copy per pod. The calls block on the kernel's mount lock: run them in a thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass
from pathlib import Path

SYS_OPEN_TREE = 428  # x86_64 and aarch64 share the numbers of these new syscalls
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000


class MountAttr(ctypes.Structure):
    """``struct mount_attr`` (MOUNT_ATTR_SIZE_VER0, 32 bytes)."""

    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


@dataclass(frozen=True)
class Idmap:
    """How to map a pod's files: its pinned user namespace and the host ids of its root."""

    userns: Path
    root_uid: int
    root_gid: int


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _check(result: int, what: str, path: Path | str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} {path}: {os.strerror(err)}", str(path))
    return result


def idmapped_bind(source: Path, target: Path, userns: Path) -> None:
    """Mount ``source`` (its whole tree) on ``target``, id-mapped by the user namespace pinned at ``userns``."""
    tree = _check(_libc.syscall(SYS_OPEN_TREE, AT_FDCWD, os.fsencode(source),
                                OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE), "open_tree", source)
    try:
        ns = os.open(userns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            attr = MountAttr(attr_set=MOUNT_ATTR_IDMAP, userns_fd=ns)
            _check(_libc.syscall(SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH | AT_RECURSIVE, ctypes.byref(attr),
                                 ctypes.sizeof(attr)), "mount_setattr idmap", source)
        finally:
            os.close(ns)
        _check(_libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, os.fsencode(target), MOVE_MOUNT_F_EMPTY_PATH),
               "move_mount to", target)
    finally:
        os.close(tree)
