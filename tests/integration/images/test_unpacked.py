"""What a pull leaves on disk: one overlay-ready directory per layer, and root filesystems made from them."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from pathlib import Path

from support.images import ESCAPE, MTIME, Catalog, StartDaemon

from crirt.images.snapshots import SnapshotStore


def test_layers_keep_metadata_and_become_overlay_layers(crirt_daemon: StartDaemon, connect, catalog: Catalog) -> None:
    client = connect(crirt_daemon())
    client.pull(catalog["multi"])
    base, second, third = client.snapshot_dirs(catalog["multi"])

    busybox = os.lstat(base / "bin/busybox")
    assert stat.S_IMODE(busybox.st_mode) == 0o755 and busybox.st_size == Path("/bin/busybox").stat().st_size
    assert os.lstat(base / "bin/hard").st_ino == busybox.st_ino and busybox.st_nlink == 2
    assert os.readlink(base / "bin/sh") == "busybox"
    suid = os.lstat(base / "bin/suid")
    assert (stat.S_IMODE(suid.st_mode), suid.st_uid, suid.st_gid) == (0o4755, 1000, 1000)
    assert suid.st_mtime == MTIME and os.getxattr(base / "bin/suid", "user.crirt") == b"yes"
    null = os.lstat(base / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    assert stat.S_ISFIFO(os.lstat(base / "run/fifo").st_mode)
    assert stat.S_IMODE(os.lstat(base / "tmp").st_mode) == 0o1777

    whiteout = os.lstat(second / "var/old")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(second / "etc/conf.d", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(second / "etc/conf.d")) == ["c"]
    assert os.getxattr(second / "opt/gone", "trusted.overlay.opaque") == b"y"  # deleted, then made again
    assert not any(name.startswith(".wh.") for _, dirs, files in os.walk(second) for name in dirs + files)

    app = os.lstat(third / "app")
    assert (stat.S_IMODE(app.st_mode), app.st_uid, app.st_gid) == (0o750, 1000, 1000)
    hello = os.lstat(third / "app/hello")
    assert stat.S_IMODE(hello.st_mode) == 0o640 and hello.st_mtime == MTIME + 1


def test_rootfs_api_and_removing_an_image_in_use(crirt_daemon: StartDaemon, connect, catalog: Catalog) -> None:
    daemon = crirt_daemon(name="same")
    client = connect(daemon)
    image_id = client.pull(catalog["multi"])
    layers = client.snapshot_dirs(image_id)
    chain_ids = [f"sha256:{p.name}" for p in layers]
    # A container's rootfs made beside the running daemon (a restart would remove it: no container owns it).
    store = SnapshotStore(daemon.root / "images" / "snapshots", daemon.root / "rootfs")
    merged = asyncio.run(store.prepare_rootfs("c1", chain_ids))
    try:
        assert sorted(os.listdir(merged / "etc/conf.d")) == ["c"]  # the opaque directory hides layer 1's files
        assert not (merged / "var/old").exists() and (merged / "var/keep").read_text() == "keep\n"
        assert sorted(os.listdir(merged / "opt/gone")) == ["new"]
        assert (merged / "app/hello").read_text() == "hello from layer 3\n"
        run = subprocess.run(["chroot", str(merged), "/bin/sh", "-c", "echo hi; cat /etc/motd; id -u"],
                             capture_output=True, text=True, timeout=30)
        assert run.stdout == "hi\nhello\n0\n", run.stderr
        before = store.rootfs_usage("c1")
        (merged / "written").write_bytes(b"x" * 100_000)
        after = store.rootfs_usage("c1")
        assert after[0] >= before[0] + 100_000 and after[1] == before[1] + 1
        assert not (layers[0] / "written").exists()  # writes go to the container's own upper dir

        client.remove(image_id)  # allowed while a container uses it, as in containerd
        assert client.images() == [] and all(p.is_dir() for p in layers)  # the rootfs keeps its layers
        assert not list((daemon.root / "images/content/blobs/sha256").iterdir())
        assert client.daemon.stop() == 0
    finally:
        asyncio.run(store.remove_rootfs("c1"))
    assert not (daemon.root / "rootfs" / "c1").exists() and not os.path.ismount(merged)
    crirt_daemon(name="same")  # the start-up collection finds the layers unused now
    assert not any(p.exists() for p in layers)


def test_absolute_names_land_inside_the_layer(crirt_daemon: StartDaemon, connect, catalog: Catalog) -> None:
    client = connect(crirt_daemon())
    client.pull(catalog["absolute"])
    _, layer = client.snapshot_dirs(catalog["absolute"])
    inside = layer / ESCAPE.lstrip("/")
    assert inside.read_bytes() == b"inside\n" and os.lstat(layer / "tmp/hard").st_ino == os.lstat(inside).st_ino
    assert stat.S_IMODE(os.lstat(layer).st_mode) == 0o755  # the "/" entry (0700) is skipped, as in containerd
    assert not os.path.lexists(ESCAPE)
