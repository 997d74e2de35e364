"""Checks plugins share when they validate their options."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def executable(option: str, value: Any, hint: str = "") -> Path:
    """Resolve a binary option (a program on PATH, or a path) to an absolute path; ValueError naming the
    option otherwise, with ``hint`` (what to install or set) appended."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"option {option!r} must be a non-empty string, not {value!r}")
    found = shutil.which(value)
    if found is None:
        raise ValueError(f"option {option!r}: {value!r} is not an executable file or a program on PATH"
                         + (f"; {hint}" if hint else ""))
    return Path(found).absolute()


def check_known(options: Mapping[str, Any], known: Iterable[str], plugin: str) -> None:
    """ValueError listing the options ``plugin`` does not know, and those it does."""
    names = tuple(known)
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))}; "
                         f"the {plugin} shim knows {', '.join(map(repr, names))}")


def missing_programs(*programs: str) -> str | None:
    """For ``Shim.available``: None when every program (a name on PATH, or a path) is there, else which are not."""
    missing = [program for program in programs if shutil.which(program) is None]
    return f"{', '.join(map(repr, missing))} not found on PATH" if missing else None
