"""A shim plugin whose work is done by one of crirt's drivers (the conmon driver, the shim v2 driver).

Such a plugin only validates its options, builds its driver as ``self.runtime`` and reports its features;
every task method is handed to the driver, which has the contract's method names and types.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from crirt.shim.contract import CreateTask, ExecProcess, ExecResult, ExitStatus, ProcessIO, Shim, TaskState


class ShimDriver(Protocol):
    """What a driver offers: the contract's task methods (``ConmonRuntime``, ``ShimV2Runtime``)."""

    async def create(self, task: CreateTask) -> TaskState: ...
    async def start(self, task_id: str) -> TaskState: ...
    async def kill(self, task_id: str, signal: int, all_processes: bool = False) -> None: ...
    async def wait(self, task_id: str) -> ExitStatus: ...
    async def delete(self, task_id: str) -> ExitStatus | None: ...
    async def state(self, task_id: str) -> TaskState: ...
    async def exec_sync(self, task_id: str, process: ExecProcess, time_limit: float | None) -> ExecResult: ...
    async def exec_interactive(self, task_id: str, process: ExecProcess) -> ProcessIO: ...
    async def reopen_log(self, task_id: str) -> None: ...
    async def attach(self, task_id: str, *, stdin: bool, terminal: bool) -> ProcessIO: ...
    async def resize(self, task_id: str, exec_id: str | None, width: int, height: int) -> None: ...
    async def update(self, task_id: str, resources: dict[str, Any]) -> None: ...
    async def stats(self, task_id: str) -> dict[str, Any]: ...
    async def stats_many(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]: ...
    async def close(self) -> None: ...


class DelegatingShim(Shim):
    """A ``Shim`` that hands every task method to ``self.runtime``; subclasses set it and define ``features``."""

    runtime: ShimDriver

    async def create(self, task: CreateTask) -> TaskState:
        return await self.runtime.create(task)

    async def start(self, task_id: str) -> TaskState:
        return await self.runtime.start(task_id)

    async def kill(self, task_id: str, signal: int, all_processes: bool = False) -> None:
        await self.runtime.kill(task_id, signal, all_processes)

    async def wait(self, task_id: str) -> ExitStatus:
        return await self.runtime.wait(task_id)

    async def delete(self, task_id: str) -> ExitStatus | None:
        return await self.runtime.delete(task_id)

    async def state(self, task_id: str) -> TaskState:
        return await self.runtime.state(task_id)

    async def exec_sync(self, task_id: str, process: ExecProcess, time_limit: float | None) -> ExecResult:
        return await self.runtime.exec_sync(task_id, process, time_limit)

    async def exec_interactive(self, task_id: str, process: ExecProcess) -> ProcessIO:
        return await self.runtime.exec_interactive(task_id, process)

    async def reopen_log(self, task_id: str) -> None:
        await self.runtime.reopen_log(task_id)

    async def attach(self, task_id: str, *, stdin: bool, terminal: bool) -> ProcessIO:
        return await self.runtime.attach(task_id, stdin=stdin, terminal=terminal)

    async def resize(self, task_id: str, exec_id: str | None, width: int, height: int) -> None:
        await self.runtime.resize(task_id, exec_id, width, height)

    async def update(self, task_id: str, resources: dict[str, Any]) -> None:
        await self.runtime.update(task_id, resources)

    async def stats(self, task_id: str) -> dict[str, Any]:
        return await self.runtime.stats(task_id)

    async def stats_many(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return await self.runtime.stats_many(task_ids)

    async def close(self) -> None:
        await self.runtime.close()
