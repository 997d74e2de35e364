"""Test set-up for pods with a user namespace."""

from __future__ import annotations

import tempfile
from pathlib import Path


def searchable_tmpdir(prefix: str) -> Path:
    """A new directory under /var/tmp that others may search (0711); the caller removes it.

    runc, as the root of a pod's user namespace, must pass through every directory above the pod's files and
    rootfs. pytest's temporary tree cannot hold them: every pytest session, anyone's, makes its root 0700 again."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    path.chmod(0o711)
    return path
