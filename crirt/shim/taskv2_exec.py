"""Processes added to a shim v2 task: run to the end (``exec_sync``) or interactive.

Run to the end: the output comes through two FIFOs crirt reads. Interactive
(``FifoExec``): stdin, stdout and stderr are FIFOs between crirt and the shim, which copies between them and
the process (or the process's terminal: then all output arrives on stdout).

crirt keeps every FIFO open read-write and non-blocking, so opening never blocks and a reader never sees end
of file; the end of the output is known from the task API instead: once ``Wait`` has returned, ``Delete``
returns only after the shim has copied everything into the FIFOs, and what they still hold is the rest of
the output. End of input is ``CloseIO``; a resize is ``ResizePty``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from crirt._gen.containerd.task import v2 as api
from crirt._gen.google.protobuf import Empty
from crirt.errors import CrirtError, DeadlineExceeded, InvalidArgument, NotFound
from crirt.shim.contract import ExecProcess, ExecResult, ProcessIO
from crirt.shim.crilog import READ_SIZE, Capture, open_fifo, read_available
from crirt.shim.taskv2_pods import CALL_TIMEOUT, any_json, call
from crirt.shim.ttrpc import M, TtrpcClient

STDOUT, STDERR = 1, 2
OUTPUT_QUEUE = 16
"""Chunks read ahead of the consumer (at most 1 MiB); reading pauses while the queue is full."""
START_FAILED = 255
"""The exit code of a process the shim could not start (runc's for a failed exec)."""
KILL_WAIT = 10.0
MAX_TERMINAL_SIZE = 65535
PROCESS_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"


def exec_request(task_id: str, exec_id: str, process: dict[str, Any], *, terminal: bool = False,
                 **stdio: str) -> api.ExecProcessRequest:
    """The Exec request for an OCI ``process`` (sent as JSON), its stdio paths or URIs in ``stdio``."""
    return api.ExecProcessRequest(id=task_id, exec_id=exec_id, terminal=terminal,
                                  spec=any_json(PROCESS_URL, {**process, "terminal": terminal}), **stdio)


async def _delete(client: TtrpcClient, task_id: str, exec_id: str) -> None:
    with contextlib.suppress(CrirtError):
        await call(client, "Delete", api.DeleteRequest(id=task_id, exec_id=exec_id), api.DeleteResponse)


async def run_to_end(client: TtrpcClient, task_id: str, process: ExecProcess, exec_dir: Path,
                     time_limit: float | None, limit: int) -> ExecResult:
    """Run a process to completion with its stdout and stderr captured through FIFOs in ``exec_dir`` (at
    most ``limit`` bytes of each kept); past ``time_limit`` seconds SIGKILL it and say ``timed_out``."""
    captures: list[Capture] = []
    exec_id = process.exec_id
    try:
        for name in ("stdout", "stderr"):
            os.mkfifo(exec_dir / name, 0o600)
            captures.append(Capture(exec_dir / name, limit))
        request = exec_request(task_id, exec_id, process.process, stdout=str(exec_dir / "stdout"),
                               stderr=str(exec_dir / "stderr"))
        await call(client, "Exec", request, Empty)
        try:
            await call(client, "Start", api.StartRequest(id=task_id, exec_id=exec_id), api.StartResponse)
            wait = api.WaitRequest(id=task_id, exec_id=exec_id)
            timed_out = False
            try:
                response = await call(client, "Wait", wait, api.WaitResponse, time_limit)
            except DeadlineExceeded:
                if time_limit is None:
                    raise
                timed_out = True
                with contextlib.suppress(NotFound):
                    await call(client, "Kill", api.KillRequest(id=task_id, exec_id=exec_id, signal=signal.SIGKILL),
                               Empty)
                response = await call(client, "Wait", wait, api.WaitResponse, KILL_WAIT)
        finally:
            # Delete returns once the shim has copied all output into the FIFOs (or gave up).
            await asyncio.shield(_delete(client, task_id, exec_id))
    finally:
        outputs = [capture.close() for capture in captures]
    stdout, stderr = outputs
    return ExecResult(exit_code=response.exit_status, stdout=stdout, stderr=stderr, timed_out=timed_out)


class _Output:
    """Reads one output FIFO into the shared queue, pausing while the queue is full."""

    def __init__(self, path: Path, stream: int, queue: asyncio.Queue[tuple[int, bytes]]) -> None:
        self.fd = open_fifo(path)
        self.stream = stream
        self.queue = queue
        self.loop = asyncio.get_running_loop()
        self.reading = False
        self.resume()

    def resume(self) -> None:
        if not self.reading and self.fd >= 0 and not self.queue.full():
            self.loop.add_reader(self.fd, self._readable)
            self.reading = True

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        if chunk:
            self.queue.put_nowait((self.stream, chunk))
        if self.queue.full():
            self.loop.remove_reader(self.fd)
            self.reading = False

    def drain(self) -> bytes:
        """Stop reading; return what the FIFO still holds."""
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False
        rest = read_available(self.fd) if self.fd >= 0 else b""
        self.close()
        return rest

    def close(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FifoExec(ProcessIO):
    """One exec'd process of a shim v2 task, with its stdio on FIFOs in ``exec_dir``."""

    def __init__(self, client: TtrpcClient, task_id: str, exec_id: str, exec_dir: Path, *, terminal: bool,
                 stdin: bool) -> None:
        self._client = client
        self.task_id = task_id
        self.exec_id = exec_id
        self.exec_dir = exec_dir
        self.terminal = terminal
        self._queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue(OUTPUT_QUEUE)
        self._outputs: list[_Output] = []
        self._stdin = -1
        self._exit: asyncio.Future[int] | None = None
        self._closed = False
        for name in ("stdout",) + (() if terminal else ("stderr",)) + (("stdin",) if stdin else ()):
            os.mkfifo(exec_dir / name, 0o600)
        if stdin:
            self._stdin = open_fifo(exec_dir / "stdin")
        self._outputs = [_Output(exec_dir / name, stream, self._queue)
                         for name, stream in (("stdout", STDOUT), ("stderr", STDERR)) if (exec_dir / name).exists()]

    async def _call(self, method: str, request: Any, response_type: type[M]) -> M:
        return await call(self._client, method, request, response_type, None if method == "Wait" else CALL_TIMEOUT)

    async def start(self, process: dict[str, Any]) -> None:
        """Create and start the OCI ``process``. If the shim cannot start it, the process "ends" at once with
        START_FAILED and the shim's message as its output."""
        fifos = {name: str(self.exec_dir / name) if (self.exec_dir / name).exists() else ""
                 for name in ("stdin", "stdout", "stderr")}
        try:
            await self._call("Exec", exec_request(self.task_id, self.exec_id, process, terminal=self.terminal,
                                                  **fifos), Empty)
            await self._call("Start", api.StartRequest(id=self.task_id, exec_id=self.exec_id), api.StartResponse)
        except CrirtError as exc:
            self._queue.put_nowait((STDOUT if self.terminal else STDERR, f"{exc}\r\n".encode()))
            self._exit = asyncio.ensure_future(self._finish(START_FAILED))
            return
        self._exit = asyncio.ensure_future(self._wait())

    async def _wait(self) -> int:
        response = await self._call("Wait", api.WaitRequest(id=self.task_id, exec_id=self.exec_id), api.WaitResponse)
        return await self._finish(response.exit_status)

    async def _finish(self, code: int) -> int:
        """After the exit: let the shim finish copying (Delete), then queue the rest of the output and its end."""
        with contextlib.suppress(CrirtError):
            await self._call("Delete", api.DeleteRequest(id=self.task_id, exec_id=self.exec_id), api.DeleteResponse)
        rests = [(output.stream, output.drain()) for output in self._outputs]  # all readers stop first
        for stream, rest in rests:
            if rest:
                await self._queue.put((stream, rest))
        await self._queue.put((0, b""))
        return code

    async def read_output(self) -> tuple[int, bytes]:
        item = await self._queue.get()
        for output in self._outputs:
            output.resume()
        if item[0] == 0:
            self._queue.put_nowait(item)  # every later read sees the end too
        return item

    async def write_stdin(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self._stdin >= 0:
            try:
                view = view[os.write(self._stdin, view):]
            except BlockingIOError:
                await self._writable()
            except OSError:
                return  # the process is gone

    async def _writable(self) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        fd = self._stdin
        loop.add_writer(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, 0.5)  # re-check now and then: stdin may be closed meanwhile
        except TimeoutError:
            pass
        finally:
            loop.remove_writer(fd)

    async def close_stdin(self) -> None:
        if self.terminal or self._stdin < 0:
            return
        with contextlib.suppress(CrirtError):
            await self._call("CloseIO", api.CloseIoRequest(id=self.task_id, exec_id=self.exec_id, stdin=True), Empty)
        os.close(self._stdin)
        self._stdin = -1

    async def resize(self, width: int, height: int) -> None:
        if not self.terminal:
            return
        if not (0 <= width <= MAX_TERMINAL_SIZE and 0 <= height <= MAX_TERMINAL_SIZE):
            raise InvalidArgument(f"terminal size {width}x{height} is outside 0..{MAX_TERMINAL_SIZE}")
        with contextlib.suppress(CrirtError):
            await self._call("ResizePty", api.ResizePtyRequest(id=self.task_id, exec_id=self.exec_id, width=width,
                                                               height=height), Empty)

    async def wait(self) -> int:
        assert self._exit is not None, "start() first"
        return await asyncio.shield(self._exit)

    async def close(self) -> None:
        """Kill the process if it still runs, wait for it to be deleted, release the FIFOs."""
        if self._closed:
            return
        self._closed = True
        if self._exit is not None and not self._exit.done():
            with contextlib.suppress(CrirtError):
                await self._call("Kill", api.KillRequest(id=self.task_id, exec_id=self.exec_id,
                                                         signal=signal.SIGKILL, all=True), Empty)
            with contextlib.suppress(CrirtError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exit), KILL_WAIT)
        for output in self._outputs:
            output.close()
        if self._stdin >= 0:
            os.close(self._stdin)
            self._stdin = -1
        shutil.rmtree(self.exec_dir, ignore_errors=True)
