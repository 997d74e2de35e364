"""Layer snapshots (one directory per layer, keyed by chain id) and container root filesystems on overlayfs.

``<root>/images/snapshots/<chain-id hex>/`` holds exactly one layer's files in overlay form. A layer is
unpacked into ``.staging/`` and published by one atomic rename once it is complete and verified; it never
changes afterwards, so any number of containers can use it as a lower directory. Layers do not depend on
each other's content, which is what lets a pull unpack all of them at the same time.

The container rootfs API (used by the container handlers): ``prepare_rootfs`` mounts
``lowerdir=<top>:...:<bottom>`` with a private ``upper``/``work`` under ``<root>/rootfs/<id>/`` and returns the
mountpoint; ``rootfs_usage`` reports the writable layer's bytes and inodes; ``remove_rootfs`` unmounts and
deletes it. The chain ids a rootfs uses are written next to it (``layers.json``) before anything is
mounted, and garbage collection keeps every snapshot a rootfs names, even after its image was removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path

from crirt.errors import FailedPrecondition, NotFound
from crirt.images.idmap import Idmap, idmapped_bind
from crirt.images.unpack import disk_usage
from crirt.network import netns
from crirt.proc import run

MAX_MOUNT_OPTIONS = 4000
"""The kernel reads mount options from one page; leave room for the rest of the string."""


def _hex(chain_id: str) -> str:
    algorithm, _, hex_part = chain_id.partition(":")
    if algorithm != "sha256" or len(hex_part) != 64:
        raise ValueError(f"not a chain id: {chain_id!r}")
    return hex_part


async def _run(*argv: str, cwd: Path | None = None) -> tuple[int, str]:
    """Exit code and what ``argv`` printed (stderr, then stdout)."""
    done = await run(argv, cwd=str(cwd) if cwd is not None else None)
    return done.returncode, (done.stderr + done.stdout).decode(errors="replace").strip()


class SnapshotStore:
    """Committed layer directories and container root filesystems."""

    def __init__(self, root: Path, rootfs_root: Path) -> None:
        self.root = root
        self.staging_root = root / ".staging"
        self.trash = root / ".trash"
        self.rootfs_root = rootfs_root

    def recover(self) -> None:
        """Create the directories; drop half-unpacked and half-deleted layers of an earlier run."""
        for directory in (self.staging_root, self.trash):
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
        self.rootfs_root.mkdir(parents=True, exist_ok=True)

    def path(self, chain_id: str) -> Path:
        return self.root / _hex(chain_id)

    def exists(self, chain_id: str) -> bool:
        return self.path(chain_id).is_dir()

    def chain_ids(self) -> list[str]:
        return [f"sha256:{p.name}" for p in self.root.iterdir() if not p.name.startswith(".")]

    def staging(self) -> Path:
        """A new empty directory to unpack a layer into (same filesystem, so commit is a rename)."""
        path = self.staging_root / uuid.uuid4().hex
        path.mkdir(mode=0o755)
        return path

    def commit(self, staging: Path, chain_id: str) -> None:
        """Publish an unpacked layer; if another pull published the same chain id first, keep theirs."""
        try:
            os.rename(staging, self.path(chain_id))
        except OSError:
            if not self.exists(chain_id):
                raise
            shutil.rmtree(staging, ignore_errors=True)

    def retire(self, chain_id: str) -> Path | None:
        """Move a layer out of sight at once (an atomic rename); delete the returned path later."""
        target = self.trash / uuid.uuid4().hex
        try:
            os.rename(self.path(chain_id), target)
        except FileNotFoundError:
            return None
        return target

    # --- container root filesystems -------------------------------------------------------------------

    def _rootfs(self, container_id: str) -> Path:
        if not container_id or "/" in container_id or container_id.startswith("."):
            raise ValueError(f"bad container id {container_id!r}")
        return self.rootfs_root / container_id

    def rootfs_ids(self) -> list[str]:
        """The container ids that have a root filesystem here (prepared, or left half-made by a crash)."""
        return sorted(p.name for p in self.rootfs_root.iterdir()) if self.rootfs_root.is_dir() else []

    def rootfs_references(self) -> set[str]:
        """Chain ids used by prepared root filesystems (kept by garbage collection)."""
        used: set[str] = set()
        for directory in self.rootfs_root.iterdir() if self.rootfs_root.is_dir() else []:
            with contextlib.suppress(OSError, ValueError):
                used.update(json.loads((directory / "layers.json").read_text()))
        return used

    async def prepare_rootfs(self, container_id: str, chain_ids: list[str], idmap: Idmap | None = None) -> Path:
        """Mount an overlay of the layers ``chain_ids`` (bottom first) with a private writable layer.

        With ``idmap`` (a pod with its own user namespace) the layers are read through an id-mapped bind of the
        snapshot root (``<rootfs>/<id>/lower``, dropped once the overlay holds it) and the writable layer is
        owned by the pod's root, so the image shows its owners inside the pod without a chown copy.
        Returns the mountpoint ``<rootfs>/<id>/merged``. The snapshots must exist (they are the image's)."""
        base = self._rootfs(container_id)
        base.mkdir(mode=0o711 if idmap else 0o700)  # the pod's root (runc in its user namespace) must reach merged/
        (base / "layers.json").write_text(json.dumps(chain_ids))  # from now on GC keeps these layers
        missing = [c for c in chain_ids if not self.exists(c)]
        if missing:
            shutil.rmtree(base)
            raise NotFound(f"layers {missing} of the image are not on this node")
        for name in ("upper", "work", "merged"):
            (base / name).mkdir(mode=0o755)
        layers = base / "lower" if idmap else self.root
        options = self._overlay_options(base, layers, chain_ids, absolute=True)
        relative = len(options) > MAX_MOUNT_OPTIONS
        if relative:  # lower dirs relative to the snapshot root keep a many-layer option string short
            options = self._overlay_options(base, layers, chain_ids, absolute=False)
            if len(options) > MAX_MOUNT_OPTIONS:
                shutil.rmtree(base)
                raise FailedPrecondition(f"the image has too many layers ({len(chain_ids)}) for one overlay mount")
        try:
            if idmap:
                await asyncio.to_thread(self._idmap_layers, base, idmap)
            if relative:  # only a child process can mount from another working directory
                code, output = await _run("mount", "-t", "overlay", "overlay", "-o", options, str(base / "merged"),
                                          cwd=layers)
                if code:
                    raise OSError(output)
            else:
                await asyncio.to_thread(netns.mount, "overlay", base / "merged", "overlay", 0, options)
        except OSError as exc:
            await asyncio.to_thread(self._drop_idmapped_layers, base)
            shutil.rmtree(base)
            raise FailedPrecondition(f"cannot mount the rootfs of {container_id}: {exc}") from None
        await asyncio.to_thread(self._drop_idmapped_layers, base)  # the overlay keeps what it needs of it
        return base / "merged"

    def _idmap_layers(self, base: Path, idmap: Idmap) -> None:
        """The snapshot root id-mapped for the pod on ``base/lower``; the writable layer owned by its root."""
        (base / "lower").mkdir(mode=0o700)
        idmapped_bind(self.root, base / "lower", idmap.userns)
        os.chown(base / "upper", idmap.root_uid, idmap.root_gid)

    @staticmethod
    def _drop_idmapped_layers(base: Path) -> None:
        """Unmount and delete ``base/lower`` if there is one (idempotent, also after a crash)."""
        if (base / "lower").is_dir():
            netns.unmount(base / "lower")
            (base / "lower").rmdir()

    def _overlay_options(self, base: Path, layers: Path, chain_ids: list[str], *, absolute: bool) -> str:
        """Overlay mount options with the layers top first (an image without layers gets an empty lower)."""
        lower = ":".join(str(layers / _hex(c)) if absolute else _hex(c) for c in reversed(chain_ids))
        if not lower:
            (base / "empty").mkdir(mode=0o755, exist_ok=True)
            lower = str(base / "empty")
        return f"lowerdir={lower},upperdir={base / 'upper'},workdir={base / 'work'},index=off"

    def rootfs_usage(self, container_id: str) -> tuple[int, int]:
        """(bytes, inodes) of a rootfs' writable layer. Walks the tree: run it in a thread."""
        upper = self._rootfs(container_id) / "upper"
        if not upper.is_dir():
            raise NotFound(f"no rootfs for {container_id}")
        return disk_usage(str(upper))

    async def remove_rootfs(self, container_id: str) -> None:
        """Unmount and delete a rootfs; removing one that does not exist is fine."""
        base = self._rootfs(container_id)
        if not base.exists():
            return
        try:
            await asyncio.to_thread(netns.unmount, base / "merged")
            await asyncio.to_thread(self._drop_idmapped_layers, base)
        except OSError as exc:
            raise FailedPrecondition(f"cannot unmount the rootfs of {container_id}: {exc}") from None
        await asyncio.to_thread(shutil.rmtree, base)
