"""Durable object store: pydantic records by kind and id in sqlite (WAL), mirrored in memory.

Reads come from memory and return the very same object until it is replaced, so callers may cache
anything derived from a record (such as its encoded bytes) keyed by identity.

Writes change the memory copy at once and are queued for one writer thread, which commits whatever has queued
up in a single transaction (group commit: one fsync for many writes, and none on the event loop). A write is
durable once ``flush()`` returns: the bus flushes before every RPC answers and services flush before they
publish an event, so what a caller saw reported is on disk. A crash before that loses only writes nobody was
told about.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from crirt.errors import ResourceExhausted

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

_PUT = "INSERT OR REPLACE INTO objects (kind, id, data) VALUES (?, ?, ?)"
_DELETE = "DELETE FROM objects WHERE kind = ? AND id = ?"


class StoreError(Exception):
    """The database could not be written; the message says why (an unexpected failure: INTERNAL)."""


class StoreFull(StoreError, ResourceExhausted):
    """The database could not be written because its file system is full (RESOURCE_EXHAUSTED)."""


class Table(Generic[M]):
    """All records of one kind, e.g. containers."""

    def __init__(self, store: Store, kind: str, model: type[M]) -> None:
        self._store = store
        self.kind = kind
        self.model = model
        rows = store.select(kind)
        self._items: dict[str, M] = {row[0]: model.model_validate_json(row[1]) for row in rows}

    def get(self, obj_id: str) -> M | None:
        return self._items.get(obj_id)

    def __contains__(self, obj_id: str) -> bool:
        return obj_id in self._items

    def __iter__(self) -> Iterator[M]:
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)

    def ids(self) -> list[str]:
        return list(self._items)

    def put(self, obj_id: str, obj: M) -> None:
        """Insert or replace one record (durable at the next ``Store.flush``)."""
        self.put_many([(obj_id, obj)])

    def put_many(self, items: list[tuple[str, M]]) -> None:
        """Insert or replace several records, committed together."""
        self._store.enqueue([(_PUT, (self.kind, obj_id, obj.model_dump_json())) for obj_id, obj in items])
        for obj_id, obj in items:
            self._items[obj_id] = obj

    def delete(self, obj_id: str) -> bool:
        """Remove a record; False when there was none."""
        self._store.enqueue([(_DELETE, (self.kind, obj_id))])
        return self._items.pop(obj_id, None) is not None


class Store:
    """The sqlite database under crirt's root dir, the tables opened on it, and its writer thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS objects (kind TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL, "
            "PRIMARY KEY (kind, id))"
        )
        self._db.commit()
        self._db_lock = threading.Lock()  # the writer thread and table loads share the connection
        self._tables: dict[str, Table[BaseModel]] = {}
        self._changed = threading.Condition()
        self._pending: list[tuple[str, tuple[Any, ...]]] = []
        self._queued = 0
        """Writes queued so far (a sequence number); guarded by ``_changed``."""
        self._committed = 0
        self._failed: tuple[int, int, str] | None = None
        """(first sequence - 1, last sequence, message) of the last batch that could not be written."""
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name="crirt-store", daemon=True)
        self._writer.start()

    def table(self, kind: str, model: type[M]) -> Table[M]:
        """The table of ``kind``, loaded on first use."""
        if kind not in self._tables:
            self._tables[kind] = Table(self, kind, model)  # type: ignore[assignment]
        table = self._tables[kind]
        if table.model is not model:
            raise TypeError(f"table {kind!r} is already open with model {table.model.__name__}")
        return table  # type: ignore[return-value]

    def select(self, kind: str) -> list[tuple[str, str]]:
        """(id, JSON) of every stored record of ``kind``."""
        with self._db_lock:
            return self._db.execute("SELECT id, data FROM objects WHERE kind = ?", (kind,)).fetchall()

    def enqueue(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Queue statements for the writer; they are committed in order, in one transaction or with later ones."""
        with self._changed:
            if self._closing:
                raise StoreError("the store is closed")
            self._pending += statements
            self._queued += 1
            self._changed.notify_all()

    @property
    def dirty(self) -> bool:
        """Whether writes are queued that are not committed yet."""
        with self._changed:
            return self._committed < self._queued

    async def flush(self) -> None:
        """Return once every write queued before the call is committed; StoreError if one could not be."""
        loop = asyncio.get_running_loop()
        with self._changed:
            since, target = self._committed, self._queued
            if self._committed < target:
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.append((target, loop, future))
            else:
                future = None
        if future is not None:
            await asyncio.shield(future)
        self._raise_if_failed(since, target)

    def sync(self) -> None:
        """``flush`` for code without an event loop: block until what is queued now is committed."""
        with self._changed:
            since, target = self._committed, self._queued
            self._changed.wait_for(lambda: self._committed >= target)
        self._raise_if_failed(since, target)

    def _raise_if_failed(self, since: int, target: int) -> None:
        """StoreError if a batch holding writes between sequence ``since`` and ``target`` failed."""
        failed = self._failed
        if failed is not None and failed[0] < target and failed[1] > since:
            full = "disk is full" in failed[2] or "No space left" in failed[2]
            raise (StoreFull if full else StoreError)(failed[2])

    def _write_loop(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending or self._closing)
                if not self._pending and self._closing:
                    return
                batch, self._pending = self._pending, []
                start, target = self._committed, self._queued
            failure = None
            try:
                with self._db_lock, self._db:
                    for sql, params in batch:
                        self._db.execute(sql, params)
            except sqlite3.Error as exc:
                failure = f"writing crirt's database {self.path}: {exc}"
                log.error("%s (%d statements lost)", failure, len(batch))
            with self._changed:
                self._committed = target
                if failure is not None:
                    self._failed = (start, target, failure)
                ready = [w for w in self._waiters if w[0] <= target]
                self._waiters = [w for w in self._waiters if w[0] > target]
                self._changed.notify_all()
            for _, loop, future in ready:
                if not loop.is_closed():
                    loop.call_soon_threadsafe(_settle, future)

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the database."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._writer.join()
        self._db.close()


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
