"""Session fixtures for the image tests: a real registry with the test images, a fault proxy, and daemons.

The images are built once per session (``catalog``) from busybox-static and pushed with skopeo to Debian's
docker-registry on 127.0.0.1. Each test module starts its own crirt daemon(s) with ``crirt_daemon``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from support.daemon import Daemon, start_daemon
from support.images import (
    ESCAPE,
    MTIME,
    Catalog,
    Client,
    LayerTar,
    Layout,
    StartDaemon,
    busybox_layer,
    push,
    sha256,
    unmount_under,
)
from support.registry import (
    FaultProxy,
    Registry,
    RemoteRegistry,
    ServiceLoop,
    TestCA,
    TokenServer,
    htpasswd_file,
    put_manifest,
    start_registry,
)


@pytest.fixture(scope="session")
def services() -> Iterator[ServiceLoop]:
    loop = ServiceLoop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


def _multi_layers() -> list[tuple[bytes, str]]:
    base = busybox_layer()
    base.dir("etc/conf.d").file("etc/conf.d/a", b"a\n").file("etc/conf.d/b", b"b\n")
    base.file("var/old", b"old\n").file("var/keep", b"keep\n")
    base.file("bin/suid", b"#!/bin/sh\n", mode=0o4755, uid=1000, gid=1000, xattrs={"user.crirt": "yes"})
    base.hardlink("bin/hard", "bin/busybox", mode=0o755)
    base.dir("run").fifo("run/fifo")
    base.dir("opt").dir("opt/gone").file("opt/gone/file", b"x")
    second = (LayerTar().whiteout("var/old").opaque("etc/conf.d").file("etc/conf.d/c", b"c\n")
              .file("etc/motd", b"hello\n").whiteout("opt/gone").dir("opt/gone", mode=0o700)
              .file("opt/gone/new", b"new"))
    third = LayerTar().dir("app", mode=0o750, uid=1000, gid=1000).file(
        "app/hello", b"hello from layer 3\n", mode=0o640, uid=1000, gid=1000, mtime=MTIME + 1)
    return [(base.bytes(), "gzip"), (second.bytes(), "gzip"), (third.bytes(), "none")]


def _hostile_layers() -> dict[str, LayerTar]:
    escape = ESCAPE.lstrip("/")
    return {
        "dotdot": LayerTar().file("ok", b"fine").file("../" * 12 + escape, b"pwned"),
        "absolute-dotdot": LayerTar().file("/" + "../" * 12 + escape, b"pwned"),
        "symlink": LayerTar().symlink("evil", "/tmp").file(f"evil/{Path(ESCAPE).name}", b"pwned"),
        "symlink-relative": LayerTar().dir("d").symlink("d/up", "../" * 12 + "tmp").file(
            f"d/up/{Path(ESCAPE).name}", b"pwned"),
        "hardlink": LayerTar().hardlink("h", "../" * 12 + "etc/passwd"),
        "hardlink-missing": LayerTar().hardlink("h", "etc/shadow"),
        "hardlink-through-symlink": LayerTar().symlink("l", "/etc").hardlink("h", "l/passwd"),
        "overlay-xattr": LayerTar().dir("d", xattrs={"trusted.overlay.redirect": "/etc"}),
    }


def _build(registry: Registry, layout_dir: Path) -> Catalog:
    host = registry.host
    layout = Layout(layout_dir)
    catalog = Catalog(host, layout)

    def publish(name: str, descriptor: dict[str, Any], repository: str, **push_args: Any) -> None:
        layout.tag(descriptor, name)
        push(layout, name, f"{host}/{repository}", **push_args)
        catalog.refs[name] = f"{host}/{repository}"

    multi = layout.image(_multi_layers(), user="1000:1000", annotations={"org.example.kind": "multi"})
    publish("multi", multi, "library/busybox:multi")
    publish("multi-again", multi, "library/busybox:again")  # a second tag of the same image
    catalog.facts["multi"] = multi
    zstd_image = layout.image([(busybox_layer().bytes(), "zstd"), (LayerTar().file("z", b"zstd").bytes(), "zstd")])
    publish("zstd", zstd_image, "tools/zstd:1")
    catalog.facts["zstd"] = zstd_image
    publish("docker", layout.image([(busybox_layer().bytes(), "gzip")], user="nobody"), "tools/docker:1",
            docker_format=True)
    arches = [("amd64", ""), ("arm64", "v8"), ("arm", "v7")]
    per_arch = {f"{a}{v}": layout.image([(busybox_layer().bytes(), "gzip"),
                                         (LayerTar().file("arch", f"{a}{v}".encode()).bytes(), "gzip")],
                                        architecture=a, variant=v) for a, v in arches}
    publish("multiarch", layout.index(list(per_arch.values())), "library/multiarch:1")
    catalog.facts["multiarch"] = per_arch
    # Absolute names, as umoci writes them, are relative to the layer's root: this one stays inside it.
    absolute = (LayerTar().dir("/", mode=0o700).dir("/tmp", mode=0o1777).file(ESCAPE, b"inside\n")
                .hardlink("/tmp/hard", ESCAPE))
    publish("absolute", layout.image([(busybox_layer().bytes(), "gzip"), (absolute.bytes(), "gzip")]),
            "tools/absolute:1")
    for case, layer in _hostile_layers().items():
        publish(f"hostile-{case}", layout.image([(busybox_layer().bytes(), "gzip"), (layer.bytes(), "gzip")]),
                f"hostile/{case}:1")
    wrong = layout.image([(LayerTar().file("a", b"a").bytes(), "gzip")], diff_ids=[sha256(b"something else")])
    publish("hostile-diffid", wrong, "hostile/diffid:1")
    bomb = LayerTar().file("zeros", bytes(64 * 1024 * 1024)).bytes()  # 64 MiB of zeros: ~64 KiB gzipped
    publish("hostile-bomb", layout.image([(bomb, "gzip")]), "hostile/bomb:1")
    _unknown_media_type(layout, registry, catalog)
    return catalog


def _unknown_media_type(layout: Layout, registry: Registry, catalog: Catalog) -> None:
    """An image whose layer claims a media type no runtime knows (pushed as a raw manifest)."""
    image = layout.image([(LayerTar().file("a", b"a").bytes(), "gzip")])
    manifest = json.loads(layout.read(image["digest"]))
    manifest["layers"][0]["mediaType"] = "application/vnd.example.layer.v1.tar+lz4"
    layout.tag(image, "mediatype")
    push(layout, "mediatype", f"{registry.host}/hostile/mediatype:blobs")  # puts the blobs in the repository
    put_manifest(registry.url, "hostile/mediatype", "1", json.dumps(manifest).encode(), manifest["mediaType"])
    catalog.refs["hostile-mediatype"] = f"{registry.host}/hostile/mediatype:1"


@pytest.fixture(scope="session")
def catalog(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    return _build(registry, tmp_path_factory.mktemp("layout"))


@pytest.fixture(scope="session")
def proxy(registry: Registry, services: ServiceLoop) -> FaultProxy:
    fault_proxy = FaultProxy(registry.url)
    fault_proxy.start(services)
    return fault_proxy


@pytest.fixture
def crirt_daemon(tmp_path: Path) -> Iterator[StartDaemon]:
    """Start daemons with image settings; all are stopped (and must exit cleanly) at the end of the test.

    ``registries`` holds ``[registries."<host>"]`` tables; none by default: the image tests only ever name
    registries on 127.0.0.1, localhost and ::1."""
    started: list[Daemon] = []

    def start(extra_config: str = "", registries: str = "", name: str = "d") -> Daemon:
        daemon = start_daemon(tmp_path / name, extra_config, registries=registries)
        started.append(daemon)
        return daemon

    try:
        yield start
        for daemon in started:
            if daemon.proc.returncode != -9:  # unless the test killed it, it must exit cleanly
                assert daemon.stop() == 0, daemon.log_text()[-3000:]
    finally:
        for daemon in started:
            daemon.stop()
        unmount_under(tmp_path)


@pytest.fixture
def connect(pb: ModuleType) -> Iterator[Callable[[Daemon], Client]]:
    channels: list[grpc.Channel] = []

    def make(daemon: Daemon) -> Client:
        channel = daemon.channel()
        channels.append(channel)
        return Client(daemon, pb, pb.grpc.ImageServiceStub(channel))

    yield make
    for channel in channels:
        channel.close()


USERS = {"alice": "wonderland"}
IDENTITY_TOKENS = {"refresh-token-of-alice": "alice"}


def _small_image(catalog: Catalog, content: bytes) -> tuple[dict[str, Any], str]:
    descriptor = catalog.layout.image([(busybox_layer().bytes(), "gzip"), (LayerTar().file("who", content).bytes(),
                                                                             "gzip")])
    name = f"small-{content.decode()}"
    catalog.layout.tag(descriptor, name)
    return descriptor, name


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> Iterator[RemoteRegistry]:
    """A registry behind htpasswd basic auth."""
    base = tmp_path_factory.mktemp("basic")
    reg = start_registry(base, htpasswd=htpasswd_file(base / "htpasswd", USERS))
    descriptor, name = _small_image(catalog, b"basic")
    push(catalog.layout, name, f"{reg.host}/private/app:1", creds="alice:wonderland")
    yield RemoteRegistry(reg, f"{reg.host}/private/app:1", catalog.image_id(descriptor))
    reg.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog,
                   services: ServiceLoop) -> Iterator[RemoteRegistry]:
    """A registry with token auth: its token server lets anyone pull public/*, and alice do anything."""
    base = tmp_path_factory.mktemp("token")
    tokens = TokenServer(base, USERS, IDENTITY_TOKENS, public={"public/app"})
    tokens.start(services)
    reg = start_registry(base / "registry", token=tokens.registry_config())
    descriptor, name = _small_image(catalog, b"token")
    for repository in ("public/app:1", "private/app:1"):
        push(catalog.layout, name, f"{reg.host}/{repository}", creds="alice:wonderland")
    yield RemoteRegistry(reg, f"{reg.host}/public/app:1", catalog.image_id(descriptor), extra={"tokens": tokens})
    reg.stop()


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> Iterator[RemoteRegistry]:
    """A registry on HTTPS with a CA made here, requiring client certificates signed by it."""
    base = tmp_path_factory.mktemp("tls")
    ca = TestCA(base / "pki")
    reg = start_registry(base / "registry", tls=ca.issue("server", server=True), client_ca=ca.cert_file)
    client_cert, client_key = ca.issue("client", server=False)
    cert_dir = base / "skopeo-certs"
    cert_dir.mkdir()
    (cert_dir / "ca.crt").write_bytes(ca.cert_file.read_bytes())
    (cert_dir / "client.cert").write_bytes(client_cert.read_bytes())
    (cert_dir / "client.key").write_bytes(client_key.read_bytes())
    descriptor, name = _small_image(catalog, b"tls")
    push(catalog.layout, name, f"{reg.host}/secure/app:1", cert_dir=cert_dir)
    config = (f'[registries."{reg.host}"]\nplain_http = false\nca_file = "{ca.cert_file}"\n'
              f'cert_file = "{client_cert}"\nkey_file = "{client_key}"\n')
    yield RemoteRegistry(reg, f"{reg.host}/secure/app:1", catalog.image_id(descriptor), config,
                         {"ca": ca.cert_file, "cert": client_cert, "key": client_key})
    reg.stop()


@pytest.fixture(scope="session")
def mirror_registry(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> Iterator[RemoteRegistry]:
    """A second registry holding images under namespace prefixes, as a mirror of other registries would."""
    reg = start_registry(tmp_path_factory.mktemp("mirror"))
    descriptor, name = _small_image(catalog, b"mirror")
    for repository in ("m/library/busybox:multi", "dockerhub/library/busybox:latest", "k8s/pause:3.10",
                       "gcr/distroless/static:nonroot"):
        push(catalog.layout, name, f"{reg.host}/{repository}")
    yield RemoteRegistry(reg, f"{reg.host}/m/library/busybox:multi", catalog.image_id(descriptor))
    reg.stop()
