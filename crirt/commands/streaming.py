"""Commands that run processes in containers or open streams into them (exec, attach, port-forward).

Exec, Attach and PortForward only hand back a URL of the streaming server; the
stream itself is served elsewhere, so none of them holds a lock.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from crirt.commands.base import Command, Result
from crirt.model.types import BoundedList, Bytes, Int32, Int64, RequiredId, Text


def check_stream_flags(*, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> None:
    """Reject stream combinations the streaming server cannot serve (as the kubelet's server does)."""
    if not (stdin or stdout or stderr):
        raise ValueError("one of stdin, stdout, or stderr must be set")
    if tty and stderr:
        raise ValueError("tty and stderr cannot both be true")


class ExecSyncResult(Result):
    """Output and exit code of a finished command."""

    stdout: Bytes = b""
    stderr: Bytes = b""
    exit_code: Int32 = 0


class ExecSyncCommand(Command):
    """Run a command in a container and wait for it, up to timeout seconds (0: no limit)."""

    rpc = "ExecSync"
    result = ExecSyncResult

    container_id: RequiredId
    cmd: BoundedList[Text] = Field(min_length=1)
    timeout: Int64 = 0


class ExecResult(Result):
    """Where to connect to drive the exec session."""

    url: Text = ""


class ExecCommand(Command):
    """Prepare an interactive command in a container and return its streaming URL."""

    rpc = "Exec"
    result = ExecResult

    container_id: RequiredId
    cmd: BoundedList[Text] = Field(min_length=1)
    tty: bool = False
    stdin: bool = False
    stdout: bool = False
    stderr: bool = False

    @model_validator(mode="after")
    def _check_streams(self) -> Self:
        check_stream_flags(stdin=self.stdin, stdout=self.stdout, stderr=self.stderr, tty=self.tty)
        return self


class AttachResult(Result):
    """Where to connect to attach to the container."""

    url: Text = ""


class AttachCommand(Command):
    """Prepare an attach to a container's main process and return its streaming URL."""

    rpc = "Attach"
    result = AttachResult

    container_id: RequiredId
    stdin: bool = False
    tty: bool = False
    stdout: bool = False
    stderr: bool = False

    @model_validator(mode="after")
    def _check_streams(self) -> Self:
        check_stream_flags(stdin=self.stdin, stdout=self.stdout, stderr=self.stderr, tty=self.tty)
        return self


class PortForwardResult(Result):
    """Where to connect to forward ports."""

    url: Text = ""


class PortForwardCommand(Command):
    """Prepare port forwarding into a sandbox's network and return its streaming URL."""

    rpc = "PortForward"
    result = PortForwardResult

    pod_sandbox_id: RequiredId
    port: BoundedList[Int32] = Field(default_factory=list)
