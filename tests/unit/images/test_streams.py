"""The layer byte pipeline: digest and size checks, decompression with a bomb cap, the thread pipe."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Iterator

import pytest
from support.images import compress

from crirt.errors import FailedPrecondition, ResourceExhausted
from crirt.images.streams import ChunkPipe, Inflated, PipeAborted, verified

DATA = os.urandom(200_000) + bytes(3_000_000) + os.urandom(1000)


def chunks(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_verified_passes_good_bytes_to_the_sink() -> None:
    sink = bytearray()
    assert b"".join(verified(chunks(DATA), digest(DATA), len(DATA), sink.extend)) == DATA and sink == DATA


@pytest.mark.parametrize(("data", "size", "message"), [
    (DATA[:-1], len(DATA), "truncated"),
    (DATA + b"x", len(DATA), "larger than"),
    (b"y" + DATA[1:], len(DATA), "does not match its digest"),
])
def test_verified_refuses_bad_bytes(data: bytes, size: int, message: str) -> None:
    with pytest.raises(FailedPrecondition, match=message):
        b"".join(verified(chunks(data), digest(DATA), size))


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
@pytest.mark.parametrize("chunk", [1, 4096, 1 << 22])
def test_inflate_several_members_and_frames(compression: str, chunk: int) -> None:
    first, second = DATA[:100_000], DATA[100_000:]
    inflated = Inflated(chunks(compress(first, compression) + compress(second, compression), chunk), compression,
                        1 << 30)
    assert b"".join(inflated) == DATA and inflated.hexdigest() == hashlib.sha256(DATA).hexdigest()


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_inflate_refuses_bombs_truncation_and_garbage(compression: str) -> None:
    packed = compress(DATA, compression)
    with pytest.raises(ResourceExhausted, match="decompression bomb"):
        b"".join(Inflated(chunks(packed), compression, 1_000_000))
    with pytest.raises(FailedPrecondition, match=f"not valid {compression}"):
        b"".join(Inflated(chunks(packed[:-20]), compression, 1 << 30))
    with pytest.raises(FailedPrecondition, match=f"not valid {compression}"):
        b"".join(Inflated(chunks(os.urandom(1000)), compression, 1 << 30))
    with pytest.raises(FailedPrecondition, match=f"not valid {compression}"):
        b"".join(Inflated(iter([]), compression, 1 << 30))


def test_pipe_carries_chunks_to_a_thread_with_bounded_memory() -> None:
    async def main() -> bytes:
        pipe = ChunkPipe(asyncio.get_running_loop(), limit=100_000)
        received: list[bytes] = []
        thread = threading.Thread(target=lambda: received.extend(pipe))
        thread.start()
        for piece in chunks(DATA, 30_000):
            await pipe.put(piece)
            assert pipe._bytes <= 100_000 + 30_000
        pipe.close()
        await asyncio.to_thread(thread.join)
        return b"".join(received)

    assert asyncio.run(main()) == DATA


def test_pipe_abort_and_stop() -> None:
    async def main() -> None:
        pipe = ChunkPipe(asyncio.get_running_loop())
        await pipe.put(b"x")
        pipe.abort(RuntimeError("download failed"))
        with pytest.raises(PipeAborted, match="download failed"):
            list(pipe)
        pipe.stop()  # the reader gave up: the next put fails, so the download stops too
        with pytest.raises(PipeAborted):
            await pipe.put(b"y")

    asyncio.run(main())
