"""Durable object store: pydantic records by kind and id in sqlite (WAL), mirrored in memory.

Reads come from memory and return the very same object until it is replaced, so callers may cache
anything derived from a record (such as its encoded bytes) keyed by identity. Writes go to sqlite first
and are committed before the in-memory copy changes: what a caller saw reported is on disk.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


class Table(Generic[M]):
    """All records of one kind, e.g. containers."""

    def __init__(self, db: sqlite3.Connection, kind: str, model: type[M]) -> None:
        self._db = db
        self.kind = kind
        self.model = model
        rows = db.execute("SELECT id, data FROM objects WHERE kind = ?", (kind,)).fetchall()
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
        """Insert or replace one record durably."""
        self.put_many([(obj_id, obj)])

    def put_many(self, items: list[tuple[str, M]]) -> None:
        """Insert or replace several records in one transaction."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO objects (kind, id, data) VALUES (?, ?, ?)",
                [(self.kind, obj_id, obj.model_dump_json()) for obj_id, obj in items],
            )
        for obj_id, obj in items:
            self._items[obj_id] = obj

    def delete(self, obj_id: str) -> bool:
        """Remove a record; False when there was none."""
        with self._db:
            self._db.execute("DELETE FROM objects WHERE kind = ? AND id = ?", (self.kind, obj_id))
        return self._items.pop(obj_id, None) is not None


class Store:
    """The sqlite database under crirt's root dir and the tables opened on it."""

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
        self._tables: dict[str, Table[BaseModel]] = {}

    def table(self, kind: str, model: type[M]) -> Table[M]:
        """The table of ``kind``, loaded on first use."""
        if kind not in self._tables:
            self._tables[kind] = Table(self._db, kind, model)  # type: ignore[assignment]
        table = self._tables[kind]
        if table.model is not model:
            raise TypeError(f"table {kind!r} is already open with model {table.model.__name__}")
        return table  # type: ignore[return-value]

    def close(self) -> None:
        self._db.close()
