"""Running short helper processes (CNI plugins, unshare, runtime CLIs) from the event loop, fast and cancellation-safe.

Why not ``asyncio.create_subprocess_exec``: on uvloop (crirt's loop) it spawns with libuv's ``fork()``, which
copies the page tables of the whole daemon and measured about twice as slow per process as CPython's
``subprocess.Popen``, which uses ``vfork()``. A pod start runs several processes on its critical path, so
this module spawns with ``Popen``, reads the output through the loop's pipe transports, and learns of the
exit through a pidfd (falling back to polling on kernels without ``pidfd_open``).

When the caller is cancelled (a passed deadline), the process is allowed to finish (up to ``grace``
seconds, then SIGKILL) before the cancellation goes on, so no cleanup ever races a half-done step.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


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
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            await readable(fd)
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        if line and b"\n" in chunk:
            return b"".join(chunks)


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


async def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, stdin: int | None = None,
              time_limit: float | None = None, grace: float = 60.0) -> Completed:
    """Run ``argv`` to completion (``stdin``: a file descriptor, default /dev/null); never raises for a
    non-zero exit. ``ProcessTimeout`` after ``time_limit`` seconds (the process is killed); OSError if it
    cannot be started."""
    out_r, out_w = nonblocking_pipe()
    err_r, err_w = nonblocking_pipe()
    try:
        # Popen returns as soon as the vfork()ed child has exec'd (about a millisecond): fine on the loop.
        proc = subprocess.Popen(  # noqa: ASYNC220
            list(argv), stdin=subprocess.DEVNULL if stdin is None else stdin, stdout=out_w, stderr=err_w,
            env=None if env is None else dict(env), close_fds=True)
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (out_w, err_w):
            os.close(fd)

    async def finish() -> Completed:
        try:
            out, err, code = await asyncio.gather(read_pipe(out_r), read_pipe(err_r), wait_exit(proc))
        finally:
            for fd in (out_r, err_r):
                os.close(fd)
        return Completed(code, out, err)

    work: asyncio.Future[Any] = asyncio.ensure_future(finish())
    try:
        return await asyncio.wait_for(asyncio.shield(work), time_limit)
    except TimeoutError:
        _kill(proc)
        await work
        raise ProcessTimeout(f"{argv[0]} ran longer than {time_limit:g}s and was killed") from None
    except asyncio.CancelledError:
        try:
            await asyncio.wait_for(asyncio.shield(work), grace)
        except TimeoutError:
            _kill(proc)
            await work
        raise


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
