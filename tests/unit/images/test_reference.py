"""Docker reference parsing and normalization."""

from __future__ import annotations

import pytest

from crirt.errors import InvalidArgument
from crirt.images.reference import Reference, is_loopback_host, looks_like_image_id, parse_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("text", "expected"), [
    ("busybox", "docker.io/library/busybox:latest"),
    ("library/busybox:1.36", "docker.io/library/busybox:1.36"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("index.docker.io/org/app:v1", "docker.io/org/app:v1"),
    ("org/app", "docker.io/org/app:latest"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/a/b/c:tag-1.2_x", "localhost:5000/a/b/c:tag-1.2_x"),
    ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
    ("[::1]:5000/app:1", "[::1]:5000/app:1"),
    ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
    ("Registry.Example.COM/app", "Registry.Example.COM/app:latest"),
    ("Upper/app", "Upper/app:latest"),  # an upper-case first component is a host, as in Docker
    (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
    (f"quay.io/org/app:1@{DIGEST}", f"quay.io/org/app:1@{DIGEST}"),
    ("a__b/c.d-e---f", "docker.io/a__b/c.d-e---f:latest"),
])
def test_normalization(text: str, expected: str) -> None:
    assert str(parse_reference(text)) == expected


def test_parts() -> None:
    ref = parse_reference(f"localhost:5000/a/b:t@{DIGEST}")
    assert ref == Reference("localhost:5000", "a/b", "t", DIGEST)
    assert (ref.name, ref.object, ref.hostname) == ("localhost:5000/a/b", DIGEST, "localhost")
    assert parse_reference("[::1]:5000/x").hostname == "::1"
    assert parse_reference("busybox", default_tag=False).tag == ""


@pytest.mark.parametrize(("text", "problem"), [
    ("", "empty"), (" busybox", "whitespace"), ("busybox:", "bad tag"), ("busybox:-x", "bad tag"),
    ("busybox@sha256:abc", "digest"), ("busybox@md5:" + "a" * 32, "digest"), ("org/App", "lowercase"),
    ("-bad/name", "bad repository"), ("a" * 64, "image id"), ("bad_host:x:y/z", "bad"),
    ("example.com/" + "a" * 250, "longer than 255"), ("a//b", "bad repository"), ("a/b/", "bad repository"),
])
def test_invalid(text: str, problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem):
        parse_reference(text)


def test_loopback_hosts_and_ids() -> None:
    assert all(map(is_loopback_host, ["localhost", "127.0.0.1", "127.8.9.10", "::1"]))
    assert not any(map(is_loopback_host, ["10.0.0.1", "example.com", "localhost.example.com", "::2"]))
    assert looks_like_image_id("ab" * 32) and looks_like_image_id("sha256:" + "ab" * 32)
    assert not looks_like_image_id("busybox") and not looks_like_image_id("ab" * 31)
