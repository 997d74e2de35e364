"""crirt's public plugin surface: the shim contract. Plugins import from here and nothing else of crirt."""

from crirt.shim.contract import (
    API_VERSION,
    ENTRY_POINT_GROUP,
    CreateTask,
    ExecProcess,
    ExecResult,
    ExitStatus,
    HandlerFeatures,
    ProcessIO,
    Shim,
    ShimContext,
    Stdio,
    TaskState,
)

__all__ = [
    "API_VERSION",
    "ENTRY_POINT_GROUP",
    "CreateTask",
    "ExecProcess",
    "ExecResult",
    "ExitStatus",
    "HandlerFeatures",
    "ProcessIO",
    "Shim",
    "ShimContext",
    "Stdio",
    "TaskState",
]
