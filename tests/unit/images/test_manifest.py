"""Manifest, index and config parsing; platform selection; chain ids."""

from __future__ import annotations

import hashlib
import json

import pytest

from crirt.errors import FailedPrecondition, NotFound, Unavailable
from crirt.images.manifest import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    Index,
    Manifest,
    Want,
    chain_ids,
    parse_config,
    parse_manifest,
    select_platform,
)

D = "sha256:" + "a" * 64
LAYER = {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": D, "size": 10}
MANIFEST = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "layers": [LAYER],
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": D, "size": 5}}


def entry(arch: str, variant: str = "", os_name: str = "linux", digit: str = "b") -> dict[str, object]:
    platform = {"os": os_name, "architecture": arch, **({"variant": variant} if variant else {})}
    return {"mediaType": DOCKER_MANIFEST, "digest": "sha256:" + digit * 64, "size": 1, "platform": platform}


def index(*entries: dict[str, object]) -> Index:
    parsed = parse_manifest(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(entries)})
                            .encode(), "", "test")
    assert isinstance(parsed, Index)
    return parsed


def test_manifest_kinds() -> None:
    assert isinstance(parse_manifest(json.dumps(MANIFEST).encode(), "", "m"), Manifest)
    no_media_type = {k: v for k, v in MANIFEST.items() if k != "mediaType"}
    assert isinstance(parse_manifest(json.dumps(no_media_type).encode(), "application/json", "m"), Manifest)
    with pytest.raises(FailedPrecondition, match="schema 1"):
        parse_manifest(b'{"schemaVersion": 1}', "application/vnd.docker.distribution.manifest.v1+prettyjws", "m")
    with pytest.raises(FailedPrecondition, match="unsupported media type"):
        parse_manifest(b'{"schemaVersion": 2, "mediaType": "x/y"}', "", "m")
    with pytest.raises(Unavailable, match="not valid JSON"):
        parse_manifest(b"\xff\x00", "", "m")
    with pytest.raises(FailedPrecondition, match="malformed"):
        parse_manifest(json.dumps({**MANIFEST, "layers": [{**LAYER, "digest": "sha256:../../etc"}]}).encode(),
                       "", "m")
    with pytest.raises(FailedPrecondition, match="unsupported media type 'application/x-lz4'"):
        parse_manifest(json.dumps({**MANIFEST, "layers": [{**LAYER, "mediaType": "application/x-lz4"}]}).encode(),
                       "", "m")
    with pytest.raises(FailedPrecondition, match="not a container image"):
        parse_manifest(json.dumps({**MANIFEST, "config": {**MANIFEST["config"],  # type: ignore[dict-item]
                                                          "mediaType": "application/vnd.cncf.helm.config.v1+json"}})
                       .encode(), "", "m")


def test_docker_manifest_list() -> None:
    listed = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
                         "manifests": [entry("amd64")]}).encode()
    parsed = parse_manifest(listed, "", "list")
    assert isinstance(parsed, Index) and select_platform(parsed, Want.parse("linux/amd64"), "l").digest[7] == "b"


def test_platform_selection() -> None:
    offered = index(entry("amd64", digit="1"), entry("arm64", "v8", digit="2"), entry("arm", "v6", digit="3"),
                    entry("arm", "v7", digit="4"), entry("unknown", os_name="unknown", digit="5"))
    chosen = {text: select_platform(offered, Want.parse(text), "i").digest[7] for text in
              ("linux/amd64", "linux/x86_64", "linux/arm64", "linux/aarch64", "linux/arm64/v8", "linux/arm/v7",
               "linux/arm/v6", "linux/armhf")}
    assert chosen == {"linux/amd64": "1", "linux/x86_64": "1", "linux/arm64": "2", "linux/aarch64": "2",
                      "linux/arm64/v8": "2", "linux/arm/v7": "4", "linux/arm/v6": "3", "linux/armhf": "4"}
    only_v6 = index(entry("arm", "v6", digit="3"))
    assert select_platform(only_v6, Want.parse("linux/arm/v7"), "i").digest[7] == "3"  # v7 runs v6
    with pytest.raises(NotFound, match=r"linux/s390x .*offers: linux/amd64, linux/arm/v6"):
        select_platform(offered, Want.parse("linux/s390x"), "i")
    with pytest.raises(NotFound):
        select_platform(index(entry("arm", "v7")), Want.parse("linux/arm/v6"), "i")
    assert Want.parse("").os == "linux"


def test_config_and_chain_ids() -> None:
    a, b = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    config = parse_config(json.dumps({"config": None, "rootfs": {"diff_ids": [a, b]}}).encode(), 2, "c")
    assert config.config.User == ""
    with pytest.raises(FailedPrecondition, match="2 diff ids for 3 layers"):
        parse_config(json.dumps({"rootfs": {"diff_ids": [a, b]}}).encode(), 3, "c")
    second = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    assert chain_ids([a, b]) == [a, second] and chain_ids([]) == []
