"""One pull: resolve the reference, fetch and check manifests and config, then fetch and unpack the layers.

Layers go through the pipeline of ``crirt.images.streams`` up to ``max_concurrent_downloads`` at a time:
each is downloaded, verified, stored and unpacked in one pass, by its own worker thread, into its own
snapshot directory, so the layers of an image unpack in parallel. A layer whose blob and snapshot are both
present is skipped; one whose blob is present is unpacked from it. Concurrent pulls that need the same layer
share one download (``Flights``), and everything a pull in flight uses is leased so that garbage collection
leaves it alone. Nothing becomes visible as an image until every layer is complete and verified: the
caller writes the image record only after ``Puller.pull`` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import shutil
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from crirt.errors import CrirtError, FailedPrecondition, ResourceExhausted
from crirt.images.auth import Credentials
from crirt.images.config import ImagesConfig
from crirt.images.content import ContentStore
from crirt.images.manifest import (
    ACCEPT,
    LAYER_COMPRESSION,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Want,
    chain_ids,
    digest_of,
    parse_config,
    parse_manifest,
    select_platform,
)
from crirt.images.reference import Reference
from crirt.images.registry import RegistryClient, Repository
from crirt.images.snapshots import SnapshotStore
from crirt.images.streams import ChunkPipe, Inflated, PipeAborted, file_chunks, verified
from crirt.images.tarstream import TarReader
from crirt.images.unpack import disk_usage, unpack

log = logging.getLogger(__name__)

K = TypeVar("K")
T = TypeVar("T")
MAX_INDEX_DEPTH = 3
PROGRESS_INTERVAL = 10.0


@dataclass
class _Flight(Generic[T]):
    task: asyncio.Task[T]
    waiters: int = 0
    abandoned: bool = False  # every caller gave up and the task was cancelled; it may still be cleaning up


@dataclass
class Flights(Generic[K, T]):
    """Callers asking for the same key share one task; it is cancelled only when every caller gave up.

    A caller arriving while an abandoned task still cleans up waits for it to end, then starts the work
    afresh: it must not inherit a cancellation it did not ask for."""

    _flights: dict[K, _Flight[T]] = field(default_factory=dict)

    async def run(self, key: K, start: Callable[[], Awaitable[T]]) -> T:
        flight = self._flights.get(key)
        while flight is not None and flight.abandoned and not flight.task.done():
            await asyncio.wait([flight.task])
            flight = self._flights.get(key)
        if flight is None or flight.abandoned:
            flight = _Flight(asyncio.ensure_future(start()))
            self._flights[key] = flight
            flight.task.add_done_callback(lambda task, f=flight: self._landed(key, f))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            if flight.waiters == 1 and not flight.task.done():
                # The last caller gave up: stop the work, and let it finish cleaning up before returning.
                flight.abandoned = True
                flight.task.cancel()
                with contextlib.suppress(BaseException):
                    await flight.task
            raise
        finally:
            flight.waiters -= 1

    def _landed(self, key: K, flight: _Flight[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.task.cancelled():
            flight.task.exception()  # retrieved here, so a failure nobody awaited any more is not logged twice


@dataclass
class Leases:
    """Blob digests and chain ids in use by pulls in flight."""

    _counts: Counter[str] = field(default_factory=Counter)

    def __contains__(self, key: str) -> bool:
        return self._counts[key] > 0

    @contextlib.contextmanager
    def scope(self) -> Iterator[Lease]:
        lease = Lease(self)
        try:
            yield lease
        finally:
            self._counts.subtract(lease.keys)
            self._counts += Counter()  # drop the zero counts


@dataclass
class Lease:
    leases: Leases
    keys: set[str] = field(default_factory=set)

    def add(self, *keys: str) -> None:
        for key in set(keys) - self.keys:
            self.keys.add(key)
            self.leases._counts[key] += 1


@dataclass(frozen=True)
class LayerPlan:
    number: int
    count: int
    descriptor: Descriptor
    diff_id: str
    chain_id: str

    @property
    def what(self) -> str:
        return f"layer {self.number}/{self.count} ({self.descriptor.digest})"


@dataclass(frozen=True)
class PulledImage:
    """Everything the image record is made from."""

    ref: Reference
    target_digest: str
    manifest_digest: str
    manifest: Manifest
    config: ImageConfig
    layers: list[LayerPlan]
    blobs: list[str]
    size: int


@dataclass
class Progress:
    """Bytes and layers done, logged every ``PROGRESS_INTERVAL`` seconds while a pull runs."""

    ref: Reference
    received: Callable[[int], None]
    """Told every count of bytes read from the registry, as it is read (the pull-bytes metric)."""
    total: int = 0
    done: int = 0
    layers: int = 0
    layers_done: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, count: int) -> None:
        self.done += count
        self.received(count)

    async def report(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            log.info("pulling %s: %.1f of %.1f MB, %d of %d layers done, %.0fs", self.ref, self.done / 1e6,
                     self.total / 1e6, self.layers_done, self.layers, time.monotonic() - self.started)


SnapshotRecorder = Callable[[str, int, int], None]
"""Called in the event loop with (chain id, bytes, inodes) for each layer unpacked."""


@dataclass
class Puller:
    client: RegistryClient
    content: ContentStore
    snapshots: SnapshotStore
    settings: ImagesConfig
    leases: Leases
    record_snapshot: SnapshotRecorder
    executor: ThreadPoolExecutor
    received: Callable[[int], None]
    """Told every count of layer bytes read from a registry."""
    flights: Flights[tuple[str, str], None] = field(default_factory=Flights)
    config_flights: Flights[str, bytes] = field(default_factory=Flights)

    async def pull(self, ref: Reference, credentials: Credentials | None, lease: Lease) -> PulledImage:
        """Fetch everything ``ref`` needs and unpack its layers; raises crirt errors saying what went wrong."""
        progress = Progress(ref, self.received)
        reporter = asyncio.create_task(progress.report())
        try:
            async with self.client.session():
                repository = Repository(self.client, ref, self.client.registries.endpoints(ref), credentials)
                return await self._pull(repository, lease, progress)
        finally:
            reporter.cancel()

    async def _pull(self, repository: Repository, lease: Lease, progress: Progress) -> PulledImage:
        ref = repository.ref
        target, (parsed, raw) = await self._document(repository, ref.object, ref.digest or None, None, str(ref))
        documents = {target: raw}
        digest = target
        for _ in range(MAX_INDEX_DEPTH):
            if not isinstance(parsed, Index):
                break
            chosen = select_platform(parsed, Want.parse(self.settings.platform), f"image {ref}")
            digest, (parsed, raw) = await self._document(repository, chosen.digest, chosen.digest, chosen,
                                                         f"{ref} ({chosen.platform or 'any platform'})")
            documents[digest] = raw
        if not isinstance(parsed, Manifest):
            raise FailedPrecondition(f"image {ref}: indexes nested more than {MAX_INDEX_DEPTH} deep")
        manifest = parsed
        lease.add(manifest.config.digest)
        config_bytes = await self.config_flights.run(manifest.config.digest,
                                                     lambda: self._config(repository, manifest.config))
        config = parse_config(config_bytes, len(manifest.layers), f"config of {ref}")
        chains = chain_ids(config.rootfs.diff_ids)
        plans = [LayerPlan(number, len(manifest.layers), layer, diff_id, chain) for number, (layer, diff_id, chain)
                 in enumerate(zip(manifest.layers, config.rootfs.diff_ids, chains), 1)]
        blobs = [*documents, manifest.config.digest, *(p.descriptor.digest for p in plans)]
        lease.add(*blobs, *chains)
        documents[manifest.config.digest] = config_bytes
        await asyncio.to_thread(self._store_documents, documents)
        progress.layers = len(plans)
        progress.total = sum(p.descriptor.size for p in plans if not self.content.has(p.descriptor.digest))
        await self._layers(repository, plans, progress)
        size = sum(len(raw) for raw in documents.values()) + sum(p.descriptor.size for p in plans)
        log.info("pulled %s (%s, %d layers, %.1f MB) in %.2fs", ref, manifest.config.digest, len(plans),
                 size / 1e6, time.monotonic() - progress.started)
        return PulledImage(ref, target, digest, manifest, config, plans, list(dict.fromkeys(blobs)), size)

    async def _document(self, repository: Repository, name: str, expected: str | None,
                        descriptor: Descriptor | None, what: str) -> tuple[str, tuple[Index | Manifest, bytes]]:
        """Fetch, verify and parse a manifest or index; returns its digest with the parsed and raw forms."""
        raw, content_type, header_digest = await repository.manifest(name, ACCEPT, self.settings.max_manifest_size)
        algorithm = (expected or "sha256").partition(":")[0]
        digest = digest_of(raw, algorithm)
        if expected is not None and digest != expected:
            raise FailedPrecondition(f"manifest of {what} does not match its digest {expected} (got {digest})")
        if header_digest.startswith(f"{algorithm}:") and header_digest != digest:
            raise FailedPrecondition(f"manifest of {what} does not match the registry's Docker-Content-Digest "
                                     f"{header_digest} (got {digest})")
        if descriptor is not None and descriptor.size != len(raw):
            raise FailedPrecondition(f"manifest of {what} is {len(raw)} bytes, its descriptor says {descriptor.size}")
        media_type = descriptor.mediaType if descriptor is not None and descriptor.mediaType else content_type
        return digest, (parse_manifest(raw, media_type, f"manifest of {what}"), raw)

    async def _config(self, repository: Repository, descriptor: Descriptor) -> bytes:
        if self.content.has(descriptor.digest):
            return await asyncio.to_thread(self.content.read, descriptor.digest)
        data = await repository.blob(descriptor, self.settings.max_manifest_size)
        got = digest_of(data, descriptor.digest.partition(":")[0])
        if len(data) != descriptor.size or got != descriptor.digest:
            raise FailedPrecondition(f"image config does not match its digest {descriptor.digest} (got {got}, "
                                     f"{len(data)} of {descriptor.size} bytes)")
        return data

    def _store_documents(self, documents: dict[str, bytes]) -> None:
        for digest, data in documents.items():
            self.content.put(data, digest)

    async def _layers(self, repository: Repository, plans: list[LayerPlan], progress: Progress) -> None:
        """All layers, at most ``max_concurrent_downloads`` at once; the first failure cancels the others."""
        slots = asyncio.Semaphore(self.settings.max_concurrent_downloads)

        async def one(plan: LayerPlan) -> None:
            await self.flights.run((plan.descriptor.digest, plan.chain_id),
                                   lambda: self._layer(repository, plan, slots, progress))
            progress.layers_done += 1

        try:
            async with asyncio.TaskGroup() as group:
                for plan in plans:
                    group.create_task(one(plan))
        except BaseExceptionGroup as group_error:
            raise _first_error(group_error) from None

    async def _layer(self, repository: Repository, plan: LayerPlan, slots: asyncio.Semaphore,
                     progress: Progress) -> None:
        async with slots, self.client.session():
            have_blob = self.content.has(plan.descriptor.digest)
            have_snapshot = self.snapshots.exists(plan.chain_id)
            if have_blob and have_snapshot:
                return
            if have_blob:
                usage = await self._unpack_stored(plan)
            else:
                usage = await self._download(repository, plan, not have_snapshot, progress)
            if usage is not None:
                self.record_snapshot(plan.chain_id, *usage)

    async def _unpack_stored(self, plan: LayerPlan) -> tuple[int, int] | None:
        """Unpack a layer whose blob is already in the content store."""
        stop = threading.Event()
        source = file_chunks(str(self.content.path(plan.descriptor.digest)), stop)
        job = asyncio.get_running_loop().run_in_executor(self.executor, self._receive, source, plan, False, True)
        return await _finish(job, stop.set)

    async def _download(self, repository: Repository, plan: LayerPlan, unpack_it: bool,
                        progress: Progress) -> tuple[int, int] | None:
        """Stream a layer blob from the registry into a worker thread that verifies, stores and unpacks it."""
        loop = asyncio.get_running_loop()
        pipe = ChunkPipe(loop, idle_timeout=self.settings.stall_timeout + 60)
        job = loop.run_in_executor(self.executor, self._receive, pipe, plan, True, unpack_it)
        try:
            await repository.stream_blob(plan.descriptor, pipe.put, progress.add)
        except PipeAborted:
            pass  # the worker stopped reading; its own error says why
        except BaseException as exc:
            pipe.abort(exc)
            with contextlib.suppress(BaseException):
                await _finish(job, lambda: None)
            raise
        else:
            pipe.close()
        return await _finish(job, lambda: pipe.abort(asyncio.CancelledError()))

    def _receive(self, chunks: Any, plan: LayerPlan, store_blob: bool, unpack_it: bool) -> tuple[int, int] | None:
        """In a worker thread: verify the blob, store it (``store_blob``) and unpack it (``unpack_it``).

        Returns the unpacked snapshot's (bytes, inodes), or None when nothing was unpacked."""
        descriptor = plan.descriptor
        writer = self.content.writer(descriptor.digest) if store_blob else None
        staging = self.snapshots.staging() if unpack_it else None
        try:
            stream = verified(iter(chunks), descriptor.digest, descriptor.size, writer.write if writer else None)
            usage = None
            if staging is not None:
                try:
                    self._unpack(stream, plan, staging)
                except CrirtError as bad_content:
                    # Bytes that fail their digest explain bad content better than the content does.
                    for _ in stream:
                        pass
                    raise bad_content from None
                usage = disk_usage(str(staging))
            else:
                for _ in stream:
                    pass
            if writer is not None:
                writer.commit()
                writer = None
            if staging is not None:
                self.snapshots.commit(staging, plan.chain_id)
                staging = None
            return usage
        except CrirtError as exc:  # the same class keeps the gRPC code; the message gains the layer
            raise type(exc)(f"{plan.what}: {exc}") from None
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            raise ResourceExhausted(f"{plan.what}: no space left on device") from None
        finally:
            if isinstance(chunks, ChunkPipe):
                chunks.stop()
            if writer is not None:
                writer.discard()
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)

    def _unpack(self, stream: Iterator[bytes], plan: LayerPlan, staging: Path) -> None:
        """Decompress and unpack into ``staging``, checking the uncompressed bytes against the diff id."""
        inflated = Inflated(stream, LAYER_COMPRESSION[plan.descriptor.mediaType], self.settings.max_layer_size)
        pieces = iter(inflated)
        unpack(TarReader(pieces), str(staging), self.settings.max_layer_entries, plan.what)
        for _ in pieces:  # what follows the end-of-archive marker counts for the diff id too
            pass
        if f"sha256:{inflated.hexdigest()}" != plan.diff_id:
            raise FailedPrecondition(f"it unpacks to sha256:{inflated.hexdigest()}, but the image config says "
                                     f"{plan.diff_id}")


async def _finish(job: asyncio.Future[T], stop: Callable[[], None]) -> T:
    """The result of a worker thread. If the caller is cancelled meanwhile, ``stop`` asks the worker to give
    up, and the worker is still waited for: it cleans up after itself, and a failed pull must leave nothing
    behind by the time it is reported."""
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        stop()
        with contextlib.suppress(BaseException):
            await asyncio.shield(job)
        raise


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a failed group of layer tasks: the first crirt error, else the first error."""
    flat: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        else:
            flat.append(error)
    crirt_errors = [e for e in flat if isinstance(e, CrirtError)]
    return (crirt_errors or flat)[0]
