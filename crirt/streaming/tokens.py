"""Single-use, unguessable tokens that stand for a prepared streaming request until a client redeems them.

A CRI Exec/Attach/PortForward call stores its validated request under a fresh token and returns a URL naming
it; the client's upgrade request redeems the token once. Tokens expire (one minute by default, as the kubelet's
streaming server does) and only ``capacity`` may be outstanding at a time, so a caller that never connects
cannot make crirt remember an unbounded number of requests.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from crirt.errors import ResourceExhausted

T = TypeVar("T")

TOKEN_BYTES = 24
"""Random bytes per token (192 bits, URL-safe base64: 32 characters)."""


@dataclass(frozen=True)
class _Entry(Generic[T]):
    request: T
    expires: float


class TokenCache(Generic[T]):
    """Requests by token; ``issue`` stores one, ``redeem`` hands it out once, before it expires."""

    def __init__(self, ttl: float = 60.0, capacity: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self._clock = clock
        self._entries: OrderedDict[str, _Entry[T]] = OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def issue(self, request: T) -> str:
        """Store ``request`` under a new token; RESOURCE_EXHAUSTED when ``capacity`` tokens are outstanding."""
        self._expire()
        if len(self._entries) >= self.capacity:
            raise ResourceExhausted(f"too many streaming requests in flight (at most {self.capacity} unused "
                                    f"URLs, each valid for {self.ttl:g}s)")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._entries[token] = _Entry(request, self._clock() + self.ttl)
        return token

    def redeem(self, token: str) -> T | None:
        """The request stored under ``token`` and forget it; None when unknown, already used or expired."""
        self._expire()
        entry = self._entries.pop(token, None)
        return entry.request if entry is not None else None

    def _expire(self) -> None:
        """Drop expired tokens; they were issued in order with one ttl, so they sit at the front."""
        now = self._clock()
        while self._entries:
            token, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                break
            del self._entries[token]
