"""The wire under ``crirt ctl exec/attach/port-forward``: one interface, a SPDY and a WebSocket implementation.

A Transport opens exec/attach Sessions and port-forward Tunnels at a streaming URL. The commands in
crirt.ctl.streaming drive them with local stdio and sockets and never see frames or messages; the protocols live
in crirt.ctl.transport_spdy and crirt.ctl.transport_ws.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import ClassVar

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
"""Exec/attach channels, numbered as the WebSocket protocol numbers them (SPDY names them in ``streamtype``)."""
DATA = 0
"""A tunnel's forwarded bytes; its error text arrives on ERROR."""
READ_SIZE = 64 * 1024


class TransportError(Exception):
    """The streaming server could not be reached, refused the session, or broke off; the message says which."""


class Session(ABC):
    """One exec/attach session: stdin and terminal sizes go in, output and the final status come out."""

    @abstractmethod
    async def send_stdin(self, data: bytes) -> None:
        """Write bytes to the remote process's stdin."""

    @abstractmethod
    async def close_stdin(self) -> None:
        """Signal end of stdin, where the protocol can say it (WebSocket v4 cannot)."""

    @abstractmethod
    async def resize(self, width: int, height: int) -> None:
        """Tell the remote terminal its new size (only for a session opened with a tty)."""

    @abstractmethod
    def output(self) -> AsyncIterator[tuple[int, bytes]]:
        """(STDOUT, STDERR or ERROR, bytes) as they arrive, until the server ends the session."""


class Tunnel(ABC):
    """One forwarded TCP connection to a port in a pod."""

    @abstractmethod
    async def send(self, data: bytes) -> None:
        """Write bytes to the pod's end of the connection."""

    @abstractmethod
    async def close_send(self) -> None:
        """Our side has nothing more to send (a half-close where the protocol has one)."""

    @abstractmethod
    def received(self) -> AsyncIterator[tuple[int, bytes]]:
        """(DATA or ERROR, bytes) as they arrive, until the connection ends."""


class Transport(ABC):
    """A streaming protocol a CRI streaming server speaks (``--transport``)."""

    name: ClassVar[str]

    @abstractmethod
    def session(self, url: str, *, stdin: bool, tty: bool) -> AbstractAsyncContextManager[Session]:
        """Connect an exec/attach session at ``url``; stdout is always wanted, stderr unless ``tty`` (as crirt ctl
        asks the CRI for). Raises TransportError if the server cannot be reached or refuses."""

    @abstractmethod
    def tunnel(self, url: str, port: int) -> AbstractAsyncContextManager[Tunnel]:
        """Connect one port-forward connection to ``port`` at ``url``; TransportError as for session()."""
