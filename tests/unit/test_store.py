"""The sqlite-backed store: durability across reopen, identity of unchanged records, deletes."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from crirt.errors import ResourceExhausted
from crirt.model.container import Container, ContainerMetadata
from crirt.model.sandbox import PodSandbox
from crirt.store import Store, StoreError, StoreFull


def test_records_survive_reopen_and_keep_identity_until_replaced(tmp_path: Path) -> None:
    store = Store(tmp_path / "crirt.db")
    table = store.table("containers", Container)
    table.put_many([(f"c{i}", Container(id=f"c{i}", metadata=ContainerMetadata(name=f"n{i}"))) for i in range(3)])
    first = table.get("c1")
    assert table.get("c1") is first  # same object while unchanged
    table.put("c1", first.model_copy(update={"image_ref": "sha256:1"}))
    assert table.get("c1") is not first
    assert table.delete("c2") and not table.delete("c2")
    store.close()

    reopened = Store(tmp_path / "crirt.db").table("containers", Container)
    assert sorted(reopened.ids()) == ["c0", "c1"]
    assert reopened.get("c1").image_ref == "sha256:1"
    assert "c2" not in reopened and len(reopened) == 2


def test_kinds_are_separate_and_a_kind_has_one_model(tmp_path: Path) -> None:
    store = Store(tmp_path / "crirt.db")
    store.table("containers", Container).put("x", Container(id="x"))
    assert store.table("sandboxes", PodSandbox).get("x") is None
    with pytest.raises(TypeError, match="already open with model Container"):
        store.table("containers", PodSandbox)


def test_writes_are_committed_by_flush_in_groups_off_the_caller(tmp_path: Path) -> None:
    store = Store(tmp_path / "crirt.db")
    table = store.table("containers", Container)

    async def scenario() -> None:
        for i in range(50):
            table.put(f"c{i}", Container(id=f"c{i}"))
        table.delete("c0")
        assert table.get("c1") is not None and "c0" not in table  # memory changes at once
        await store.flush()
        assert not store.dirty
        other = sqlite3.connect(tmp_path / "crirt.db")  # what another process would read now
        assert other.execute("SELECT count(*) FROM objects").fetchone()[0] == 49
        await store.flush()  # nothing queued: returns at once

    asyncio.run(scenario())
    store.close()


def test_a_failed_write_is_reported_to_the_flush_that_waited_for_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "crirt.db")
    table = store.table("containers", Container)
    table.put("ok", Container(id="ok"))
    store.sync()
    store.enqueue([("INSERT INTO missing_table VALUES (1)", ())])
    with pytest.raises(StoreError, match="missing_table"):
        store.sync()
    table.put("later", Container(id="later"))
    store.sync()  # a later write that succeeds is not blamed for the earlier failure
    store.close()
    with pytest.raises(StoreError, match="closed"):
        table.put("closed", Container(id="closed"))


def test_uses_write_ahead_logging(tmp_path: Path) -> None:
    store = Store(tmp_path / "crirt.db")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_write_refused_for_lack_of_space_is_resource_exhausted(tmp_path: Path) -> None:
    """sqlite's "database or disk is full" becomes StoreFull, which the front end answers RESOURCE_EXHAUSTED;
    any other write failure stays a plain StoreError (INTERNAL)."""
    store = Store(tmp_path / "s.db")
    try:
        store._failed = (0, 10, "writing crirt's database: database or disk is full")
        with pytest.raises(StoreFull) as caught:
            store._raise_if_failed(0, 5)
        assert isinstance(caught.value, ResourceExhausted)
        store._failed = (0, 10, "writing crirt's database: disk I/O error")
        with pytest.raises(StoreError) as other:
            store._raise_if_failed(0, 5)
        assert not isinstance(other.value, ResourceExhausted)
    finally:
        store.close()
