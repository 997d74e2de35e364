"""OCI and Docker schema 2 documents: media types, manifests, indexes, image configs, platform selection.

Registries answer with JSON the image's author wrote, so every document is parsed into a strict-enough
model (digests and sizes checked before any of them is used as a file name or a byte count) and anything
crirt cannot handle is refused with a message saying what it is.
"""

from __future__ import annotations

import hashlib
import json
import platform as host
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crirt.errors import FailedPrecondition, NotFound, Unavailable
from crirt.images.reference import valid_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join((*INDEX_TYPES, *MANIFEST_TYPES))
"""The Accept header of manifest requests: schema 1 is left out so that registries convert or refuse it."""

CONFIG_TYPES = ("application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")
LAYER_COMPRESSION = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
}
"""Layer media types crirt unpacks, and how each is compressed."""


class _Doc(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Platform(_Doc):
    os: str
    architecture: str
    variant: str = ""
    os_version: str = Field("", alias="os.version")

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)


class Descriptor(_Doc):
    mediaType: str = ""
    digest: str
    size: int = Field(ge=0)
    annotations: dict[str, str] = Field(default_factory=dict)
    platform: Platform | None = None

    @field_validator("digest")
    @classmethod
    def _digest(cls, value: str) -> str:
        if not valid_digest(value):
            raise ValueError(f"unsupported or malformed digest {value!r}")
        return value


class Index(_Doc):
    schemaVersion: int
    mediaType: str = ""
    manifests: list[Descriptor]


class Manifest(_Doc):
    schemaVersion: int
    mediaType: str = ""
    config: Descriptor
    layers: list[Descriptor] = Field(default_factory=list)
    annotations: dict[str, str] = Field(default_factory=dict)


class RootFs(_Doc):
    type: str = "layers"
    diff_ids: list[str] = Field(default_factory=list)


class ContainerConfig(_Doc):
    User: str = ""


class ImageConfig(_Doc):
    """The parts of an image config crirt reads itself; the whole document is kept in the content store."""

    architecture: str = ""
    os: str = ""
    variant: str = ""
    config: ContainerConfig = Field(default_factory=ContainerConfig)
    rootfs: RootFs = Field(default_factory=RootFs)

    @field_validator("config", mode="before")
    @classmethod
    def _null_config(cls, value: Any) -> Any:
        return {} if value is None else value


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unavailable(f"{what} is not valid JSON ({exc}); the registry answered garbage") from None
    if not isinstance(document, dict):
        raise Unavailable(f"{what} is not a JSON object; the registry answered garbage")
    return document


def _model(cls: type[_Doc], document: dict[str, Any], what: str) -> Any:
    try:
        return cls.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()[:5])
        raise FailedPrecondition(f"{what} is malformed: {problems}") from None


def parse_manifest(data: bytes, content_type: str, what: str) -> Index | Manifest:
    """An index or an image manifest; Docker schema 1 and unknown media types are refused."""
    document = _load(data, what)
    media_type = document.get("mediaType") or content_type.split(";")[0].strip()
    if media_type in DOCKER_SCHEMA1 or document.get("schemaVersion") == 1:
        raise FailedPrecondition(f"{what} is a Docker schema 1 manifest, which crirt does not support "
                                 "(deprecated since 2017): push the image again with a current tool")
    if media_type in INDEX_TYPES or (media_type in ("", "application/json") and "manifests" in document):
        return _model(Index, document, what)
    if media_type in MANIFEST_TYPES or (media_type in ("", "application/json") and "config" in document):
        manifest: Manifest = _model(Manifest, document, what)
        check_manifest(manifest, what)
        return manifest
    raise FailedPrecondition(f"{what} has unsupported media type {media_type!r}; crirt pulls OCI and Docker "
                             "schema 2 images")


def check_manifest(manifest: Manifest, what: str) -> None:
    """Refuse artifacts that are not container images, and layers crirt cannot unpack, before any download."""
    if manifest.schemaVersion != 2:
        raise FailedPrecondition(f"{what} has schemaVersion {manifest.schemaVersion}; expected 2")
    if manifest.config.mediaType not in CONFIG_TYPES:
        raise FailedPrecondition(f"{what} is not a container image: config media type "
                                 f"{manifest.config.mediaType!r}")
    for number, layer in enumerate(manifest.layers, 1):
        if layer.mediaType not in LAYER_COMPRESSION:
            raise FailedPrecondition(f"{what}: layer {number} ({layer.digest}) has unsupported media type "
                                     f"{layer.mediaType!r}")


def parse_config(data: bytes, layers: int, what: str) -> ImageConfig:
    """The image config; its diff ids must be sha256 digests, one per layer."""
    config: ImageConfig = _model(ImageConfig, _load(data, what), what)
    diff_ids = config.rootfs.diff_ids
    if len(diff_ids) != layers:
        raise FailedPrecondition(f"{what} lists {len(diff_ids)} diff ids for {layers} layers")
    bad = [d for d in diff_ids if not (d.startswith("sha256:") and valid_digest(d))]
    if bad:
        raise FailedPrecondition(f"{what} has malformed diff ids: {bad[:3]}")
    return config


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The OCI chain ids of a layer stack, bottom first: each names a layer together with all below it."""
    chain: list[str] = []
    for diff_id in diff_ids:
        chain.append(diff_id if not chain else digest_of(f"{chain[-1]} {diff_id}".encode()))
    return chain


_ARCH_ALIASES = {"x86_64": ("amd64", ""), "x86-64": ("amd64", ""), "aarch64": ("arm64", ""),
                 "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "armhf": ("arm", "v7"), "armel": ("arm", "v6"),
                 "i386": ("386", ""), "i686": ("386", "")}


@dataclass(frozen=True)
class Want:
    """The platform to pick from an index: os, architecture and (for arm) variant."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Want:
        """``os/arch[/variant]``; the empty string means this host."""
        if not text:
            architecture, variant = _ARCH_ALIASES.get(host.machine(), (host.machine(), ""))
            return cls("linux", architecture, variant)
        parts = text.split("/")
        architecture, variant = _ARCH_ALIASES.get(parts[1], (parts[1], ""))
        return cls(parts[0], architecture, parts[2] if len(parts) > 2 else variant)

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)

    def rank(self, candidate: Platform | None) -> int | None:
        """How well a manifest's platform fits (lower is better); None when it cannot run here.

        arm64's v8 and amd64's v1 are their default variants; an arm v7 host also runs v6 and v5 images."""
        if candidate is None:
            return 100  # an index entry without a platform matches anything, as in containerd
        architecture, alias_variant = _ARCH_ALIASES.get(candidate.architecture, (candidate.architecture, ""))
        if candidate.os != self.os or architecture != self.architecture:
            return None
        variant = candidate.variant or alias_variant
        default = {"arm64": "v8", "amd64": "v1"}.get(architecture, "")
        wanted, offered = self.variant or default, variant or default
        if wanted == offered:
            return 0
        older = _arm_level(wanted) - _arm_level(offered) if architecture == "arm" else 0
        if older > 0 and _arm_level(offered):
            return older
        return 50 if not variant else None


def _arm_level(variant: str) -> int:
    """7 for ``v7``; 0 when the variant is not of that form."""
    return int(variant[1:]) if variant[:1] == "v" and variant[1:].isdigit() else 0


def select_platform(index: Index, want: Want, what: str) -> Descriptor:
    """The best manifest of an index for ``want``; NOT_FOUND listing what the index offers otherwise."""
    ranked = [(rank, position, d) for position, d in enumerate(index.manifests)
              if (rank := want.rank(d.platform)) is not None]
    if not ranked:
        offered = sorted({str(d.platform) for d in index.manifests if d.platform is not None})
        raise NotFound(f"{what} has no image for platform {want} (it offers: {', '.join(offered) or 'nothing'})")
    return min(ranked, key=lambda item: item[:2])[2]
