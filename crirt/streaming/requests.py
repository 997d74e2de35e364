"""What a streaming URL stands for: the validated Exec, Attach or PortForward request behind its token."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExecRequest:
    """Run ``cmd`` in a container, with the streams the CRI request asked for."""

    container_id: str
    cmd: tuple[str, ...]
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool

    kind = "exec"


@dataclass(frozen=True)
class AttachRequest:
    """Attach to a container's main process."""

    container_id: str
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool

    kind = "attach"


@dataclass(frozen=True)
class PortForwardRequest:
    """Forward TCP connections into a pod's network namespace; ``ports`` empty: any port."""

    sandbox_id: str
    ports: tuple[int, ...]

    kind = "portforward"


StreamRequest = ExecRequest | AttachRequest | PortForwardRequest
