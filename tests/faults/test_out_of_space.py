"""The root dir out of space: the daemon's ``root`` is a 64 MiB tmpfs, and the image pulled has a 72 MiB layer.
The pull must fail with RESOURCE_EXHAUSTED naming the lack of space and give back every byte it wrote, the daemon
must keep serving (and pulling what fits), and the image store must stay readable after a restart."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from support.daemon import Daemon, start_daemon
from support.images import Client, LayerTar, Layout, busybox_layer, push, unmount_under
from support.network import BridgeNetwork, PodEnv
from support.registry import start_registry

from .conftest import traces

MIB = 1024 * 1024


@pytest.fixture
def small_root(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs mounted where the daemon under ``tmp_path / "d"`` keeps its root; unmounted afterwards."""
    root = tmp_path / "d" / "root"
    root.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(root)], check=True)
    try:
        yield root
    finally:
        unmount_under(tmp_path)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bfree * stats.f_frsize


def client(daemon: Daemon, pb: ModuleType, channel: grpc.Channel) -> Client:
    """The image client of a daemon on an open channel."""
    return Client(daemon, pb, pb.grpc.ImageServiceStub(channel))


def test_a_pull_beyond_the_free_space_is_resource_exhausted_and_the_store_survives(
        tmp_path: Path, pb: ModuleType, small_root: Path) -> None:
    registry = start_registry(tmp_path / "registry")
    daemon: Daemon | None = None
    try:
        layout = Layout(tmp_path / "layout")
        layout.tag(layout.image([(busybox_layer().bytes(), "gzip")]), "small")
        layout.tag(layout.image([(LayerTar().file("noise", os.urandom(72 * MIB)).bytes(), "none")]), "big")
        small, big = f"{registry.host}/library/busybox:small", f"{registry.host}/big/noise:1"
        push(layout, "small", small)
        push(layout, "big", big)
        daemon = start_daemon(tmp_path / "d", registries="")
        with daemon.channel() as channel:
            images = client(daemon, pb, channel)
            small_id = images.pull(small)
            free = free_bytes(small_root)
            error = images.pull_error(big)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
            assert "no space left on device" in error.details()
            assert free_bytes(small_root) >= free - MIB  # every byte of the failed pull was given back
            runtime = pb.grpc.RuntimeServiceStub(channel)
            assert runtime.Version(pb.VersionRequest(), timeout=5).runtime_name == "crirt"
            assert [i.id for i in images.images()] == [small_id]
            assert not list((small_root / "images" / "content" / "ingest").iterdir())
            images.remove(small)
            assert images.pull(small) == small_id  # what fits is still pulled
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
        daemon = start_daemon(tmp_path / "d", registries="")
        with daemon.channel() as channel:
            images = client(daemon, pb, channel)
            assert [i.id for i in images.images()] == [small_id]
            assert images.status(small).image.id == small_id
            assert images.snapshot_dirs(small) and all(d.is_dir() for d in images.snapshot_dirs(small))
    finally:
        if daemon is not None:
            daemon.stop()
        registry.stop()


def fill(directory: Path) -> Path:
    """Write zeros into ``directory/filler`` until its file system is full; returns the filler."""
    filler = directory / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(bytes(MIB))
            out.flush()
    return filler


@contextlib.contextmanager
def full_root_run(tmp_path: Path, pb: ModuleType, root: Path) -> Iterator[dict[str, Any]]:
    """Run one pod, fill ``root``, try to run another and free the space again, then restart the daemon; yields
    what happened: ``kept`` (the first pod), ``error`` (of the second run), ``listed`` (pods listed while the
    root was full), ``serving`` (Version answered), ``after_restart`` (pods listed then) and ``daemon``."""
    daemon = start_daemon(tmp_path / "d")
    try:
        with daemon.channel() as channel:
            pods = PodEnv(daemon, BridgeNetwork(tmp_path / "d" / "cni"), tmp_path / "d",
                          pb.grpc.RuntimeServiceStub(channel), pb)
            kept = pods.run(pods.config("kept", network="NODE"))
            filler = fill(root)
            with pytest.raises(grpc.RpcError) as info:
                pods.run(pods.config("refused", network="NODE"))
            listed = {s.id for s in pods.stub.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=5).items}
            serving = pods.stub.Version(pb.VersionRequest(), timeout=5).runtime_name == "crirt"
            filler.unlink()
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
        daemon = start_daemon(tmp_path / "d")
        with daemon.channel() as channel:
            pods = PodEnv(daemon, pods.net, pods.base, pb.grpc.RuntimeServiceStub(channel), pb)
            after = {s.id for s in pods.stub.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=5).items}
            yield {"kept": kept, "error": info.value, "listed": listed, "serving": serving, "after_restart": after,
                   "pods": pods}
            for sandbox in after:
                pods.stop(sandbox)
                pods.remove(sandbox)
    finally:
        daemon.stop()


def test_a_full_root_leaves_the_records_written_before_readable(tmp_path: Path, pb: ModuleType,
                                                                small_root: Path) -> None:
    with full_root_run(tmp_path, pb, small_root) as run:
        assert run["serving"]
        assert run["after_restart"] == {run["kept"]}  # the store reopens with what was written before
        assert traces(tmp_path / "d", run["pods"].net, run["listed"] - {run["kept"]}) == {}  # the refused pod


def test_a_record_written_to_a_full_root_is_resource_exhausted_and_not_kept(tmp_path: Path, pb: ModuleType,
                                                                           small_root: Path) -> None:
    with full_root_run(tmp_path, pb, small_root) as run:
        assert run["error"].code() == grpc.StatusCode.RESOURCE_EXHAUSTED, run["error"].details()
        assert "disk is full" in run["error"].details() or "no space" in run["error"].details()
        assert run["listed"] == {run["kept"]}
