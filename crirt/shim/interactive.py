"""Interactive processes run in the foreground by an OCI runtime CLI (``runc exec`` without ``--detach``).

The runtime stays crirt's child for the process's whole life, so the end of the process is seen at once (a
detached exec's process is re-parented to PID 1, which may reap it late) and the runtime's exit code is the
process's: runc passes it through, 128+N for signal N. Without a terminal the runtime's stdin, stdout and
stderr are pipes to crirt; runc copies them to and from the process and exits once the process has ended and
its output is closed (so a background child still holding stdout keeps the exec open, as with CRI-O and
``docker exec``). With a terminal the runtime wants a terminal of its own as stdio, so crirt makes a pty and
keeps the master (CRI-O's way): the runtime creates the container's terminal, copies between the two and, on
SIGWINCH, gives the container's terminal the size of its own. A resize is TIOCSWINSZ on crirt's master
followed by SIGWINCH to the runtime (runc queues a signal that comes before it has the container's terminal,
and applies the size once it has it, possibly just after the process started).

All descriptors are non-blocking and polled by the event loop (``add_reader``/``add_writer``), so this works
the same on asyncio's loop and on uvloop, and the output is read no faster than it is consumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import struct
import subprocess
import termios
import tty
from collections.abc import Callable, Sequence
from pathlib import Path

from crirt.errors import InvalidArgument
from crirt.proc import readable, wait_exit
from crirt.shim.contract import ProcessIO

log = logging.getLogger(__name__)

STDOUT, STDERR = 1, 2
OUTPUT_CHUNK = 65536
OUTPUT_QUEUE = 16
"""Chunks read ahead of the consumer per process (at most 1 MiB)."""
KILL_WAIT = 5.0
"""How long closing waits for the runtime to exit after the process was killed, before killing the runtime."""
MAX_TERMINAL_SIZE = 65535
MAX_ANCESTRY = 64
"""How many parents up ``open_descendant`` looks for the runtime (an exec'd process sits a few below it)."""


def session_of(stat: str) -> int:
    """The session id in a ``/proc/PID/stat`` line (the command name in parentheses may contain anything)."""
    return int(stat.rsplit(")", 1)[1].split()[3])


def parent_of(stat: str) -> int:
    """The parent pid in a ``/proc/PID/stat`` line."""
    return int(stat.rsplit(")", 1)[1].split()[1])


def open_descendant(pid: int, ancestor: int) -> int | None:
    """A pidfd for ``pid`` if it is ``ancestor`` or descends from it, else None (not its, or gone).

    The pidfd is opened before the ancestry is read and found still alive afterwards, so the ancestry read is
    the pidfd's process's and not that of a process given the same pid in between (``ancestor``, an unreaped
    child of ours, keeps its pid)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # gone, or no pid at all
        return None
    try:
        current = pid
        for _ in range(MAX_ANCESTRY):
            if current == ancestor:
                signal.pidfd_send_signal(pidfd, 0)
                return pidfd
            if current <= 1:
                break
            with open(f"/proc/{current}/stat") as f:
                current = parent_of(f.read())
    except (OSError, ValueError, IndexError):
        pass  # gone meanwhile
    os.close(pidfd)
    return None


def kill_session(leader: int, pidfd: int | None) -> None:
    """SIGKILL the session led by ``leader``: the leader itself through ``pidfd`` (None once it has exited),
    and every process of its session. runc makes an exec'd process a session leader (setsid), so this takes its
    children and background jobs too; a session's id cannot go to another process while a member holds it."""
    if pidfd is not None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                if session_of(f.read()) == leader:
                    os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or a process we may not see


def read_pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ForegroundExec(ProcessIO):
    """One process run by ``runtime exec`` in the foreground; see the module docstring."""

    def __init__(self, proc: subprocess.Popen[bytes], *, stdin: int | None, outputs: Sequence[tuple[int, int]],
                 terminal: int | None, pid_file: Path, cleanup: Callable[[], None]) -> None:
        """``stdin``/``outputs`` ((stream, fd) pairs)/``terminal``: crirt's non-blocking ends, owned from now
        on; ``pid_file``: where the runtime writes the process's host pid; ``cleanup``: called once at close."""
        self._proc = proc
        self._stdin = stdin
        self._terminal = terminal
        self._fds = {fd for fd in (stdin, terminal, *(fd for _, fd in outputs)) if fd is not None}
        self._pid_file = pid_file
        self._cleanup = cleanup
        self._exit = asyncio.ensure_future(wait_exit(proc))
        self._output: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue(OUTPUT_QUEUE)
        self._pumps = [asyncio.ensure_future(self._pump(fd, stream)) for stream, fd in outputs]
        self._open_outputs = len(self._pumps)
        self._writer: asyncio.Future[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._leader: int | None = None  # a pidfd of the exec'd process, once found to be the runtime's

    @classmethod
    async def start(cls, argv: Sequence[str], *, terminal: bool, stdin: bool, pid_file: Path,
                    cleanup: Callable[[], None]) -> ForegroundExec:
        """Start ``argv`` (a runtime's foreground exec command) with pipes or a pty as its stdio."""
        ours: list[int] = []
        theirs: list[int] = []
        try:
            if terminal:
                master, child = os.openpty()
                ours.append(master)
                theirs.append(child)
                tty.setraw(child)  # the container's terminal does the line discipline; this one passes bytes
                child_stdio = (child, child, child)
            else:
                child_in = subprocess.DEVNULL
                if stdin:
                    child_in, stdin_w = os.pipe()
                    ours.append(stdin_w)
                    theirs.append(child_in)
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
                ours += [out_r, err_r]
                theirs += [out_w, err_w]
                child_stdio = (child_in, out_w, err_w)
            for fd in ours:
                os.set_blocking(fd, False)
            # Popen (vfork) rather than the loop's spawn: much cheaper on uvloop (see crirt.proc).
            proc = subprocess.Popen(list(argv), stdin=child_stdio[0], stdout=child_stdio[1],  # noqa: ASYNC220
                                    stderr=child_stdio[2], start_new_session=True)
        except BaseException:
            for fd in ours:
                os.close(fd)
            cleanup()
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        if terminal:
            return cls(proc, stdin=ours[0] if stdin else None, outputs=[(STDOUT, ours[0])], terminal=ours[0],
                       pid_file=pid_file, cleanup=cleanup)
        return cls(proc, stdin=ours[0] if stdin else None, outputs=[(STDOUT, ours[-2]), (STDERR, ours[-1])],
                   terminal=None, pid_file=pid_file, cleanup=cleanup)

    @property
    def pid(self) -> int | None:
        """The process's host pid, once the runtime has started it."""
        return read_pid_file(self._pid_file)

    # -- output

    async def _pump(self, fd: int, stream: int) -> None:
        """Move the output of one descriptor into the queue until EOF (EIO for a pty nobody holds any more)."""
        try:
            while True:
                try:
                    data = os.read(fd, OUTPUT_CHUNK)
                except BlockingIOError:
                    await readable(fd)
                    continue
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        log.warning("reading an exec's output failed: %s", exc)
                    break
                if not data:
                    break
                await self._output.put((stream, data))
        finally:
            self._open_outputs -= 1
            if self._open_outputs == 0:
                with contextlib.suppress(asyncio.QueueFull):
                    self._output.put_nowait((0, b""))  # the consumer waits for this; there is room unless
                    # it stopped reading (then nobody waits)

    async def read_output(self) -> tuple[int, bytes]:
        if self._open_outputs == 0 and self._output.empty():
            return 0, b""
        return await self._output.get()

    # -- input

    async def write_stdin(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            fd = self._stdin
            if fd is None:
                return
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                await self._writable(fd)
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.EIO):
                    raise
                return  # the process (or every reader of its stdin) is gone: nothing reads this any more

    async def _writable(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        self._writer = loop.create_future()
        loop.add_writer(fd, _wake, self._writer)
        try:
            await self._writer
        finally:
            loop.remove_writer(fd)
            self._writer = None

    async def close_stdin(self) -> None:
        if self._terminal is None and self._stdin is not None:
            fd, self._stdin = self._stdin, None
            self._close_fd(fd)

    def _close_fd(self, fd: int) -> None:
        if fd in self._fds:
            if self._writer is not None:
                _wake(self._writer)  # a waiting write_stdin returns instead of polling a closed fd
                asyncio.get_running_loop().remove_writer(fd)
            self._fds.discard(fd)
            os.close(fd)

    # -- terminal, exit, close

    async def resize(self, width: int, height: int) -> None:
        if not (0 <= width <= MAX_TERMINAL_SIZE and 0 <= height <= MAX_TERMINAL_SIZE):
            raise InvalidArgument(f"terminal size {width}x{height} is outside 0..{MAX_TERMINAL_SIZE}")
        if self._terminal is None or self._terminal not in self._fds:
            return
        fcntl.ioctl(self._terminal, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
        if self._proc.returncode is None:  # the runtime copies the size to the container's terminal
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGWINCH)

    async def wait(self) -> int:
        code = await asyncio.shield(self._exit)
        return code if code >= 0 else 128 - code

    async def close(self) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._end())
        await asyncio.shield(self._closing)

    async def _end(self) -> None:
        """Kill the process if it still runs, reap the runtime, stop reading, close every descriptor."""
        try:
            if not self._exit.done():
                await self._kill()
        finally:
            for task in self._pumps:
                task.cancel()
            await asyncio.gather(*self._pumps, return_exceptions=True)
            self._stdin = None
            for fd in list(self._fds):
                self._close_fd(fd)
            if self._leader is not None:
                os.close(self._leader)
                self._leader = None
            self._cleanup()

    async def _kill(self) -> None:
        """SIGKILL the process's session (once the runtime has written its pid), so the runtime exits with
        it; kill the runtime itself only if it does not exit within KILL_WAIT."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + KILL_WAIT
        while not self._exit.done() and loop.time() < deadline:
            pid = self.pid
            if pid is not None:
                await asyncio.to_thread(self._kill_session, pid)  # a walk of /proc
            await asyncio.wait((self._exit,), timeout=0.05)
        if not self._exit.done():
            log.warning("%s did not exit after its exec'd process was killed; killing it", self._proc.pid)
            self._proc.kill()
            await self._exit

    def _kill_session(self, pid: int) -> None:
        """Kill the session of ``pid`` (from the pid file) if it is this exec's: the process descends from the
        runtime, or has exited (its session members, if any, still hold the number). A live process that
        does not descend from the runtime got the pid after the exec's process ended and is left alone."""
        if self._leader is None:
            self._leader = open_descendant(pid, self._proc.pid)
        if self._leader is None and os.path.exists(f"/proc/{pid}"):
            return
        kill_session(pid, self._leader)
