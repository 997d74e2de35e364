"""crirt's public plugin surface: the shim contract and helpers for plugins.

Plugins import from here, from the drivers' modules ``crirt.shim.conmon`` and ``crirt.shim.taskv2`` (their
public names only) and from ``crirt.errors``; nothing else of crirt (``tests/unit/test_plugin_imports.py``)."""

from crirt.oci.host import kernel_version
from crirt.proc import Completed, ProcessTimeout
from crirt.proc import run as run_program
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
from crirt.shim.options import check_known, executable, missing_programs

__all__ = [
    "API_VERSION",
    "ENTRY_POINT_GROUP",
    "Completed",
    "CreateTask",
    "DelegatingShim",
    "ExecProcess",
    "ExecResult",
    "ExitStatus",
    "HandlerFeatures",
    "ProcessIO",
    "ProcessTimeout",
    "Shim",
    "ShimContext",
    "ShimDriver",
    "Stdio",
    "TaskState",
    "check_known",
    "executable",
    "kernel_version",
    "missing_programs",
    "run_program",
    "stats_of_each",
]
