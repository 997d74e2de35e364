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
    stats_of_each,
)
from crirt.shim.delegating import DelegatingShim, ShimDriver
from crirt.shim.options import check_known, executable

__all__ = [
    "API_VERSION",
    "ENTRY_POINT_GROUP",
    "CreateTask",
    "DelegatingShim",
    "ExecProcess",
    "ExecResult",
    "ExitStatus",
    "HandlerFeatures",
    "ProcessIO",
    "Shim",
    "ShimContext",
    "ShimDriver",
    "Stdio",
    "TaskState",
    "check_known",
    "executable",
    "stats_of_each",
]
