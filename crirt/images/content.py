"""The content store: blobs (manifests, configs, compressed layers) by digest under ``<root>/images/content``.

A blob is written to ``ingest/`` and appears under ``blobs/<algorithm>/<hex>`` only by an atomic rename after
its bytes were verified and fsynced, so a blob that exists is complete and correct. Leftovers in ``ingest/``
(a crash mid-download) are removed when crirt starts. Which blobs are kept is decided by the image
service's garbage collection; this module only stores, reads, lists and deletes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

from crirt.images.manifest import digest_of
from crirt.images.reference import valid_digest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobWriter:
    """A blob being received: write chunks, then ``commit`` (fsync + rename) or ``discard``."""

    def __init__(self, store: ContentStore, digest: str) -> None:
        self._store = store
        self.digest = digest
        self._temp = store.ingest / f"{digest.replace(':', '-')}.{uuid.uuid4().hex}"
        self._file = open(self._temp, "wb")  # noqa: SIM115 - closed by commit or discard

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)

    def commit(self) -> Path:
        """Make the (already verified) blob durable and visible under its digest."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        target = self._store.path(self.digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._temp, target)
        _fsync_dir(target.parent)
        return target

    def discard(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._temp.unlink()


class ContentStore:
    """Blobs by digest; every method is synchronous and cheap except where noted."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.ingest = root / "ingest"
        self.trash = root / "trash"

    def recover(self) -> None:
        """Create the directories; drop half-written and half-deleted blobs of an earlier run."""
        for directory in (self.ingest, self.trash):
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
        self.blobs.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if not valid_digest(digest):
            raise ValueError(f"not a digest: {digest!r}")
        algorithm, _, hex_part = digest.partition(":")
        return self.blobs / algorithm / hex_part

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def writer(self, digest: str) -> BlobWriter:
        return BlobWriter(self, digest)

    def put(self, data: bytes, digest: str) -> None:
        """Store a small blob held in memory (its digest must match)."""
        if digest_of(data, digest.partition(":")[0]) != digest:
            raise ValueError(f"data does not match {digest}")
        if self.has(digest):
            return
        writer = self.writer(digest)
        try:
            writer.write(data)
            writer.commit()
        except BaseException:
            writer.discard()
            raise

    def digests(self) -> list[str]:
        """Every stored blob's digest."""
        found = []
        for algorithm_dir in self.blobs.iterdir() if self.blobs.is_dir() else []:
            found.extend(f"{algorithm_dir.name}:{blob.name}" for blob in algorithm_dir.iterdir())
        return found

    def retire(self, digest: str) -> Path | None:
        """Move a blob out of sight at once (an atomic rename); ``purge`` deletes it later."""
        target = self.trash / f"{digest.replace(':', '-')}.{uuid.uuid4().hex}"
        try:
            os.rename(self.path(digest), target)
        except FileNotFoundError:
            return None
        return target

    def usage(self) -> tuple[int, int]:
        """(bytes allocated, number of blobs)."""
        used = count = 0
        for digest in self.digests():
            with contextlib.suppress(FileNotFoundError):
                used += self.path(digest).stat().st_blocks * 512
                count += 1
        return used, count
