"""Image and snapshot records in crirt's store, and how a user's text finds an image.

An image is identified by its config digest (``id``). It collects the names it was pulled under:
``repo_tags`` (``docker.io/library/busybox:latest``) and ``repo_digests`` (``name@<manifest or index
digest>``), and every blob it keeps in the content store. ``find`` accepts what crictl and the kubelet
pass: a full or truncated id (with or without ``sha256:``), a tag reference (normalized, so ``busybox``
finds ``docker.io/library/busybox:latest``) or a digest reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from crirt.errors import CrirtError, InvalidArgument
from crirt.images.reference import Reference, parse_reference
from crirt.model.common import ImageSpec, Int64Value
from crirt.model.image import Image
from crirt.store import Store, Table

IMAGES = "images"
SNAPSHOTS = "snapshots"
_HEX_PREFIX = re.compile(r"(?:sha256:)?([a-f0-9]{1,64})")


class LayerRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    digest: str
    media_type: str
    size: int
    diff_id: str
    chain_id: str


class ImageRecord(BaseModel):
    """One image on the node; replaced as a whole when it changes (see crirt.store)."""

    model_config = ConfigDict(frozen=True)

    id: str
    repo_tags: list[str] = Field(default_factory=list)
    repo_digests: list[str] = Field(default_factory=list)
    size: int = 0
    user: str = ""
    annotations: dict[str, str] = Field(default_factory=dict)
    manifest_digest: str = ""
    layers: list[LayerRecord] = Field(default_factory=list)
    blobs: list[str] = Field(default_factory=list)
    """Every content-store blob this image keeps: indexes, manifests, config, layers."""

    @property
    def chain_ids(self) -> list[str]:
        return [layer.chain_id for layer in self.layers]


class SnapshotRecord(BaseModel):
    """Disk usage of one unpacked layer, measured once when it was unpacked."""

    model_config = ConfigDict(frozen=True)

    size: int
    inodes: int


def user_of(user: str) -> tuple[int | None, str]:
    """containerd's reading of a config's ``User``: the part before ':' is a uid if numeric, else a name."""
    name = user.split(":", 1)[0]
    if not name:
        return None, ""
    return (int(name), "") if name.isdigit() and int(name) < 2**63 else (None, name)


@dataclass(frozen=True)
class Match:
    """An image found for some text; ``tag`` is set when the text named one of its tags."""

    record: ImageRecord
    tag: str | None = None


class ImageRecords:
    """The images table and the lookups the RPCs need."""

    def __init__(self, store: Store) -> None:
        self.table: Table[ImageRecord] = store.table(IMAGES, ImageRecord)
        self.snapshots: Table[SnapshotRecord] = store.table(SNAPSHOTS, SnapshotRecord)

    def all(self) -> list[ImageRecord]:
        return sorted(self.table, key=lambda r: (r.repo_tags[:1], r.repo_digests[:1], r.id))

    def find(self, text: str) -> Match | None:
        """The image ``text`` names, or None; containerd's order: a reference first, then an id (prefix).
        Raises ``InvalidArgument`` for text that is neither."""
        try:
            ref = parse_reference(text)
        except InvalidArgument:
            if _HEX_PREFIX.fullmatch(text) is None:
                raise
            ref = None
        match = self._by_reference(ref) if ref is not None else None
        if match is None and (by_id := self._by_id(text)) is not None:
            match = Match(by_id)
        return match

    def _by_id(self, text: str) -> ImageRecord | None:
        hexed = _HEX_PREFIX.fullmatch(text)
        if hexed is None:
            return None
        prefix = "sha256:" + hexed.group(1)
        candidates = [r for r in self.table if r.id.startswith(prefix)]
        return candidates[0] if len(candidates) == 1 else None

    def _by_reference(self, ref: Reference) -> Match | None:
        for record in self.table:
            if ref.digest and f"{ref.name}@{ref.digest}" in record.repo_digests:
                return Match(record)
            if not ref.digest and f"{ref.name}:{ref.tag}" in record.repo_tags:
                return Match(record, f"{ref.name}:{ref.tag}")
        return None

    def matching(self, text: str) -> list[ImageRecord]:
        """ListImages' filter: a reference (a name without tag or digest matches all its tags), else an id
        (prefix)."""
        if not text:
            return self.all()
        try:
            ref = parse_reference(text, default_tag=False)
        except CrirtError:
            ref = None
        found: list[ImageRecord] = []
        if ref is not None and (ref.tag or ref.digest):
            match = self._by_reference(ref)
            found = [match.record] if match else []
        elif ref is not None:
            found = [r for r in self.all()
                     if any(name.rsplit(":", 1)[0] == ref.name for name in r.repo_tags)
                     or any(name.split("@", 1)[0] == ref.name for name in r.repo_digests)]
        if not found and (by_id := self._by_id(text)) is not None:
            found = [by_id]
        return found

    def save(self, record: ImageRecord, tag: str | None) -> ImageRecord:
        """Store ``record``; a tag moves here from any other image that had it (which keeps its digests)."""
        updates = [(record.id, record)]
        if tag is not None:
            for other in self.table:
                if other.id != record.id and tag in other.repo_tags:
                    updates.append((other.id, other.model_copy(
                        update={"repo_tags": [t for t in other.repo_tags if t != tag]})))
        self.table.put_many(updates)
        return record

    def untag(self, record: ImageRecord, tag: str) -> None:
        self.table.put(record.id, record.model_copy(update={"repo_tags": [t for t in record.repo_tags if t != tag]}))

    def delete(self, image_id: str) -> None:
        self.table.delete(image_id)



def to_cri(record: ImageRecord, pinned: bool) -> Image:
    """The CRI ``Image`` message of a record."""
    uid, username = user_of(record.user)
    return Image(
        id=record.id, repo_tags=record.repo_tags, repo_digests=record.repo_digests, size=record.size,
        uid=Int64Value(value=uid) if uid is not None else None, username=username,
        spec=ImageSpec(image=record.id, annotations=record.annotations), pinned=pinned,
    )
