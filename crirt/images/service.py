"""The CRI image service handlers: PullImage, ImageStatus, ListImages, StreamImages, RemoveImage, ImageFsInfo.

On disk, under crirt's root: ``images/content`` (blobs), ``images/snapshots`` (one directory per layer) and
``rootfs`` (container root filesystems). Garbage collection runs after an image is removed, after a pull
fails and when crirt starts: it deletes every blob no image lists and every snapshot no image and no
prepared rootfs uses, sparing what pulls in flight have leased. Removing an image that containers use is
allowed, as in containerd: it disappears from the listings, and its layers stay as long as a rootfs uses them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from crirt.bus import Bus
from crirt.caching import Refreshed
from crirt.commands.images import (
    ImageFsInfoCommand,
    ImageFsInfoResult,
    ImageStatusCommand,
    ImageStatusResult,
    ListImagesCommand,
    ListImagesResult,
    PullImageCommand,
    PullImageResult,
    RemoveImageCommand,
    RemoveImageResult,
    StreamImagesCommand,
    StreamImagesResult,
)
from crirt.config import Config
from crirt.filters import batches
from crirt.images.auth import Credentials
from crirt.images.config import ImagesConfig, RegistryConfig
from crirt.images.content import ContentStore
from crirt.images.pull import Leases, PulledImage, Puller
from crirt.images.records import ImageRecord, ImageRecords, LayerRecord, SnapshotRecord, to_cri
from crirt.images.reference import parse_reference
from crirt.images.registry import Registries, RegistryClient
from crirt.images.snapshots import SnapshotStore
from crirt.metrics.instruments import PullMetrics
from crirt.model.common import UInt64Value
from crirt.model.image import Image
from crirt.model.stats import FilesystemIdentifier, FilesystemUsage
from crirt.store import Store

log = logging.getLogger(__name__)

WORKER_THREADS = 16


def _purge(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@dataclass
class ImageService:
    """Owns the content store, the snapshots, the image records and the registry client."""

    config: Config
    store: Store
    metrics: PullMetrics = field(default_factory=PullMetrics)
    records: ImageRecords = field(init=False)
    content: ContentStore = field(init=False)
    snapshots: SnapshotStore = field(init=False)
    puller: Puller = field(init=False)
    leases: Leases = field(default_factory=Leases)
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        settings = self.config.images
        self.records = ImageRecords(self.store)
        self.content = ContentStore(self.config.root / "images" / "content")
        self.snapshots = SnapshotStore(self.config.root / "images" / "snapshots", self.config.root / "rootfs")
        client = RegistryClient(Registries(self.config.registries), settings)
        executor = ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="crirt-layer")
        self.puller = Puller(client, self.content, self.snapshots, settings, self.leases, self._record_snapshot,
                             executor, self.metrics.received)
        self._pinned = set(settings.pinned_images)
        self._fs_usage = Refreshed(self._measure_fs, self.config.stats.fs_usage_interval)
        self.content.recover()
        self.snapshots.recover()
        _purge(self._collect())

    def reconfigure(self, settings: ImagesConfig, registries: dict[str, RegistryConfig]) -> None:
        """Use new ``[images]`` and ``[registries]`` settings from now on (a reload); a pull that has already
        chosen its registry endpoints finishes on them."""
        self.puller.settings = self.puller.client.settings = settings
        self.puller.client.registries = Registries(registries)
        self._pinned = set(settings.pinned_images)

    def register(self, bus: Bus) -> None:
        bus.register(PullImageCommand, self.pull)
        bus.register(ImageStatusCommand, self.status)
        bus.register(ListImagesCommand, self.list)
        bus.register(StreamImagesCommand, self.stream)
        bus.register(RemoveImageCommand, self.remove)
        bus.register(ImageFsInfoCommand, self.fs_info)

    # --- queries --------------------------------------------------------------------------------------

    def _pinned_record(self, record: ImageRecord) -> bool:
        return bool(self._pinned & {record.id, *record.repo_tags, *record.repo_digests})

    def _images(self, text: str) -> list[Image]:
        return [to_cri(r, self._pinned_record(r)) for r in self.records.matching(text)]

    async def list(self, command: ListImagesCommand) -> ListImagesResult:
        image = command.filter.image if command.filter else None
        return ListImagesResult(images=self._images(image.image if image else ""))

    async def stream(self, command: StreamImagesCommand) -> AsyncIterator[StreamImagesResult]:
        image = command.filter.image if command.filter else None
        for batch in batches(self._images(image.image if image else "")):
            yield StreamImagesResult(images=list(batch))

    async def status(self, command: ImageStatusCommand) -> ImageStatusResult:
        match = self.records.find(command.image.image)
        if match is None:
            return ImageStatusResult()
        record = match.record
        info = {"info": await asyncio.to_thread(self._verbose_info, record)} if command.verbose else {}
        return ImageStatusResult(image=to_cri(record, self._pinned_record(record)), info=info)

    def _verbose_info(self, record: ImageRecord) -> str:
        def stored(digest: str) -> object:
            try:
                return json.loads(self.content.read(digest))
            except (OSError, ValueError):
                return None

        return json.dumps({
            "id": record.id,
            "chainID": record.chain_ids[-1] if record.layers else "",
            "manifestDigest": record.manifest_digest,
            "layers": [layer.model_dump() for layer in record.layers],
            "imageSpec": stored(record.id),
            "manifest": stored(record.manifest_digest),
        })

    async def fs_info(self, command: ImageFsInfoCommand) -> ImageFsInfoResult:
        """The last measurement (``[stats] fs_usage_interval`` old at most, plus one background walk)."""
        return await self._fs_usage.get()

    async def _measure_fs(self) -> ImageFsInfoResult:
        return await asyncio.to_thread(self._fs_info, list(self.records.snapshots))

    def _fs_info(self, snapshots: list[SnapshotRecord]) -> ImageFsInfoResult:
        """Image filesystem: blobs plus the layer sizes measured at unpack time; container filesystem: the
        writable layers, measured now (a walk of each)."""
        now = time.time_ns()
        blob_bytes, blob_count = self.content.usage()
        image_fs = FilesystemUsage(
            timestamp=now, fs_id=FilesystemIdentifier(mountpoint=str(self.config.root / "images")),
            used_bytes=UInt64Value(value=blob_bytes + sum(s.size for s in snapshots)),
            inodes_used=UInt64Value(value=blob_count + sum(s.inodes for s in snapshots)),
        )
        used = inodes = 0
        for directory in self.snapshots.rootfs_root.iterdir():
            try:
                size, count = self.snapshots.rootfs_usage(directory.name)
            except (OSError, LookupError):
                continue  # being created or removed right now
            used, inodes = used + size, inodes + count
        container_fs = FilesystemUsage(
            timestamp=now, fs_id=FilesystemIdentifier(mountpoint=str(self.snapshots.rootfs_root)),
            used_bytes=UInt64Value(value=used), inodes_used=UInt64Value(value=inodes),
        )
        return ImageFsInfoResult(image_filesystems=[image_fs], container_filesystems=[container_fs])

    # --- pull and remove ------------------------------------------------------------------------------

    async def pull(self, command: PullImageCommand) -> PullImageResult:
        ref = parse_reference(command.image.image)
        auth = command.auth
        credentials = (Credentials.build(auth.username, auth.password, auth.auth, auth.identity_token,
                                         auth.registry_token) if auth else None)
        credentials = credentials or self.puller.client.registries.configured_credentials(ref.domain)
        sandbox = command.sandbox_config.metadata if command.sandbox_config else None
        log.info("pulling %s%s", ref, f" for pod {sandbox.namespace}/{sandbox.name}" if sandbox else "")
        try:
            with self.metrics.pull(), self.leases.scope() as lease:
                pulled = await self.puller.pull(ref, credentials, lease)
                record = self._save(pulled, dict(command.image.annotations))
        except BaseException:
            await self._collect_soon()
            raise
        self._fs_usage.invalidate()
        return PullImageResult(image_ref=record.id)

    def _save(self, pulled: PulledImage, annotations: dict[str, str]) -> ImageRecord:
        ref = pulled.ref
        image_id = pulled.manifest.config.digest
        existing = self.records.table.get(image_id)
        tag = f"{ref.name}:{ref.tag}" if ref.tag and not ref.digest else None
        repo_digest = f"{ref.name}@{pulled.target_digest}"
        record = ImageRecord(
            id=image_id,
            repo_tags=list(dict.fromkeys([*(existing.repo_tags if existing else []), *([tag] if tag else [])])),
            repo_digests=list(dict.fromkeys([*(existing.repo_digests if existing else []), repo_digest])),
            size=pulled.size,
            user=pulled.config.config.User,
            annotations={**(existing.annotations if existing else {}), **pulled.manifest.annotations, **annotations},
            manifest_digest=pulled.manifest_digest,
            layers=[LayerRecord(digest=p.descriptor.digest, media_type=p.descriptor.mediaType, size=p.descriptor.size,
                                diff_id=p.diff_id, chain_id=p.chain_id) for p in pulled.layers],
            blobs=list(dict.fromkeys([*(existing.blobs if existing else []), *pulled.blobs])),
        )
        return self.records.save(record, tag)

    def _record_snapshot(self, chain_id: str, size: int, inodes: int) -> None:
        self.records.snapshots.put(chain_id, SnapshotRecord(size=size, inodes=inodes))

    async def remove(self, command: RemoveImageCommand) -> RemoveImageResult:
        text = command.image.image
        match = self.records.find(text)
        if match is None:
            return RemoveImageResult()  # removing an absent image is not an error
        record = match.record
        if match.tag is not None and len(record.repo_tags) > 1:
            self.records.untag(record, match.tag)
            log.info("untagged %s from image %s (it keeps %d other tags)", match.tag, record.id,
                     len(record.repo_tags) - 1)
            return RemoveImageResult()
        self.records.delete(record.id)
        log.info("removed image %s (%s)", record.id, ", ".join(record.repo_tags) or "untagged")
        await self._collect_soon()
        return RemoveImageResult()

    # --- garbage collection ---------------------------------------------------------------------------

    def _collect(self) -> list[Path]:
        """Move every unreferenced, unleased blob and snapshot out of sight (atomic renames, in the event
        loop so no pull can start using one in between); returns the paths to delete."""
        images = list(self.records.table)
        keep_blobs = {digest for record in images for digest in record.blobs}
        keep_chains = {chain for record in images for chain in record.chain_ids} | self.snapshots.rootfs_references()
        doomed: list[Path | None] = []
        for digest in self.content.digests():
            if digest not in keep_blobs and digest not in self.leases:
                doomed.append(self.content.retire(digest))
        for chain in self.snapshots.chain_ids():
            if chain not in keep_chains and chain not in self.leases:
                doomed.append(self.snapshots.retire(chain))
        for chain in self.records.snapshots.ids():
            if not self.snapshots.exists(chain):
                self.records.snapshots.delete(chain)
        paths = [p for p in doomed if p is not None]
        if paths:
            log.info("garbage collection: deleting %d unused blobs and snapshots", len(paths))
        return paths

    async def _collect_soon(self) -> None:
        """Collect garbage now; the deleting goes on in the background if this call is cancelled."""
        task = asyncio.ensure_future(asyncio.to_thread(_purge, self._collect()))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        await asyncio.shield(task)
        self._fs_usage.invalidate()
