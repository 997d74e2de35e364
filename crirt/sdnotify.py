"""systemd's readiness protocol (sd_notify) for a ``Type=notify`` unit: one datagram per state change.

systemd passes the address of its notification socket in ``NOTIFY_SOCKET`` (a path, or ``@name`` for a socket
in the abstract namespace). crirt takes the variable out of its environment at startup, so the runtimes, conmon
and shims it starts never see it and never talk to systemd as if they were crirt.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger(__name__)

ENVIRONMENT = "NOTIFY_SOCKET"
SEND_TIMEOUT = 5.0
"""Seconds one notification may wait for room in the receiver's queue before it is given up."""


class Notifier:
    """Sends state changes (``READY=1``, ``STOPPING=1``, ``STATUS=...``) to systemd, or nothing when crirt
    was not started by a ``Type=notify`` unit."""

    def __init__(self, address: str | None) -> None:
        if address is not None and not address.startswith(("/", "@")):
            log.warning("ignoring %s=%r: crirt can notify a unix socket path or an @abstract name only",
                        ENVIRONMENT, address)
            address = None
        self.address = address

    @classmethod
    def from_environment(cls) -> Notifier:
        """The notifier for ``$NOTIFY_SOCKET``, which is removed from this process's environment."""
        return cls(os.environ.pop(ENVIRONMENT, None) or None)

    async def send(self, *assignments: str) -> None:
        """Send ``assignments`` (``"READY=1"``, ...) as one message; a failure is logged, not raised, as systemd
        acts on a missing READY itself (the unit's start times out)."""
        if self.address is None:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            await asyncio.to_thread(_send, target, "\n".join(assignments).encode())
        except OSError as exc:
            log.warning("cannot notify systemd at %s of %s: %s", self.address, ", ".join(assignments),
                        exc.strerror or exc)



def _send(target: str, message: bytes) -> None:
    """One datagram to the unix socket ``target`` (a leading NUL names an abstract socket)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(SEND_TIMEOUT)
        sock.sendto(message, target)
