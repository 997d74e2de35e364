"""Running a ``containerd-shim-*-v2`` binary: the ``start`` and ``delete`` actions of the shim v2 protocol.

``<binary> -namespace NS -address A -publish-binary P -id ID start`` runs in the bundle directory (the shim
reads ``config.json`` there, e.g. to group a pod's containers onto one shim by their
``io.kubernetes.cri.sandbox-id`` annotation). It forks the long-lived shim daemon, prints the daemon's ttrpc
address on stdout and exits. Older shims print the address as it is (``unix:///run/containerd/s/<hash>``);
newer ones may print a JSON bootstrap document ``{"version": 2, "address": "...", "protocol": "ttrpc"}``.
The environment carries ``TTRPC_ADDRESS`` (where the shim publishes events), ``GRPC_ADDRESS`` and
``NAMESPACE``; runtime options may be given on stdin (an encoded ``google.protobuf.Any``).

``<binary> -namespace NS -address A -publish-binary P -id ID -bundle B delete`` cleans up after a shim that
died: it force-deletes the container and prints an encoded ``DeleteResponse`` (containerd's runc shim
locates the bundle as ``dirname(cwd)/ID``, so it is run in a directory of that shape).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crirt._gen.containerd.task.v2 import DeleteResponse
from crirt.errors import CrirtError, FailedPrecondition
from crirt.proc import ProcessTimeout, input_fd, run

BOOTSTRAP_VERSIONS = (2,)
"""JSON bootstrap versions this client understands."""


class ShimFailure(CrirtError):
    """A shim binary failed; the message says which action and what it printed (answered UNKNOWN)."""


def parse_start_output(text: str) -> str:
    """The ttrpc address a shim's ``start`` printed: the legacy bare address or the JSON bootstrap form."""
    text = text.strip()
    if not text:
        raise ShimFailure("the shim's start printed no address")
    if not text.startswith("{"):
        if not text.startswith(("unix://", "/", "@")) or any(c.isspace() for c in text):
            raise ShimFailure(f"the shim's start printed no address but: {text[:300]!r}")
        return text
    try:
        bootstrap = json.loads(text)
    except ValueError as exc:
        raise ShimFailure(f"the shim's start printed unreadable JSON: {exc}: {text[:300]!r}") from None
    version, protocol, address = bootstrap.get("version"), bootstrap.get("protocol"), bootstrap.get("address")
    if version not in BOOTSTRAP_VERSIONS:
        raise ShimFailure(f"the shim speaks bootstrap version {version!r}; crirt understands {BOOTSTRAP_VERSIONS}")
    if protocol != "ttrpc":
        raise ShimFailure(f"the shim serves protocol {protocol!r}; crirt speaks only ttrpc")
    if not isinstance(address, str) or not address:
        raise ShimFailure(f"the shim's bootstrap has no address: {text[:300]!r}")
    return address


def output_text(data: bytes, limit: int = 2000) -> str:
    """What a shim printed, as one trimmed line for an error message."""
    text = " ".join(data.decode(errors="replace").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class ShimCommand:
    """How to run one shim binary: its path, containerd-style namespace and addresses, extra environment."""

    binary: Path
    namespace: str
    address: str
    """Passed as ``-address``/``GRPC_ADDRESS``; shims only hash it into their socket name."""
    events_address: str
    """``TTRPC_ADDRESS``: where the shim publishes its events."""
    publish_binary: str
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 30.0

    def argv(self, task_id: str, action: str, bundle: Path | None = None) -> list[str]:
        args = [str(self.binary), "-namespace", self.namespace, "-address", self.address,
                "-publish-binary", self.publish_binary, "-id", task_id]
        if bundle is not None:
            args += ["-bundle", str(bundle)]
        return [*args, action]

    def environ(self, cwd: Path) -> dict[str, str]:
        """The shim's environment; ``PWD`` names ``cwd`` as given (Go's getwd returns it, symlinks kept)."""
        return {**os.environ, **self.env, "TTRPC_ADDRESS": self.events_address, "GRPC_ADDRESS": self.address,
                "NAMESPACE": self.namespace, "MAX_SHIM_VERSION": str(max(BOOTSTRAP_VERSIONS)), "PWD": str(cwd)}

    async def _run(self, argv: Sequence[str], cwd: Path, stdin: bytes) -> tuple[int, bytes, bytes]:
        """Run the shim binary to completion, in a session of its own, through ``crirt.proc`` (whose ``close_fds``
        guarantees that the daemon it forks inherits none of crirt's descriptors: a daemon holding the stdout
        pipe would hang the call)."""
        fd = input_fd(stdin)
        try:
            done = await run(argv, stdin=fd, cwd=str(cwd), env=self.environ(cwd), time_limit=self.timeout,
                             new_session=True)
        except FileNotFoundError:
            raise FailedPrecondition(f"shim binary {self.binary} is not installed") from None
        except PermissionError:
            raise FailedPrecondition(f"shim binary {self.binary} is not executable") from None
        except ProcessTimeout:
            raise ShimFailure(f"{self.binary.name} {argv[-1]} did not finish within {self.timeout:g}s") from None
        finally:
            os.close(fd)
        return done.returncode, done.stdout, done.stderr

    async def start(self, task_id: str, cwd: Path, options: bytes = b"") -> str:
        """Run ``start`` in ``cwd`` (which holds the task's ``config.json``); return the daemon's address."""
        code, out, err = await self._run(self.argv(task_id, "start"), cwd, options)
        if code != 0:
            raise ShimFailure(f"{self.binary.name} start {task_id}: {output_text(err or out) or f'exit {code}'}")
        return parse_start_output(out.decode(errors="replace"))

    async def delete(self, task_id: str, bundle: Path, cwd: Path) -> DeleteResponse:
        """Run ``delete`` for a task whose shim is gone; return the exit it reports."""
        code, out, err = await self._run(self.argv(task_id, "delete", bundle), cwd, b"")
        if code != 0:
            raise ShimFailure(f"{self.binary.name} delete {task_id}: {output_text(err or out) or f'exit {code}'}")
        try:
            return DeleteResponse.parse(out)
        except Exception as exc:
            raise ShimFailure(f"{self.binary.name} delete {task_id} printed no DeleteResponse: {exc}") from None
