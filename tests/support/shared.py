"""Where the reference material (``shared/``: upstream CRI and containerd protos) is for the schema tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """``$CRIRT_SHARED_DIR``; else ``shared/`` beside this checkout (how CI lays it out); else ``shared/`` beside
    the local repository this checkout was cloned from. When none exists, the first: the tests then fail naming
    it (a missing reference never passes silently)."""
    env = os.environ.get("CRIRT_SHARED_DIR")
    if env:
        return Path(env)
    beside = REPO_ROOT.parent / "shared"
    if beside.is_dir():
        return beside
    origin = subprocess.run(["git", "-C", str(REPO_ROOT), "remote", "get-url", "origin"], capture_output=True,
                            text=True, check=False).stdout.strip()
    if origin and Path(origin).is_absolute() and (Path(origin).parent / "shared").is_dir():
        return Path(origin).parent / "shared"
    return beside
