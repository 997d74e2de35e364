"""PullImage, ImageStatus, ListImages, StreamImages, RemoveImage and ImageFsInfo against a real registry."""

from __future__ import annotations

import json
import threading
import time
from types import ModuleType

import grpc
import pytest
from support.images import Catalog, LayerTar, StartDaemon, busybox_layer, push
from support.registry import FaultProxy, Faults


def test_pull_then_find_the_image_every_way(crirt_daemon: StartDaemon, connect, catalog: Catalog) -> None:
    client = connect(crirt_daemon())
    multi = catalog.facts["multi"]
    image_id = client.pull(catalog["multi"])
    assert image_id == catalog.image_id(multi)
    assert client.pull(catalog["multi-again"]) == image_id
    name = catalog["multi"].rsplit(":", 1)[0]
    repo_digest = f"{name}@{multi['digest']}"
    for text in (catalog["multi"], catalog["multi-again"], image_id, image_id[7:], image_id[7:20],
                 image_id[:20], repo_digest):
        image = client.status(text).image
        assert image.id == image_id, text
    assert sorted(image.repo_tags) == [f"{name}:again", f"{name}:multi"]
    assert list(image.repo_digests) == [repo_digest]
    assert image.size == catalog.size(multi)
    assert image.HasField("uid") and image.uid.value == 1000 and image.username == ""
    assert image.spec.annotations["org.example.kind"] == "multi"
    assert not image.pinned
    assert not client.status(f"{name}:absent").HasField("image")
    assert not client.status("sha256:" + "0" * 64).HasField("image")

    info = json.loads(client.status(image_id, verbose=True).info["info"])
    assert info["imageSpec"]["config"]["User"] == "1000:1000"
    assert [layer["digest"] for layer in info["layers"]] == [d["digest"] for d in catalog.manifest(multi)["layers"]]
    assert info["chainID"] == info["layers"][-1]["chain_id"] and info["manifest"]["schemaVersion"] == 2

    by_digest = client.pull(repo_digest)  # a pull by digest adds no tag
    assert by_digest == image_id and len(client.images()) == 1


def test_list_and_stream_with_filters(crirt_daemon: StartDaemon, connect, catalog: Catalog, pb: ModuleType) -> None:
    client = connect(crirt_daemon())
    multi, zstd = client.pull(catalog["multi"]), client.pull(catalog["zstd"])
    assert {i.id for i in client.images()} == {multi, zstd}
    name = catalog["multi"].rsplit(":", 1)[0]
    assert [i.id for i in client.images(name)] == [multi]  # a repository without tag matches all its tags
    assert [i.id for i in client.images(catalog["zstd"])] == [zstd]
    assert [i.id for i in client.images(zstd[:19])] == [zstd]
    assert client.images(f"{name}:nope") == []
    batches = list(client.stub.StreamImages(pb.StreamImagesRequest()))
    assert {i.id for b in batches for i in b.images} == {multi, zstd}


def test_zstd_docker_schema2_and_named_user(crirt_daemon: StartDaemon, connect, catalog: Catalog) -> None:
    client = connect(crirt_daemon())
    zstd = client.status(client.pull(catalog["zstd"])).image
    assert zstd.id == catalog.image_id(catalog.facts["zstd"]) and not zstd.HasField("uid")
    docker = client.status(client.pull(catalog["docker"])).image
    assert docker.username == "nobody" and not docker.HasField("uid")


@pytest.mark.parametrize(("platform", "expected"), [("", "amd64"), ("linux/arm/v7", "armv7"),
                                                    ("linux/arm64", "arm64v8"), ("linux/arm/v8", "armv7")])
def test_multi_platform_index(crirt_daemon: StartDaemon, connect, catalog: Catalog, platform: str,
                              expected: str) -> None:
    client = connect(crirt_daemon(f'[images]\nplatform = "{platform}"\n' if platform else ""))
    image_id = client.pull(catalog["multiarch"])
    assert image_id == catalog.image_id(catalog.facts["multiarch"][expected])
    image = client.status(image_id).image
    assert image.repo_digests[0].endswith(f"@{_index_digest(catalog)}")  # the index the tag points at


def _index_digest(catalog: Catalog) -> str:
    index = json.loads((catalog.layout.path / "index.json").read_text())
    return next(m["digest"] for m in index["manifests"]
                if m["annotations"]["org.opencontainers.image.ref.name"] == "multiarch")


def test_no_image_for_this_platform(crirt_daemon: StartDaemon, connect, catalog: Catalog) -> None:
    client = connect(crirt_daemon('[images]\nplatform = "linux/s390x"\n'))
    error = client.pull_error(catalog["multiarch"])
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "linux/s390x" in error.details() and "linux/arm64/v8" in error.details()
    assert client.leftovers() == set()


def test_remove_untags_then_removes_and_collects(crirt_daemon: StartDaemon, connect, catalog: Catalog) -> None:
    client = connect(crirt_daemon())
    empty = client.leftovers()
    image_id = client.pull(catalog["multi"])
    client.pull(catalog["multi-again"])
    client.remove(catalog["multi-again"])  # another tag remains: only this tag goes
    assert list(client.status(image_id).image.repo_tags) == [catalog["multi"]]
    client.remove(image_id[7:20])
    assert not client.status(image_id).HasField("image") and client.images() == []
    assert client.leftovers() == empty  # every blob and snapshot was collected
    client.remove(image_id)  # removing what is gone is fine
    client.remove("never/pulled:1")


def test_a_moved_tag_leaves_the_old_image_untagged(crirt_daemon: StartDaemon, connect,
                                                   catalog: Catalog) -> None:
    client = connect(crirt_daemon())
    layout, target = catalog.layout, f"{catalog.host}/tools/moving:1"
    for content in (b"first", b"second"):
        descriptor = layout.image([(busybox_layer().bytes(), "gzip"), (LayerTar().file("v", content).bytes(), "gzip")])
        layout.tag(descriptor, "moving")
        push(layout, "moving", target)
        client.pull(target)
    old, new = sorted(client.images(), key=lambda i: len(i.repo_tags))
    assert list(new.repo_tags) == [target] and list(old.repo_tags) == [] and len(old.repo_digests) == 1


def test_images_survive_a_restart(crirt_daemon: StartDaemon, connect, catalog: Catalog) -> None:
    daemon = crirt_daemon(name="same")
    client = connect(daemon)
    image_id = client.pull(catalog["zstd"])
    before = client.leftovers()
    assert daemon.stop() == 0
    client = connect(crirt_daemon(name="same"))
    assert client.status(catalog["zstd"]).image.id == image_id
    assert client.leftovers() == before


def test_image_fs_info(crirt_daemon: StartDaemon, connect, catalog: Catalog, pb: ModuleType) -> None:
    daemon = crirt_daemon()
    client = connect(daemon)
    empty = client.stub.ImageFsInfo(pb.ImageFsInfoRequest())
    client.pull(catalog["multi"])
    full = client.stub.ImageFsInfo(pb.ImageFsInfoRequest())
    (image_fs,), (container_fs,) = full.image_filesystems, full.container_filesystems
    assert image_fs.fs_id.mountpoint == str(daemon.root / "images")
    assert container_fs.fs_id.mountpoint == str(daemon.root / "rootfs")
    assert image_fs.timestamp > 0 and container_fs.used_bytes.value == 0
    grown = image_fs.used_bytes.value - empty.image_filesystems[0].used_bytes.value
    assert grown > 2 * 1024 * 1024  # busybox twice: as a compressed blob and unpacked
    assert image_fs.inodes_used.value - empty.image_filesystems[0].inodes_used.value > 20


def test_pinned_images(crirt_daemon: StartDaemon, connect, catalog: Catalog) -> None:
    client = connect(crirt_daemon(f'[images]\npinned_images = ["{catalog["zstd"]}"]\n'))
    assert client.status(client.pull(catalog["zstd"])).image.pinned
    assert not client.status(client.pull(catalog["multi"])).image.pinned


def test_bad_references_are_invalid_arguments(crirt_daemon: StartDaemon, connect) -> None:
    client = connect(crirt_daemon())
    for text in ("Upper/Case", "busybox@sha256:abc", "busybox:", "a" * 64, "-bad/name"):
        assert client.pull_error(text).code() == grpc.StatusCode.INVALID_ARGUMENT, text
    with pytest.raises(grpc.RpcError) as info:
        client.status("Upper/Case")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_registry_that_is_not_configured_is_blocked_in_test_daemons(crirt_daemon: StartDaemon, connect) -> None:
    client = connect(crirt_daemon(registries='[registries."*"]\nblocked = true\n'))
    error = client.pull_error("busybox")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "docker.io is blocked" in error.details()


def test_concurrent_pulls_share_one_download(crirt_daemon: StartDaemon, connect, catalog: Catalog,
                                            proxy: FaultProxy) -> None:
    client = connect(crirt_daemon())
    proxy.reset(Faults(blob_delay=0.002))
    refs = [catalog[name].replace(catalog.host, proxy.host) for name in ("multi", "multi-again")]
    results: list[str] = []
    threads = [threading.Thread(target=lambda r=ref: results.append(client.pull(r))) for ref in refs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    blobs = proxy.blob_gets()
    assert len(results) == 2 and len(set(results)) == 1
    assert len(blobs) == len(set(blobs)), blobs  # every blob was fetched once
    proxy.reset()


@pytest.mark.parametrize(("setting", "most"), [("", 3), ("[images]\nmax_concurrent_downloads = 1\n", 1)])
def test_layers_download_in_parallel_up_to_the_limit(crirt_daemon: StartDaemon, connect, catalog: Catalog,
                                                     proxy: FaultProxy, setting: str, most: int) -> None:
    daemon = crirt_daemon(setting)
    client = connect(daemon)
    proxy.reset(Faults(blob_start_delay=0.3))
    try:
        client.pull(catalog["multi"].replace(catalog.host, proxy.host))  # three layers
        assert proxy.most_blobs_in_flight == most
    finally:
        proxy.reset()
    assert f"pulled {proxy.host}/library/busybox:multi" in daemon.log_text()  # the summary line


def test_a_pull_killed_midway_leaves_nothing_after_a_restart(crirt_daemon: StartDaemon, connect,
                                                              catalog: Catalog, proxy: FaultProxy) -> None:
    daemon = crirt_daemon(name="same")
    client = connect(daemon)
    proxy.reset(Faults(blob_delay=0.02))
    errors: list[grpc.RpcError] = []
    puller = threading.Thread(target=lambda: errors.append(
        client.pull_error(catalog["multi"].replace(catalog.host, proxy.host))))
    puller.start()
    try:
        deadline = time.monotonic() + 30
        while not proxy.blob_gets() or not any((daemon.root / "images/content/ingest").iterdir()):
            assert time.monotonic() < deadline, "the pull never started downloading"
            time.sleep(0.02)
        daemon.proc.kill()  # kill -9 in the middle of downloading and unpacking
        daemon.proc.wait(10)
        puller.join(30)
    finally:
        proxy.reset()
    assert errors and errors[0].code() == grpc.StatusCode.UNAVAILABLE
    assert connect(daemon).leftovers() != set()  # the crash left half-written things behind
    client = connect(crirt_daemon(name="same"))
    assert client.images() == [] and client.leftovers() == set()
