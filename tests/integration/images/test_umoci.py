"""An image that Debian's umoci built (``support.umoci``): it pulls, its layers unpack as umoci meant, and its
root filesystem runs busybox."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from support.images import Layout, StartDaemon, push
from support.registry import Registry
from support.umoci import GREETING, MOTD, OUTPUT, TAG, build, layer_tars

from crirt.images.snapshots import SnapshotStore

END_BLOCKS = bytes(1024)


@pytest.fixture(scope="module")
def umoci_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Layout]:
    layout = build(tmp_path_factory.mktemp("umoci"))
    reference = f"{registry.host}/umoci/busybox:1"
    push(layout, TAG, reference)
    return reference, layout


def test_umoci_writes_the_layers_this_test_is_about(umoci_image: tuple[str, Layout]) -> None:
    tree, single, whiteout, repacked = layer_tars(umoci_image[1])
    assert tree[:2] == b"/\0" and not tree.endswith(END_BLOCKS)  # root named "/", no end-of-archive blocks
    assert len(single) % 512 != 0  # the only member's padding is missing
    assert len(whiteout) == 512 and repacked.endswith(END_BLOCKS)


def test_pull_and_unpack(crirt_daemon: StartDaemon, connect, umoci_image: tuple[str, Layout]) -> None:
    reference, layout = umoci_image
    client = connect(crirt_daemon())
    image_id = client.pull(reference)
    manifest = json.loads(layout.read(json.loads((layout.path / "index.json").read_text())["manifests"][0]["digest"]))
    assert image_id == manifest["config"]["digest"]
    config = json.loads(client.status(image_id, verbose=True).info["info"])["imageSpec"]["config"]
    assert (config["Entrypoint"], config["Cmd"]) == (["/bin/busybox"], ["echo", "hello", "from", "umoci"])

    tree, single, whiteout, repacked = client.snapshot_dirs(image_id)
    assert os.readlink(tree / "bin/sh") == "busybox" and (tree / "etc/old").is_file()
    assert stat.S_IMODE(os.lstat(tree / "tmp").st_mode) == 0o1777
    assert (single / "etc/motd").read_bytes() == MOTD
    old = os.lstat(whiteout / "etc/old")
    assert stat.S_ISCHR(old.st_mode) and old.st_rdev == 0
    assert (repacked / "etc/greeting").read_bytes() == GREETING
    assert stat.S_ISCHR(os.lstat(repacked / "etc/group").st_mode)  # repack's whiteout


def test_its_root_filesystem_runs_busybox(crirt_daemon: StartDaemon, connect,
                                          umoci_image: tuple[str, Layout]) -> None:
    daemon = crirt_daemon()
    client = connect(daemon)
    layers = client.snapshot_dirs(client.pull(umoci_image[0]))
    store = SnapshotStore(daemon.root / "images" / "snapshots", daemon.root / "rootfs")
    merged = asyncio.run(store.prepare_rootfs("umoci", [f"sha256:{p.name}" for p in layers]))
    try:
        run = subprocess.run(["chroot", str(merged), "/bin/busybox", "echo", "hello", "from", "umoci"],
                             capture_output=True, text=True, timeout=30)
        assert (run.returncode, run.stdout) == (0, OUTPUT), run.stderr
        run = subprocess.run(["chroot", str(merged), "/bin/sh", "-c", "cat /etc/motd /etc/greeting; ls /etc"],
                             capture_output=True, text=True, timeout=30)
        assert run.stdout == (MOTD + GREETING).decode() + "greeting\nmotd\npasswd\n", run.stderr
    finally:
        asyncio.run(store.remove_rootfs("umoci"))
    assert not Path(merged).exists() or not os.path.ismount(merged)
