"""The in-process command bus: one handler per command type, keyed serialization, events.

Commands that share a lock key (the same pod, container or image) run one after another in arrival order;
all others run concurrently. A key is ``kind:id``; the owner of a kind (the container service for
``container``) tells the bus how to turn the id a caller wrote (crictl's short ids) into the full id, so every
lock is on one object whatever the caller wrote, and work done outside a command (a background task) takes the
same locks through ``hold``: the bus's locks are crirt's only locks on pods and containers. Events go to
subscribers through bounded queues: a subscriber that falls behind is dropped (with a log line) rather than
ever blocking a handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from crirt.commands.base import Command, Result
from crirt.model.base import Model

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Command)
Handler = Callable[[Any], Awaitable[Result] | AsyncIterator[Result]]
"""A unary handler is ``async def h(cmd) -> Result``; a streaming one is ``async def h(cmd)`` yielding results."""

CallNext = Callable[[Command], Awaitable[Any]]
Middleware = Callable[[Command, CallNext], Awaitable[Any]]
"""Wraps every unary dispatch: ``await mw(cmd, call_next)``; must return what ``call_next(cmd)`` returns."""


class BusError(Exception):
    """Misuse of the bus (a command type with no handler, or two handlers for one type)."""


class SubscriberDropped(Exception):
    """Raised from a subscription whose queue overflowed because its reader fell behind."""


class _KeyedLocks:
    """One FIFO lock per key, created on demand and forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, keys: tuple[str, ...]) -> AsyncIterator[None]:
        ordered = sorted(set(keys))  # a global order: two multi-key commands can never deadlock
        for key in ordered:
            self._users[key] = self._users.get(key, 0) + 1
            self._locks.setdefault(key, asyncio.Lock())
        acquired: list[str] = []
        try:
            for key in ordered:
                await self._locks[key].acquire()
                acquired.append(key)
            yield
        finally:
            for key in acquired:
                self._locks[key].release()
            for key in ordered:
                self._users[key] -= 1
                if not self._users[key]:
                    del self._users[key], self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)


@dataclass(eq=False)
class Subscription:
    """A bounded queue of events for one reader; iterate it to receive events in publish order."""

    bus: Bus
    queue: asyncio.Queue[Model | None]
    name: str
    dropped: bool = False

    def __aiter__(self) -> AsyncIterator[Model]:
        return self._events()

    async def _events(self) -> AsyncIterator[Model]:
        try:
            while True:
                event = await self.queue.get()
                if event is None:
                    raise SubscriberDropped(f"event subscriber {self.name!r} fell more than "
                                            f"{self.queue.maxsize} events behind and was dropped")
                yield event
        finally:
            self.close()

    def close(self) -> None:
        self.bus._subscribers.discard(self)


@dataclass
class Bus:
    """Dispatches commands to their handlers and fans events out to subscribers."""

    subscriber_queue_size: int = 1000
    middleware: list[Middleware] = field(default_factory=list)
    _handlers: dict[type[Command], Handler] = field(default_factory=dict)
    _locks: _KeyedLocks = field(default_factory=_KeyedLocks)
    _subscribers: set[Subscription] = field(default_factory=set)
    _resolvers: dict[str, Callable[[str], str]] = field(default_factory=dict)
    _running: set[asyncio.Task[Any]] = field(default_factory=set)

    def resolve_ids(self, kind: str, resolve: Callable[[str], str]) -> None:
        """Let ``resolve`` map the ids in ``kind:id`` lock keys to full ids (an id it does not know: as given)."""
        self._resolvers[kind] = resolve

    def _full_key(self, key: str) -> str:
        kind, sep, wanted = key.partition(":")
        resolve = self._resolvers.get(kind)
        if not sep or resolve is None:
            return key
        try:
            return f"{kind}:{resolve(wanted)}"
        except Exception:  # an ambiguous prefix: the handler reports it
            return key

    def _finished(self, work: asyncio.Task[Any]) -> None:
        """Forget a run-to-completion handler; its failure is logged if its caller had gone."""
        self._running.discard(work)
        if not work.cancelled() and work.exception() is not None:
            log.debug("a handler whose caller had gone failed: %s", work.exception())

    async def finish(self, wait: float) -> None:
        """Give run-to-completion handlers whose callers have gone up to ``wait`` seconds (at shutdown)."""
        pending = [work for work in self._running if not work.done()]
        if pending:
            log.info("waiting up to %.0fs for %d teardown(s) to finish", wait, len(pending))
            await asyncio.wait(pending, timeout=wait)

    def hold(self, *keys: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The locks of ``keys`` (full ids), for work outside a command; never from a handler on its own keys."""
        return self._locks.hold(keys)

    def register(self, command_type: type[C], handler: Handler) -> None:
        """Make ``handler`` the one handler of ``command_type``."""
        if command_type in self._handlers:
            raise BusError(f"{command_type.__name__} already has a handler")
        self._handlers[command_type] = handler

    def handles(self, command_type: type[Command]) -> bool:
        return command_type in self._handlers

    def _handler_for(self, command: Command) -> Handler:
        try:
            return self._handlers[type(command)]
        except KeyError:
            raise BusError(f"no handler registered for {type(command).__name__}") from None

    async def dispatch(self, command: Command) -> Any:
        """Run a unary command through the middleware chain and its handler, under its lock keys."""
        handler = self._handler_for(command)

        async def locked(cmd: Command) -> Any:
            async with self._locks.hold(tuple(self._full_key(k) for k in cmd.lock_keys())):
                return await handler(cmd)  # type: ignore[misc]

        async def run(cmd: Command) -> Any:
            if not cmd.run_to_completion:
                return await locked(cmd)
            work = asyncio.ensure_future(locked(cmd))
            self._running.add(work)
            work.add_done_callback(self._finished)
            return await asyncio.shield(work)

        call: CallNext = run
        for mw in reversed(self.middleware):
            call = _bind(mw, call)
        return await call(command)

    def stream(self, command: Command) -> AsyncIterator[Result]:
        """Start a streaming command; its handler yields results. Streams take no locks."""
        return self._handler_for(command)(command)  # type: ignore[return-value]

    def subscribe(self, name: str) -> Subscription:
        """A new subscription that receives every event published from now on."""
        sub = Subscription(self, asyncio.Queue(self.subscriber_queue_size), name)
        self._subscribers.add(sub)
        return sub

    def publish(self, event: Model) -> None:
        """Hand an event to every subscriber without waiting; drop subscribers whose queue is full."""
        for sub in list(self._subscribers):
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("dropping event subscriber %r: %d events behind", sub.name, sub.queue.qsize())
                self._subscribers.discard(sub)
                sub.dropped = True
                _ = sub.queue.get_nowait()  # make room for the end-of-stream marker
                sub.queue.put_nowait(None)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)


def _bind(mw: Middleware, call_next: CallNext) -> CallNext:
    async def call(cmd: Command) -> Any:
        return await mw(cmd, call_next)

    return call


async def logging_middleware(command: Command, call_next: CallNext) -> Any:
    """Logs each command at debug level with its duration, and failures at info level."""
    start = time.perf_counter()
    try:
        result = await call_next(command)
    except Exception as exc:
        log.info("%s failed after %.1f ms: %s", command.rpc, (time.perf_counter() - start) * 1e3, exc)
        raise
    log.debug("%s done in %.1f ms", command.rpc, (time.perf_counter() - start) * 1e3)
    return result


class Flushable(Protocol):
    async def flush(self) -> None: ...


def durable(store: Flushable) -> Middleware:
    """Answers no command before every write it made is on disk (the store commits writes in groups, off the
    loop); also when the command failed, since undoing it wrote too."""

    async def flush_after(command: Command, call_next: CallNext) -> Any:
        try:
            return await call_next(command)
        finally:
            await store.flush()

    return flush_after
