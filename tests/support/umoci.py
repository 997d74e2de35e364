"""An image built by Debian's umoci, so crirt is tested on layers as another tool writes them.

umoci 0.4.7's ``insert`` writes tars unlike Go's and Python's writers: the root of an inserted tree is named
``/`` and the layer ends without end-of-archive blocks; with a single file, even the last member's padding is
missing (Python's tarfile refuses that layer). The image is busybox-static in four layers:

1. ``insert`` of a tree at ``/`` (ends at a member boundary): busybox, applet symlinks, /etc basics, /etc/old;
2. ``insert`` of one file, /etc/motd (ends without padding);
3. ``insert --whiteout`` of /etc/old (one member, no end-of-archive blocks);
4. ``unpack``, a new /etc/greeting and /etc/group removed, then ``repack`` (a complete archive).

Its config runs ``/bin/busybox echo hello from umoci`` (Entrypoint ``/bin/busybox``, Cmd ``echo ...``).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

from support.images import BUSYBOX, Layout

TAG = "busybox"
MOTD = b"inserted alone by umoci\n"
GREETING = b"repacked by umoci\n"
OUTPUT = "hello from umoci\n"
"""What a container started with the image's own Entrypoint and Cmd prints."""


def _umoci(*args: str | Path) -> None:
    result = subprocess.run(["umoci", *map(str, args)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"umoci {args[0]} failed: {result.stderr}"


def _tree(root: Path) -> None:
    """The first layer's files: a runnable busybox and /etc/old, which the third layer removes."""
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    for applet in ("sh", "cat", "echo", "ls"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/old").write_text("removed by a whiteout\n")


def build(work: Path) -> Layout:
    """Build the image in an OCI layout under ``work`` (tag ``TAG``); returns that layout."""
    image = f"{work / 'layout'}:{TAG}"
    _umoci("init", "--layout", work / "layout")
    _umoci("new", "--image", image)
    _tree(work / "tree")
    _umoci("insert", "--image", image, work / "tree", "/")
    (work / "motd").write_bytes(MOTD)
    _umoci("insert", "--image", image, work / "motd", "/etc/motd")
    _umoci("insert", "--image", image, "--whiteout", "/etc/old")
    bundle = work / "bundle"
    _umoci("unpack", "--image", image, bundle)
    (bundle / "rootfs/etc/greeting").write_bytes(GREETING)
    (bundle / "rootfs/etc/group").unlink()
    _umoci("repack", "--image", image, bundle)
    _umoci("config", "--image", image, "--config.entrypoint", "/bin/busybox", "--config.cmd", "echo",
           "--config.cmd", "hello", "--config.cmd", "from", "--config.cmd", "umoci", "--config.env", "PATH=/bin")
    shutil.rmtree(bundle)
    return Layout(work / "layout")


def layer_tars(layout: Layout) -> list[bytes]:
    """The image's layers, uncompressed, bottom first."""
    index = json.loads((layout.path / "index.json").read_text())
    [descriptor] = [m for m in index["manifests"]
                    if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == TAG]
    manifest = json.loads(layout.read(descriptor["digest"]))
    return [gzip.decompress(layout.read(layer["digest"])) for layer in manifest["layers"]]
