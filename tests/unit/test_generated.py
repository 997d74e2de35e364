"""The committed bindings in crirt/_gen are exactly what `make proto` generates from protos/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load_generator():
    spec = importlib.util.spec_from_file_location("genproto", ROOT / "tools" / "genproto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in sorted(top.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def test_committed_bindings_are_fresh(tmp_path: Path) -> None:
    _load_generator().generate(tmp_path / "gen")
    fresh, committed = _files(tmp_path / "gen"), _files(ROOT / "crirt" / "_gen")
    assert sorted(fresh) == sorted(committed), "run `make proto`: the set of generated files changed"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"run `make proto`: {stale} differ from a fresh generation"
