"""Id-mapped copies of the bind mounts of a container in a pod with its own user namespace.

runc 1.1 cannot id-map a bind mount itself, so crirt makes, for each volume and pod file (``/etc/hosts``,
``/etc/hostname``, ``resolv.conf``, ``/dev/shm``), an id-mapped mount of the source under
``<state>/idmapped/<container id>/<n>`` and gives runc that path as a plain bind source. Files of the node's root
then show as root inside the pod, and what the pod's root writes belongs to the mapped id on the node.

These directories hold mounts of the node's own data: they are only ever unmounted and removed entry by entry,
never walked and deleted as a tree. All calls block on the kernel's mount lock: run them in a thread.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from crirt.images.idmap import idmapped_bind
from crirt.network import netns

log = logging.getLogger(__name__)

UNSUPPORTED = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, errno.EPERM)
"""What ``mount_setattr`` answers for a filesystem (or a submount) that cannot be id-mapped."""


class IdmappedBinds:
    """The id-mapped bind sources of every container of a user-namespaced pod, one directory per container."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def ids(self) -> list[str]:
        """Containers that have a directory here (for the removal of orphans after a crash)."""
        return sorted(p.name for p in self.root.iterdir()) if self.root.is_dir() else []

    def prepare(self, container_id: str, mounts: list[dict[str, Any]], sources: Collection[str],
                userns: Path) -> list[dict[str, Any]]:
        """``mounts`` (an OCI spec's) with each bind whose source is in ``sources`` replaced by an id-mapped
        copy for the user namespace pinned at ``userns``. A source whose filesystem cannot be id-mapped stays
        a plain bind (its files keep showing as ``nobody`` inside) and a warning names it."""
        wanted = set(sources)
        if not any(m.get("type") == "bind" and m.get("source") in wanted for m in mounts):
            return mounts
        self.root.mkdir(mode=0o711, exist_ok=True)
        base = self.root / container_id
        base.mkdir(mode=0o711)  # runc, as the pod's root, passes through it to reach the sources
        out = []
        for index, mount in enumerate(mounts):
            source = mount.get("source")
            if mount.get("type") != "bind" or source not in wanted:
                out.append(mount)
                continue
            target = base / str(index)
            if os.path.isdir(source):
                target.mkdir(mode=0o711)
            else:
                target.touch(mode=0o600)
            try:
                idmapped_bind(Path(source), target, userns)
            except OSError as exc:
                if exc.errno not in UNSUPPORTED:
                    raise
                log.warning("container %s: %s cannot be id-mapped (%s); bound as it is, its files owned by ids "
                            "outside the pod's range show as nobody", container_id, source, exc.strerror)
                _remove_entry(target)
                out.append(mount)
                continue
            out.append({**mount, "source": str(target)})
        return out

    def release(self, container_id: str) -> None:
        """Unmount and remove a container's id-mapped sources (idempotent; also what a crash left)."""
        base = self.root / container_id
        if not base.is_dir():
            return
        for entry in base.iterdir():
            netns.unmount(entry)
            _remove_entry(entry)
        base.rmdir()


def _remove_entry(entry: Path) -> None:
    """Remove one (unmounted) mount point: an empty directory or an empty file."""
    if entry.is_dir():
        entry.rmdir()
    else:
        entry.unlink(missing_ok=True)
