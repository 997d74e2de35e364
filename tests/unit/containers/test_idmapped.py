"""IdmappedBinds without a pod: what is left alone, the fallback to a plain bind, and release's care."""

from __future__ import annotations

from pathlib import Path

import pytest

from crirt.containers.idmapped import IdmappedBinds

PROC = {"destination": "/proc", "type": "proc", "source": "proc", "options": []}


def test_nothing_to_map_makes_nothing(tmp_path: Path) -> None:
    binds = IdmappedBinds(tmp_path / "idmapped")
    mounts = [PROC, {"destination": "/x", "type": "bind", "source": str(tmp_path), "options": ["rbind"]}]
    assert binds.prepare("c1", mounts, ["/elsewhere"], Path("/proc/self/ns/user")) == mounts
    assert not (tmp_path / "idmapped").exists() and binds.ids() == []


def test_a_source_that_cannot_be_mapped_stays_a_plain_bind(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    binds = IdmappedBinds(tmp_path / "idmapped")
    mount = {"destination": "/vol", "type": "bind", "source": str(volume), "options": ["rbind"]}
    # the node's own user namespace cannot be an idmap (EPERM/EINVAL): the bind is kept as it was
    assert binds.prepare("c1", [PROC, mount], [str(volume)], Path("/proc/self/ns/user")) == [PROC, mount]
    assert binds.ids() == ["c1"] and list((tmp_path / "idmapped" / "c1").iterdir()) == []
    binds.release("c1")
    binds.release("c1")  # idempotent
    assert binds.ids() == [] and volume.is_dir()


def test_release_never_deletes_what_it_did_not_make(tmp_path: Path) -> None:
    binds = IdmappedBinds(tmp_path / "idmapped")
    entry = tmp_path / "idmapped" / "c1" / "0"
    entry.mkdir(parents=True)
    (entry / "data").write_text("not ours")  # a mount point that is, unexpectedly, not empty
    with pytest.raises(OSError):
        binds.release("c1")
    assert (entry / "data").read_text() == "not ours"
