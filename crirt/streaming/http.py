"""The HTTP/1.1 part of the streaming server: read and check one request head, answer errors.

Every streaming request is an upgrade (SPDY/3.1 or WebSocket), so a connection carries one request head and
then either a protocol switch or an error response followed by close. h11 checks the head's syntax; the head
is read with ``readuntil`` so bytes the client sent after it (frames sent without waiting for the 101) stay in
the reader for the upgraded protocol.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import h11

HEAD_LIMIT = 16 * 1024
"""Largest request head accepted, in bytes."""


class HttpError(Exception):
    """Answer the request with ``status`` and ``message`` (plain text), then close the connection."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


@dataclass(frozen=True)
class Head:
    """A parsed request head: method, path, query and headers (names lower-cased, in order)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: tuple[tuple[str, str], ...]

    def all(self, name: str) -> list[str]:
        """Every value of header ``name`` (lower-case), in order."""
        return [value for key, value in self.headers if key == name]

    def get(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def tokens(self, name: str) -> set[str]:
        """The comma-separated tokens of every ``name`` header, lower-cased (``Connection: keep-alive, Upgrade``)."""
        return {t.strip().lower() for value in self.all(name) for t in value.split(",") if t.strip()}


def parse_head(data: bytes) -> Head:
    """Parse one request head (ending in a blank line); HttpError 400 naming what is wrong."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise HttpError(400, f"malformed request: {exc}") from None
    if not isinstance(event, h11.Request):
        raise HttpError(400, "malformed request: incomplete request head")
    try:
        target = event.target.decode("ascii")
        headers = tuple((k.decode("ascii").lower(), v.decode("latin-1")) for k, v in event.headers)
    except UnicodeDecodeError:
        raise HttpError(400, "malformed request: non-ASCII request target or header name") from None
    parts = urlsplit(target)
    return Head(event.method.decode("ascii"), parts.path, parse_qs(parts.query), headers)


async def read_head(reader: asyncio.StreamReader) -> Head | None:
    """Read and parse the next request head; None when the client closed before sending one."""
    try:
        data = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise HttpError(400, "malformed request: the connection ended inside the request head") from None
    except asyncio.LimitOverrunError:
        raise HttpError(431, f"request head over {HEAD_LIMIT} bytes") from None
    if len(data) > HEAD_LIMIT:
        raise HttpError(431, f"request head over {HEAD_LIMIT} bytes")
    return parse_head(data)


def error_response(error: HttpError) -> bytes:
    """The bytes of a plain-text error response that closes the connection."""
    body = (error.message + "\n").encode()
    reason = HTTPStatus(error.status).phrase if error.status in HTTPStatus._value2member_map_ else "Error"
    lines = [f"HTTP/1.1 {error.status} {reason}", "Content-Type: text/plain; charset=utf-8",
             f"Content-Length: {len(body)}", "Connection: close",
             *(f"{name}: {value}" for name, value in error.headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
