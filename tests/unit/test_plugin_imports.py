"""The shim plugins under ``shims/`` use only crirt's public plugin surface: the modules below, none of their
underscore names, and no underscore attribute of the classes those modules export (neither called nor
overridden), so a change inside crirt's drivers cannot break a separately versioned plugin."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

PUBLIC_MODULES = ("crirt.shim", "crirt.shim.conmon", "crirt.shim.taskv2", "crirt.errors")
SHIMS = Path(__file__).resolve().parents[2] / "shims"


def private_members() -> set[str]:
    """Underscore (not dunder) attribute names of every class the public modules export."""
    names: set[str] = set()
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            for klass in cls.__mro__:
                if klass.__module__.startswith("crirt"):
                    names.update(n for n in vars(klass) if n.startswith("_") and not n.startswith("__"))
    return names


def violations(source: str, private: set[str]) -> list[str]:
    """What in ``source`` reaches past the public surface: imports of other crirt modules or of underscore
    names, and underscore attributes (used or defined) that crirt's public classes have."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and (node.module == "crirt"
                                                                  or node.module.startswith("crirt.")):
            if node.module not in PUBLIC_MODULES:
                found.append(f"line {node.lineno}: imports from {node.module}")
            found += [f"line {node.lineno}: imports {alias.name} from {node.module}"
                      for alias in node.names if alias.name.startswith("_")]
        elif isinstance(node, ast.Import):
            found += [f"line {node.lineno}: imports {alias.name}" for alias in node.names
                      if alias.name.split(".")[0] == "crirt" and alias.name not in PUBLIC_MODULES]
        elif isinstance(node, ast.Attribute) and node.attr in private:
            found.append(f"line {node.lineno}: uses {node.attr}")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in private:
            found.append(f"line {node.lineno}: overrides {node.name}")
    return found


def test_the_checker_finds_each_kind_of_leak() -> None:
    private = private_members()
    assert {"_spawn_conmon", "_check_new"} <= private
    source = """
from crirt.proc import run
from crirt.shim.conmon import ConmonRuntime, _kill_quietly
import crirt.store

class Leaky(ConmonRuntime):
    async def _spawn_conmon(self, files, argv):
        self._check_new(None)
        self._mine = 1
"""
    assert violations(source, private) == [
        "line 2: imports from crirt.proc", "line 3: imports _kill_quietly from crirt.shim.conmon",
        "line 4: imports crirt.store", "line 7: overrides _spawn_conmon", "line 8: uses _check_new"]


def test_shim_plugins_use_only_the_public_surface() -> None:
    private = private_members()
    sources = sorted(SHIMS.glob("*/src/**/*.py"))
    assert len({p.parts[len(SHIMS.parts)] for p in sources}) >= 3  # runc, gvisor, kata
    problems = {str(path.relative_to(SHIMS)): found for path in sources
                if (found := violations(path.read_text(), private))}
    assert problems == {}
