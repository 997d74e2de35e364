"""The byte pipeline of a layer: download (event loop) -> verify and store -> decompress -> unpack (a thread).

``ChunkPipe`` carries chunks from the event loop to a worker thread with bounded memory. The generators
here are chained in the worker: ``verified`` hashes, counts and stores the compressed bytes and checks digest
and size at the end; ``decompressed`` inflates gzip or zstd with bounded output per step, counting against
the decompression-bomb cap and hashing the result for the diff id.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterator

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # the same module, backported
    from backports import zstd

from crirt.errors import FailedPrecondition, ResourceExhausted, Unavailable

try:  # ISA-L inflates gzip about twice as fast as zlib; same API
    from isal import isal_zlib as gzip_impl
except ImportError:  # pragma: no cover - the wheel exists for every platform crirt runs on
    gzip_impl = zlib  # type: ignore[assignment]

STEP = 1 << 20
"""Largest piece of output one decompression step may produce."""


class PipeAborted(Exception):
    """The other side of a ChunkPipe gave up; the reason is in the message (or in the other side's error)."""


class ChunkPipe:
    """Chunks from a coroutine (``put``, ``close``, ``abort``) to one thread (iterate it).

    At most ``limit`` bytes wait in the pipe: ``put`` waits while it is full. When the reading thread stops
    early it calls ``stop()``, and the next ``put`` raises ``PipeAborted`` so the download ends too."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int = 8 << 20, idle_timeout: float = 600) -> None:
        self._loop = loop
        self._limit = limit
        self._idle_timeout = idle_timeout
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._bytes = 0
        self._closed = False
        self._error: BaseException | None = None
        self._stopped = False
        self._space = asyncio.Event()
        self._space.set()

    async def put(self, chunk: bytes) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    raise PipeAborted("the layer's reader stopped")
                if self._bytes < self._limit:
                    self._chunks.append(chunk)
                    self._bytes += len(chunk)
                    self._cond.notify()
                    return
                self._space.clear()
            await self._space.wait()

    def close(self) -> None:
        """No more chunks: the reader sees the end of the stream."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def abort(self, reason: BaseException) -> None:
        """The download failed: the reader raises ``PipeAborted`` once it has read what was put."""
        with self._cond:
            self._closed = True
            self._error = reason
            self._cond.notify()

    def stop(self) -> None:
        """Called by the reader when it will read no more."""
        with self._cond:
            self._stopped = True
            self._chunks.clear()
        self._loop.call_soon_threadsafe(self._space.set)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            with self._cond:
                while not self._chunks and not self._closed:
                    if not self._cond.wait(self._idle_timeout):
                        raise Unavailable(f"no data from the download for {self._idle_timeout:.0f}s")
                if not self._chunks:
                    if self._error is not None:
                        raise PipeAborted(str(self._error) or type(self._error).__name__)
                    return
                chunk = self._chunks.popleft()
                self._bytes -= len(chunk)
                if self._bytes < self._limit <= self._bytes + len(chunk):
                    self._loop.call_soon_threadsafe(self._space.set)
            yield chunk


def file_chunks(path: str, stop: threading.Event, size: int = STEP) -> Iterator[bytes]:
    """A stored blob, read back in chunks (to unpack a layer whose blob is already present), until ``stop``."""
    with open(path, "rb") as file:
        while chunk := file.read(size):
            if stop.is_set():
                raise PipeAborted("the pull was cancelled")
            yield chunk


def verified(chunks: Iterator[bytes], digest: str, size: int,
             sink: Callable[[bytes], object] | None = None) -> Iterator[bytes]:
    """Pass chunks through, feeding ``sink``; fail as soon as there are more than ``size`` bytes, and at the
    end unless exactly ``size`` bytes with the given digest went by."""
    algorithm, _, expected = digest.partition(":")
    hasher = hashlib.new(algorithm)
    seen = 0
    for chunk in chunks:
        seen += len(chunk)
        if seen > size:
            raise FailedPrecondition(f"the blob is larger than the {size} bytes its descriptor says")
        hasher.update(chunk)
        if sink is not None:
            sink(chunk)
        yield chunk
    if seen != size:
        raise FailedPrecondition(f"the blob is truncated: {seen} of {size} bytes")
    if hasher.hexdigest() != expected:
        raise FailedPrecondition(f"the blob does not match its digest {digest} (got {algorithm}:{hasher.hexdigest()})")


class Inflated:
    """Decompressed chunks of a layer, counted against ``cap`` and hashed for the diff id (``hexdigest``)."""

    def __init__(self, chunks: Iterator[bytes], compression: str, cap: int) -> None:
        self._chunks = chunks
        self._compression = compression
        self._cap = cap
        self._hasher = hashlib.sha256()
        self.size = 0

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()

    def __iter__(self) -> Iterator[bytes]:
        source = {"none": self._chunks, "gzip": self._gunzip(), "zstd": self._unzstd()}[self._compression]
        for piece in source:
            if not piece:
                continue
            self.size += len(piece)
            if self.size > self._cap:
                raise ResourceExhausted(f"the layer expands beyond {self._cap} bytes (images.max_layer_size): "
                                        "refusing a possible decompression bomb")
            self._hasher.update(piece)
            yield piece

    def _bad(self, exc: Exception) -> FailedPrecondition:
        return FailedPrecondition(f"the blob is not valid {self._compression} data: {exc}")

    def _gunzip(self) -> Iterator[bytes]:
        decoder = gzip_impl.decompressobj(31)
        for chunk in self._chunks:
            data = chunk
            while data:
                if decoder.eof:  # a gzip stream may hold several members
                    decoder = gzip_impl.decompressobj(31)
                try:
                    out = decoder.decompress(data, STEP)
                    yield out
                    while len(out) == STEP and not decoder.unconsumed_tail and not decoder.eof:
                        out = decoder.decompress(b"", STEP)  # output was capped: collect what is still held
                        yield out
                except gzip_impl.error as exc:
                    raise self._bad(exc) from None
                data = decoder.unused_data if decoder.eof else decoder.unconsumed_tail
        if not decoder.eof:
            raise self._bad(ValueError("the stream ends before the gzip trailer"))

    def _unzstd(self) -> Iterator[bytes]:
        decoder = zstd.ZstdDecompressor()
        for chunk in self._chunks:
            data = chunk
            while data or not (decoder.needs_input or decoder.eof):
                if decoder.eof:  # several frames may follow each other
                    decoder = zstd.ZstdDecompressor()
                try:
                    out = decoder.decompress(data, STEP)
                except zstd.ZstdError as exc:
                    raise self._bad(exc) from None
                yield out
                data = decoder.unused_data if decoder.eof else b""
        if not decoder.eof:
            raise self._bad(ValueError("the stream ends inside a zstd frame"))
