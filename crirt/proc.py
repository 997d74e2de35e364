"""Running short helper processes (CNI plugins, unshare, runtime CLIs) from the event loop, fast and cancellation-safe.

Why not ``asyncio.create_subprocess_exec``: on uvloop (crirt's loop) it spawns with libuv's ``fork()``, which
copies the page tables of the whole daemon and measured about twice as slow per process as CPython's
``subprocess.Popen``, which uses ``vfork()``. A pod start runs several processes on its critical path, so
this module spawns with ``Popen``, reads the output itself (``add_reader`` and ``os.read``: handing the pipes to
uvloop's transports closed descriptors twice), and learns of the exit through a pidfd (falling back to polling
on kernels without ``pidfd_open``). It is the one way crirt starts a program.

When the caller is cancelled (a passed deadline), the process is allowed to finish (up to ``grace``
seconds, then SIGKILL) before the cancellation goes on, so no cleanup ever races a half-done step.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

KILLED_DRAIN = 1.0
"""Seconds the output of a killed process is still read for; then whatever holds its pipes is left alone."""


@dataclass(frozen=True)
class Completed:
    """How a process ended and what it printed."""

    returncode: int
    stdout: bytes
    stderr: bytes


class ProcessTimeout(Exception):
    """The process ran past its time limit and was killed."""


async def readable(fd: int) -> None:
    """Wait until ``fd`` can be read (or has hung up)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def read_pipe(fd: int, *, line: bool = False) -> bytes:
    """Read a non-blocking pipe end to EOF (with ``line``: up to the first newline). The descriptor stays the
    caller's to close: handing it to the loop's pipe transports would close it twice on uvloop (the file
    object, then libuv), and a thread that reused the number in between would lose its descriptor."""
    chunks: list[bytes] = []

    def keep(chunk: bytes) -> bool:
        chunks.append(chunk)
        return line and b"\n" in chunk

    await _read_chunks(fd, keep)
    return b"".join(chunks)


async def _read_chunks(fd: int, take: Callable[[bytes], bool]) -> None:
    """Hand each chunk read from a non-blocking pipe end to ``take`` until EOF or until ``take`` returns True."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            await readable(fd)
            continue
        if not chunk or take(chunk):
            return


def nonblocking_pipe() -> tuple[int, int]:
    """A pipe whose read end (ours) does not block; both ends close on exec."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    return read_end, write_end


async def wait_exit(proc: subprocess.Popen[Any]) -> int:
    """The exit code of a child started with ``subprocess.Popen``, awaited without blocking the loop."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        while proc.poll() is None:  # noqa: ASYNC110 - no pidfd (kernels before 5.3): nothing to wait on but time
            await asyncio.sleep(0.005)
        return proc.returncode
    done: asyncio.Future[None] = loop.create_future()
    loop.add_reader(pidfd, lambda: done.done() or done.set_result(None))
    try:
        await done
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return proc.wait()


class _Output:
    """What a process printed, kept up to ``limit`` bytes for stdout and stderr together (the rest is read and
    dropped, so the writer never blocks on a full pipe)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.streams = (bytearray(), bytearray())

    def add(self, stream: int, chunk: bytes) -> bool:
        """Keep what fits of ``chunk``; never asks the reader to stop (the pipe is read to its end)."""
        if self.limit is not None:
            chunk = chunk[:max(self.limit - len(self.streams[0]) - len(self.streams[1]), 0)]
        self.streams[stream].extend(chunk)
        return False


async def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, stdin: int | None = None,
              cwd: str | None = None, time_limit: float | None = None, grace: float = 60.0,
              output_limit: int | None = None, drain: float | None = None,
              stop: Callable[[], Awaitable[None]] | None = None, output: int | tuple[int, int] | None = None,
              new_session: bool = False, pass_fds: Sequence[int] = ()) -> Completed:
    """Run ``argv`` to completion (``stdin``: a file descriptor, default /dev/null); never raises for a
    non-zero exit; OSError if it cannot be started.

    ``output_limit`` caps stdout and stderr together while reading. ``drain``: once the process has exited, wait
    at most this many seconds for its output to end (a background child may keep the pipes open) and return
    what was read by then; None waits for the end. ``output``: a file descriptor that gets stdout and stderr
    instead, or a (stdout, stderr) pair (nothing is captured; for a process that leaves a child behind holding
    them, or whose stdio belongs to someone else). After ``time_limit``
    seconds ``stop()`` is awaited (default: SIGKILL the process), the process gets ``grace`` seconds to exit, and
    ``ProcessTimeout`` is raised; a cancelled caller with a ``stop`` stops the process the same way.
    ``new_session``: start the process in a session of its own (for a program that leaves a daemon behind).
    ``pass_fds``: descriptors the process inherits (e.g. a pipe it reports on); they stay the caller's to close."""
    pipes = [] if output is not None else [nonblocking_pipe(), nonblocking_pipe()]
    given = (output, output) if isinstance(output, int) else output
    try:
        # Popen returns as soon as the vfork()ed child has exec'd (about a millisecond): fine on the loop.
        proc = subprocess.Popen(  # noqa: ASYNC220
            list(argv), stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=pipes[0][1] if given is None else given[0], stderr=pipes[1][1] if given is None else given[1],
            env=None if env is None else dict(env), cwd=cwd, close_fds=True, pass_fds=tuple(pass_fds),
            start_new_session=new_session)
    except BaseException:
        for read_end, _ in pipes:
            os.close(read_end)
        raise
    finally:
        for _, write_end in pipes:
            os.close(write_end)
    printed = _Output(output_limit)
    killed = asyncio.Event()

    async def finish() -> Completed:
        readers = [asyncio.ensure_future(_read_chunks(read_end, functools.partial(printed.add, stream)))
                   for stream, (read_end, _) in enumerate(pipes)]
        try:
            code = await wait_exit(proc)
            if readers:
                await _read_out(readers, drain, killed)
        finally:
            for reader in readers:
                reader.cancel()
            outcomes = await asyncio.gather(*readers, return_exceptions=True)
            for read_end, _ in pipes:
                os.close(read_end)
        for outcome in outcomes:
            if isinstance(outcome, Exception) and not isinstance(outcome, asyncio.CancelledError):
                raise outcome  # a broken reader is a bug, not output
        return Completed(code, bytes(printed.streams[0]), bytes(printed.streams[1]))

    async def end() -> None:
        if stop is not None:
            with contextlib.suppress(Exception):
                await stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(work), grace)
        killed.set()
        _kill(proc)
        await work

    work: asyncio.Future[Any] = asyncio.ensure_future(finish())
    try:
        return await asyncio.wait_for(asyncio.shield(work), time_limit)
    except TimeoutError:
        await end()
        raise ProcessTimeout(f"{argv[0]} ran longer than {time_limit:g}s and was stopped") from None
    except asyncio.CancelledError:
        if stop is not None:
            await end()
            raise
        try:
            await asyncio.wait_for(asyncio.shield(work), grace)
        except TimeoutError:
            killed.set()
            _kill(proc)
            await work
        raise


async def _read_out(readers: list[asyncio.Future[None]], drain: float | None, killed: asyncio.Event) -> None:
    """Wait until the readers reach the end of the output: at most ``drain`` seconds, and at most
    ``KILLED_DRAIN`` once the process was killed (a child it left may hold the pipes open for good)."""

    async def cut_short() -> None:
        await killed.wait()
        await asyncio.sleep(KILLED_DRAIN)

    read_all = asyncio.gather(*readers, return_exceptions=True)
    cut = asyncio.ensure_future(cut_short())
    try:
        await asyncio.wait([read_all, cut], timeout=drain, return_when=asyncio.FIRST_COMPLETED)
    finally:
        cut.cancel()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def input_fd(data: bytes) -> int:
    """A file descriptor holding ``data`` from its start, to give a program as its stdin (the caller closes it)."""
    fd = os.memfd_create("crirt-input", os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
