"""Configuration of the image service: ``[images]`` and one ``[registries."<host>"]`` table per registry."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from crirt.errors import InvalidArgument
from crirt.images.reference import looks_like_image_id, parse_reference

GIB = 1024**3
MIB = 1024**2


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImagesConfig(_Section):
    """How pulls behave: parallelism, timeouts, retries, limits against hostile images, platform, pins."""

    max_concurrent_downloads: int = Field(3, ge=1, le=64, description="layers downloaded and unpacked at once")
    stall_timeout: float = Field(60.0, gt=0, description="seconds without a byte from the registry before a pull fails")
    connect_timeout: float = Field(30.0, gt=0, description="seconds to open a connection to a registry")
    max_retries: int = Field(5, ge=0, le=100, description="resumes of one blob after a dropped connection")
    max_manifest_size: int = Field(4 * MIB, ge=1024, description="largest manifest, index or image config (bytes)")
    max_layer_size: int = Field(16 * GIB, ge=MIB, description="largest uncompressed layer: the decompression-bomb cap")
    max_layer_entries: int = Field(1_000_000, ge=1, description="most files, dirs and links one layer may create")
    platform: str = Field("", description="os/arch[/variant] to select from multi-platform images; '' = this host")
    pinned_images: list[str] = Field(default_factory=list, description="references reported as pinned")

    @field_validator("platform")
    @classmethod
    def _platform_shape(cls, value: str) -> str:
        if value and not 2 <= len(value.split("/")) <= 3:
            raise ValueError("must be os/arch or os/arch/variant, e.g. linux/arm64/v8")
        return value

    @field_validator("pinned_images")
    @classmethod
    def _normalized_references(cls, value: list[str]) -> list[str]:
        """Pins are kept normalized (``docker.io/library/busybox:latest``) or as full ids (``sha256:...``)."""
        pins = []
        for text in value:
            if looks_like_image_id(text):
                pins.append("sha256:" + text.removeprefix("sha256:"))
                continue
            try:
                pins.append(str(parse_reference(text)))
            except InvalidArgument as exc:
                raise ValueError(str(exc)) from None
        return pins


class RegistryConfig(_Section):
    """Settings for one registry host (``docker.io``, ``registry.k8s.io``, ``127.0.0.1:5000``, ``[::1]:5000``),
    or for every registry without a table of its own (key ``"*"``).

    Mirrors are endpoint URLs tried in order before the registry itself; the TLS settings of a mirror come
    from the ``[registries."<mirror host>"]`` table of the mirror's own host."""

    blocked: bool = Field(False, description="refuse every pull from this registry")
    mirrors: list[str] = Field(default_factory=list, description="endpoint URLs, e.g. http://10.0.0.5:5000/dockerhub")
    fallback_to_origin: bool = Field(True, description="false: only the mirrors are ever contacted (air-gapped)")
    plain_http: bool | None = Field(None, description="None: plain HTTP only for loopback hosts")
    insecure_skip_verify: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str = ""
    password: SecretStr = Field(SecretStr(""), description="shown as ****** by crirt config and Status")
    auth: SecretStr = Field(SecretStr(""), description="base64 of username:password, as in Docker's config.json")
    identity_token: SecretStr = SecretStr("")

    @field_validator("mirrors")
    @classmethod
    def _mirror_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1].strip("/")) == 0:
                raise ValueError(f"mirror {url!r} must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _client_cert_pair(self) -> RegistryConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if not self.fallback_to_origin and not self.mirrors and not self.blocked:
            raise ValueError("fallback_to_origin = false needs at least one mirror")
        return self
