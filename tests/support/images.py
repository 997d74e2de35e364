"""Test images: layer tars built entry by entry, OCI layouts written by hand, pushed with skopeo.

Layers are made with Python's tarfile so a test controls every entry (whiteouts, opaque markers, device
nodes, xattrs, and hostile names or links). The base layer carries Debian's static busybox, so the images
are real, runnable images. ``Layout`` writes an OCI image layout (blobs, manifests, indexes, configs);
``push`` copies one of its tags to a registry with skopeo, keeping the digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # the same module, backported
    from backports import zstd

from support.daemon import Daemon

BUSYBOX = Path("/bin/busybox")
ESCAPE = f"/tmp/crirt-escape-{uuid.uuid4().hex[:12]}"
"""A path hostile layers try to write (through .., absolute names, symlinks and hard links)."""
MTIME = 1_700_000_000
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
               "none": "application/vnd.oci.image.layer.v1.tar"}


SKELETON = {"content", "content/blobs", "content/blobs/sha256", "content/ingest", "content/trash", "snapshots",
            "snapshots/.staging", "snapshots/.trash"}
StartDaemon = Callable[..., Daemon]
"""The ``crirt_daemon`` fixture: ``start(extra_config="", registries="", name="d")``."""


def unmount_under(base: Path) -> None:
    """Unmount whatever is still mounted below ``base``, deepest first (what a killed daemon left)."""
    prefix = str(base.resolve()) + "/"
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if line.split()[4].startswith(prefix)]
    for mountpoint in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], check=False)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class LayerTar:
    """A layer's tar stream, one entry at a time (names are written exactly as given)."""

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buffer, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def add(self, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644, uid: int = 0,
            gid: int = 0, mtime: int = MTIME, linkname: str = "", device: tuple[int, int] = (0, 0),
            xattrs: dict[str, str] | None = None) -> LayerTar:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, mtime
        info.linkname = linkname
        info.devmajor, info.devminor = device
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in (xattrs or {}).items()}
        self._tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        return self

    def file(self, name: str, data: bytes, mode: int = 0o644, **kw: Any) -> LayerTar:
        return self.add(name, tarfile.REGTYPE, data, mode, **kw)

    def dir(self, name: str, mode: int = 0o755, **kw: Any) -> LayerTar:
        return self.add(name, tarfile.DIRTYPE, mode=mode, **kw)

    def symlink(self, name: str, target: str) -> LayerTar:
        return self.add(name, tarfile.SYMTYPE, mode=0o777, linkname=target)

    def hardlink(self, name: str, target: str, mode: int = 0o644) -> LayerTar:
        """A hard link; as Go's and Python's tar writers do, the header repeats the target's mode."""
        return self.add(name, tarfile.LNKTYPE, mode=mode, linkname=target)

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o666) -> LayerTar:
        return self.add(name, tarfile.CHRTYPE, mode=mode, device=(major, minor))

    def fifo(self, name: str) -> LayerTar:
        return self.add(name, tarfile.FIFOTYPE, mode=0o600)

    def whiteout(self, path: str) -> LayerTar:
        parent, _, base = path.rpartition("/")
        return self.file(f"{parent}/.wh.{base}" if parent else f".wh.{base}", b"")

    def opaque(self, directory: str) -> LayerTar:
        return self.file(f"{directory}/.wh..wh..opq", b"")

    def bytes(self) -> bytes:
        self._tar.close()
        return self._buffer.getvalue()


def busybox_layer() -> LayerTar:
    """A runnable base: /bin/busybox, a few applet links, /etc basics, /tmp, /dev/null."""
    layer = LayerTar()
    for directory in ("bin", "etc", "dev", "root", "var"):
        layer.dir(directory)
    layer.dir("tmp", mode=0o1777)
    layer.file("bin/busybox", BUSYBOX.read_bytes(), mode=0o755)
    for applet in ("sh", "ls", "cat", "echo", "id"):
        layer.symlink(f"bin/{applet}", "busybox")
    layer.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    layer.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    layer.chardev("dev/null", 1, 3)
    return layer


def compress(tar: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(tar, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstd.compress(tar)
    return tar


@dataclass
class Layout:
    """An OCI image layout on disk; ``image`` and ``index`` add documents, ``tag`` names one."""

    path: Path

    def __post_init__(self) -> None:
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        if not (self.path / "index.json").exists():
            (self.path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": []}))

    def blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = sha256(data)
        (self.path / "blobs" / "sha256" / digest[7:]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def image(self, layers: list[tuple[bytes, str]], *, user: str = "", architecture: str = "amd64",
              variant: str = "", annotations: dict[str, str] | None = None,
              diff_ids: list[str] | None = None, layer_types: list[str] | None = None,
              config: dict[str, Any] | None = None) -> dict[str, Any]:
        """An image manifest from (tar, compression) layers; returns its descriptor (with platform).

        ``config`` adds to (or replaces keys of) the image config's ``config`` object: Entrypoint, Env..."""
        layer_descriptors = [self.blob(compress(tar, how), (layer_types or [])[i] if layer_types else
                                       LAYER_TYPES[how]) for i, (tar, how) in enumerate(layers)]
        document = {"architecture": architecture, "os": "linux", **({"variant": variant} if variant else {}),
                  "config": {"User": user, "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], **(config or {})},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids or [sha256(tar) for tar, _ in layers]}}
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": self.blob(json.dumps(document).encode(), OCI_CONFIG), "layers": layer_descriptors,
                    **({"annotations": annotations} if annotations else {})}
        descriptor = self.blob(json.dumps(manifest).encode(), OCI_MANIFEST)
        descriptor["platform"] = {"architecture": architecture, "os": "linux", **({"variant": variant} if variant
                                                                                  else {})}
        return descriptor

    def index(self, manifests: list[dict[str, Any]]) -> dict[str, Any]:
        return self.blob(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode(),
                         OCI_INDEX)

    def tag(self, descriptor: dict[str, Any], name: str) -> None:
        index = json.loads((self.path / "index.json").read_text())
        entry = {k: v for k, v in descriptor.items() if k != "platform"}
        entry["annotations"] = {"org.opencontainers.image.ref.name": name}
        index["manifests"] = [m for m in index["manifests"]
                              if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != name]
        index["manifests"].append(entry)
        (self.path / "index.json").write_text(json.dumps(index))

    def read(self, digest: str) -> bytes:
        return (self.path / "blobs" / "sha256" / digest[7:]).read_bytes()


def push(layout: Layout, tag: str, destination: str, *, docker_format: bool = False, creds: str = "",
         cert_dir: Path | None = None) -> None:
    """skopeo copy ``oci:<layout>:<tag>`` to ``docker://<destination>`` (digests kept unless converting)."""
    argv = ["skopeo", "--insecure-policy", "copy", "--quiet", "--all" if not docker_format else "--format=v2s2"]
    if not docker_format:
        argv.append("--preserve-digests")
    if cert_dir is not None:
        argv.append(f"--dest-cert-dir={cert_dir}")
    else:
        argv.append("--dest-tls-verify=false")
    if creds:
        argv.append(f"--dest-creds={creds}")
    result = subprocess.run([*argv, f"oci:{layout.path}:{tag}", f"docker://{destination}"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"skopeo failed: {result.stderr}"


@dataclass
class Catalog:
    """The test images in the session registry: name -> reference, and the layout they were built in."""

    host: str
    layout: Layout
    refs: dict[str, str] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> str:
        return self.refs[name]

    def manifest(self, descriptor: dict[str, Any]) -> dict[str, Any]:
        return json.loads(self.layout.read(descriptor["digest"]))

    def image_id(self, descriptor: dict[str, Any]) -> str:
        return self.manifest(descriptor)["config"]["digest"]

    def size(self, descriptor: dict[str, Any]) -> int:
        """containerd's image size: the manifest, its config and its (compressed) layers."""
        manifest = self.manifest(descriptor)
        return descriptor["size"] + manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])


@dataclass
class Client:
    """The grpcio image stub of one daemon, with the helpers the tests share."""

    daemon: Daemon
    pb: ModuleType
    stub: Any

    def pull(self, image: str, timeout: float = 60, **auth: str) -> str:
        request = self.pb.PullImageRequest(image=self.pb.ImageSpec(image=image))
        if auth:
            request.auth.CopyFrom(self.pb.AuthConfig(**auth))
        return self.stub.PullImage(request, timeout=timeout).image_ref

    def pull_error(self, image: str, timeout: float = 60, **auth: str) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            self.pull(image, timeout, **auth)
        return info.value

    def status(self, image: str, verbose: bool = False) -> Any:
        return self.stub.ImageStatus(self.pb.ImageStatusRequest(image=self.pb.ImageSpec(image=image),
                                                                verbose=verbose))

    def images(self, image: str = "") -> list[Any]:
        request = self.pb.ListImagesRequest()
        if image:
            request.filter.image.image = image
        return list(self.stub.ListImages(request).images)

    def remove(self, image: str) -> None:
        self.stub.RemoveImage(self.pb.RemoveImageRequest(image=self.pb.ImageSpec(image=image)))

    def snapshot_dirs(self, image: str) -> list[Path]:
        """The unpacked layer directories of a pulled image, bottom first."""
        info = json.loads(self.status(image, verbose=True).info["info"])
        return [self.daemon.root / "images" / "snapshots" / layer["chain_id"][7:] for layer in info["layers"]]

    def leftovers(self) -> set[str]:
        """Every blob, snapshot and half-written thing under the image store (the empty skeleton aside)."""
        root = self.daemon.root / "images"
        found = {str(Path(d, n).relative_to(root)) for d, dirs, files in os.walk(root) for n in dirs + files}
        return found - SKELETON
