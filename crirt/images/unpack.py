"""Unpack one layer's tar stream into its own directory, safely, in overlayfs form.

Every refusal is a ``FailedPrecondition`` (``ResourceExhausted`` for limits) naming the entry.

Names: as in containerd, an absolute name (``/bin/sh``, as umoci writes) is relative to the layer's root, and
an entry for the root itself (``/``, ``./``) is skipped: the layer's root directory is never shown in a
container (the writable layer's own root is), so its metadata has nowhere to go.

Safety: no name may contain ``..``; no symlink is ever followed (a parent directory must be a real
directory created or checked by this unpack, so ``link -> /etc`` followed by ``link/passwd`` is refused);
hard links must point at a non-directory already unpacked in this same layer (an absolute target is
relative to the layer's root too); overlayfs' own ``trusted.overlay.*`` attributes are refused; the number of
entries is capped. Only this thread writes into the (private, not yet published) directory, so checking a
path and then using it is race-free.

Overlay form: an OCI whiteout ``dir/.wh.name`` becomes a 0:0 character device ``dir/name``; the opaque
marker ``dir/.wh..wh..opq`` becomes the ``trusted.overlay.opaque=y`` attribute on ``dir``. Whiteouts only
hide lower layers: a path this layer itself created stays (a directory becomes opaque instead).

Kept: modes (setuid/setgid/sticky included), owners, modification times, xattrs, hard links, symlinks,
device nodes and fifos. Directory times are set at the end, once their contents stopped changing them.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from crirt.errors import FailedPrecondition, ResourceExhausted
from crirt.images.tarstream import (
    BLOCKDEV,
    CHARDEV,
    DIRECTORY,
    FIFO,
    HARDLINK,
    REGULAR,
    SYMLINK,
    TarEntry,
    TarReader,
)

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_NODE_TYPES = {CHARDEV: stat.S_IFCHR, BLOCKDEV: stat.S_IFBLK, FIFO: stat.S_IFIFO}
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

Parts = tuple[str, ...]
T = TypeVar("T")


def entry_parts(name: str) -> Parts:
    """The path components of an entry name below the layer's root (a leading ``/`` and ``.`` components
    are dropped); ``..`` is refused, whether or not it would leave the root."""
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise FailedPrecondition(f"entry {name!r} contains '..'")
    return parts


@dataclass
class Extractor:
    """Writes the entries of one layer under ``root`` (an empty directory)."""

    root: str
    max_entries: int
    what: str
    """Names the layer in log lines."""
    _dirs: set[Parts] = field(default_factory=lambda: {()})
    _dir_times: dict[Parts, int] = field(default_factory=dict)
    _xattr_warned: bool = False

    def path(self, parts: Parts) -> str:
        return os.path.join(self.root, *parts)

    def run(self, reader: TarReader) -> int:
        """Unpack every entry; returns the number of entries. Errors name the entry (the caller, the layer)."""
        count = 0
        for entry in reader.entries():
            count += 1
            if count > self.max_entries:
                raise ResourceExhausted(f"more than {self.max_entries} entries (images.max_layer_entries)")
            try:
                self._one(entry, reader.data())
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise ResourceExhausted("no space left on device") from None
                raise FailedPrecondition(f"cannot unpack entry {entry.name!r}: {exc.strerror}") from None
        self._finish_dir_times()
        return count

    def _one(self, entry: TarEntry, data: Iterator[memoryview]) -> None:
        parts = entry_parts(entry.name)
        if any(key.startswith("trusted.overlay.") for key in entry.xattrs):
            raise FailedPrecondition(f"entry {entry.name!r} carries overlayfs attributes (trusted.overlay.*)")
        base = parts[-1] if parts else ""
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts, entry.name)
            return
        if not parts:
            if entry.type != DIRECTORY:
                raise FailedPrecondition(f"entry {entry.name!r} would replace the layer's root with a non-directory")
            return
        self._parent_dirs(parts[:-1], entry.name)
        path = self.path(parts)
        if entry.type == DIRECTORY:
            self._make_dir(parts, entry)
        elif entry.type == REGULAR:
            self._file(parts, entry, data)
        elif entry.type == SYMLINK:
            self._create(parts, lambda: os.symlink(entry.linkname, path))
            os.chown(path, entry.uid, entry.gid, follow_symlinks=False)
            self._xattrs(path, entry)
            os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
        elif entry.type == HARDLINK:
            self._hardlink(parts, entry)
        else:
            node = _NODE_TYPES[entry.type] | 0o600
            self._create(parts, lambda: os.mknod(path, node, os.makedev(entry.devmajor, entry.devminor)))
            os.chown(path, entry.uid, entry.gid, follow_symlinks=False)
            os.chmod(path, entry.mode)
            self._xattrs(path, entry)
            os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)

    def _create(self, parts: Parts, make: Callable[[], T]) -> T:
        """Create the entry at ``parts``; if this layer already has something there, replace it."""
        try:
            return make()
        except FileExistsError:
            self._clear(parts)
            return make()

    def _parent_dirs(self, parts: Parts, name: str, create: bool = True) -> None:
        """Make sure every prefix of ``parts`` is a real directory inside the layer (never a symlink)."""
        if parts in self._dirs:
            return
        for depth in range(1, len(parts) + 1):
            prefix = parts[:depth]
            if prefix in self._dirs:
                continue
            path = self.path(prefix)
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                if not create:
                    raise FailedPrecondition(f"entry {name!r} refers to {'/'.join(prefix)!r}, which this layer "
                                      "does not contain") from None
                os.mkdir(path, 0o755)
                self._dirs.add(prefix)
                continue
            if stat.S_ISLNK(mode):
                raise FailedPrecondition(f"entry {name!r} goes through the symlink {'/'.join(prefix)!r}: refused")
            if not stat.S_ISDIR(mode):
                raise FailedPrecondition(f"entry {name!r} needs {'/'.join(prefix)!r} to be a directory, but it is not")
            self._dirs.add(prefix)

    def _clear(self, parts: Parts) -> None:
        """Remove whatever this layer already has at ``parts`` (a later entry replaces an earlier one)."""
        path = self.path(parts)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            shutil.rmtree(path)  # does not follow symlinks
            depth = len(parts)
            self._dirs = {d for d in self._dirs if d[:depth] != parts}
            self._dir_times = {d: t for d, t in self._dir_times.items() if d[:depth] != parts}
        else:
            os.unlink(path)

    def _make_dir(self, parts: Parts, entry: TarEntry) -> None:
        path = self.path(parts)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            existing = os.lstat(path)
            if not stat.S_ISDIR(existing.st_mode):
                self._clear(parts)
                os.mkdir(path, 0o700)
                if _is_whiteout(existing):
                    # Deleted, then made again in this layer: nothing of the lower directory may show through.
                    os.setxattr(path, OPAQUE_XATTR, b"y", follow_symlinks=False)
        self._dirs.add(parts)
        os.chown(path, entry.uid, entry.gid, follow_symlinks=False)
        os.chmod(path, entry.mode)
        self._xattrs(path, entry)
        self._dir_times[parts] = entry.mtime_ns

    def _file(self, parts: Parts, entry: TarEntry, data: Iterator[memoryview]) -> None:
        path = self.path(parts)
        fd = self._create(parts, lambda: os.open(path, _OPEN_FLAGS, 0o600))
        try:
            for piece in data:
                view = piece
                while view:
                    view = view[os.write(fd, view):]
            os.fchown(fd, entry.uid, entry.gid)
            os.fchmod(fd, entry.mode)  # after chown, which clears setuid/setgid
            self._xattrs(fd, entry)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)

    def _hardlink(self, parts: Parts, entry: TarEntry) -> None:
        target = entry_parts(entry.linkname)
        if not target:
            raise FailedPrecondition(f"hard link {entry.name!r} points at the layer's root")
        if target == parts:
            return
        self._parent_dirs(target[:-1], entry.name, create=False)
        try:
            mode = os.lstat(self.path(target)).st_mode
        except FileNotFoundError:
            raise FailedPrecondition(f"hard link {entry.name!r} points at {entry.linkname!r}, which this layer does "
                              "not contain") from None
        if stat.S_ISDIR(mode):
            raise FailedPrecondition(f"hard link {entry.name!r} points at a directory")
        path = self.path(parts)
        self._create(parts, lambda: os.link(self.path(target), path, follow_symlinks=False))
        # Like containerd and tarfile: the link's header sets the shared inode's owner, mode and times.
        os.chown(path, entry.uid, entry.gid, follow_symlinks=False)
        if not stat.S_ISLNK(mode):
            os.chmod(path, entry.mode)
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)

    def _whiteout(self, parts: Parts, name: str) -> None:
        parent, base = parts[:-1], parts[-1]
        self._parent_dirs(parent, name)
        if base == OPAQUE_MARKER:
            os.setxattr(self.path(parent), OPAQUE_XATTR, b"y", follow_symlinks=False)
            return
        if base.startswith(WHITEOUT_PREFIX * 2):
            return  # other .wh..wh. names are aufs bookkeeping with no meaning here
        hidden = base[len(WHITEOUT_PREFIX) :]
        if hidden in ("", ".", ".."):
            raise FailedPrecondition(f"whiteout {name!r} names no file")
        path = self.path((*parent, hidden))
        try:
            existing = os.lstat(path)
        except FileNotFoundError:
            os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
            return
        # Anything already there was made by this layer: it stays, and only lower layers' content is hidden.
        if stat.S_ISDIR(existing.st_mode):
            os.setxattr(path, OPAQUE_XATTR, b"y", follow_symlinks=False)

    def _xattrs(self, target: str | int, entry: TarEntry) -> None:
        for key, value in entry.xattrs.items():
            try:
                if isinstance(target, int):
                    os.setxattr(target, key, value)
                else:
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.EINVAL):
                    raise
                if not self._xattr_warned:
                    log.warning("%s: xattr %s of %r not kept: %s", self.what, key, entry.name, exc.strerror)
                    self._xattr_warned = True

    def _finish_dir_times(self) -> None:
        for parts in sorted(self._dir_times, key=len, reverse=True):
            ns = self._dir_times[parts]
            os.utime(self.path(parts), ns=(ns, ns), follow_symlinks=False)


def _is_whiteout(info: os.stat_result) -> bool:
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


def unpack(reader: TarReader, root: str, max_entries: int, what: str) -> int:
    """Unpack a layer's tar stream into the empty directory ``root``; returns the number of entries."""
    return Extractor(root, max_entries, what).run(reader)


def disk_usage(root: str) -> tuple[int, int]:
    """(bytes allocated, inodes) under ``root``, counting each hard-linked inode once."""
    seen: set[int] = set()
    used = inodes = 0
    stack = [root]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                info = entry.stat(follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif info.st_nlink > 1:
                    if info.st_ino in seen:
                        continue
                    seen.add(info.st_ino)
                used += info.st_blocks * 512
                inodes += 1
    root_info = os.lstat(root)
    return used + root_info.st_blocks * 512, inodes + 1
