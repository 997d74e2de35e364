"""Hostile images and misbehaving registries: each pull fails with a clear error and leaves nothing behind.

The hostile images sit in the real registry; registry misbehaviour comes from ``FaultProxy`` in front of it.
After every failure no image is listed, no blob, snapshot or temporary file is left under the image store,
nothing was written outside it, and the daemon keeps serving.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest
from support.images import ESCAPE, Catalog, Client, StartDaemon
from support.registry import FaultProxy, Faults

HOSTILE_SETTINGS = ("[images]\nmax_layer_size = 16777216\nstall_timeout = 2.0\nmax_retries = 2\n"
                    "max_manifest_size = 2048\n")
CODE = grpc.StatusCode

LAYER_CASES = {
    "dotdot": (CODE.FAILED_PRECONDITION, "contains '..'"),
    "absolute-dotdot": (CODE.FAILED_PRECONDITION, "contains '..'"),
    "symlink": (CODE.FAILED_PRECONDITION, "goes through the symlink 'evil'"),
    "symlink-relative": (CODE.FAILED_PRECONDITION, "goes through the symlink 'd/up'"),
    "hardlink": (CODE.FAILED_PRECONDITION, "contains '..'"),
    "hardlink-missing": (CODE.FAILED_PRECONDITION, "which this layer does not contain"),
    "hardlink-through-symlink": (CODE.FAILED_PRECONDITION, "goes through the symlink 'l'"),
    "overlay-xattr": (CODE.FAILED_PRECONDITION, "overlayfs attributes"),
    "diffid": (CODE.FAILED_PRECONDITION, "but the image config says"),
    "bomb": (CODE.RESOURCE_EXHAUSTED, "decompression bomb"),
    "mediatype": (CODE.FAILED_PRECONDITION, "unsupported media type 'application/vnd.example.layer.v1.tar+lz4'"),
}


def _fails_cleanly(client: Client, image: str, code: grpc.StatusCode, message: str) -> float:
    start = time.monotonic()
    error = client.pull_error(image)
    elapsed = time.monotonic() - start
    assert error.code() == code, (image, error.details())
    assert message in error.details() and "PullImage: " in error.details(), error.details()
    assert client.images() == []
    assert client.leftovers() == set(), client.leftovers()
    return elapsed


@pytest.fixture
def client(crirt_daemon: StartDaemon, connect) -> Client:
    return connect(crirt_daemon(HOSTILE_SETTINGS))


def test_hostile_layers_are_refused_and_nothing_escapes(client: Client, catalog: Catalog) -> None:
    for case, (code, message) in LAYER_CASES.items():
        _fails_cleanly(client, catalog[f"hostile-{case}"], code, message)
    assert not os.path.lexists(ESCAPE) and not os.path.lexists(f"/tmp/{Path(ESCAPE).name}")
    assert client.pull(catalog["zstd"])  # and the daemon still pulls good images


@pytest.mark.parametrize(("faults", "code", "message"), [
    (Faults(status=500), CODE.UNAVAILABLE, "answered HTTP 500"),
    (Faults(status=503), CODE.UNAVAILABLE, "answered HTTP 503"),
    (Faults(redirect_loop=True), CODE.UNAVAILABLE, "more than 5 redirects"),
    (Faults(manifest=(os.urandom(300), "application/vnd.oci.image.manifest.v1+json")), CODE.UNAVAILABLE,
     "not valid JSON"),
    (Faults(manifest=(b'{"schemaVersion": 1, "name": "x", "tag": "1", "fsLayers": []}',
                      "application/vnd.docker.distribution.manifest.v1+prettyjws")), CODE.FAILED_PRECONDITION,
     "Docker schema 1"),
    (Faults(manifest=(b'{"schemaVersion": 2, "mediaType": "application/vnd.example+json"}',
                      "application/vnd.example+json")), CODE.FAILED_PRECONDITION, "unsupported media type"),
    (Faults(manifest=(b"{" + b" " * 4000 + b"}", "application/vnd.oci.image.manifest.v1+json")),
     CODE.RESOURCE_EXHAUSTED, "over the 2048-byte limit"),
    (Faults(corrupt_blobs_over=0), CODE.FAILED_PRECONDITION, "image config does not match its digest"),
    (Faults(corrupt_blobs_over=10_000), CODE.FAILED_PRECONDITION, "does not match its digest"),
    (Faults(truncate_blob_at=3000), CODE.UNAVAILABLE, "connection dropped 3 times"),
], ids=["500", "503", "redirect-loop", "garbage", "schema1", "unknown-manifest-type", "oversized-manifest",
        "config-digest-mismatch", "layer-digest-mismatch", "truncated"])
def test_misbehaving_registries(client: Client, catalog: Catalog, proxy: FaultProxy, faults: Faults,
                                code: grpc.StatusCode, message: str) -> None:
    proxy.reset(faults)
    try:
        _fails_cleanly(client, catalog["multi"].replace(catalog.host, proxy.host), code, message)
    finally:
        proxy.reset()


def test_a_stalled_download_is_abandoned_after_the_stall_timeout(client: Client, catalog: Catalog,
                                                                 proxy: FaultProxy) -> None:
    proxy.reset(Faults(stall_blob_after=5000))
    try:
        elapsed = _fails_cleanly(client, catalog["multi"].replace(catalog.host, proxy.host), CODE.UNAVAILABLE,
                                 "sent nothing for 2s")
    finally:
        proxy.reset()
    assert elapsed < 15


def test_a_dropped_connection_is_resumed_with_a_range_request(client: Client, catalog: Catalog,
                                                              proxy: FaultProxy) -> None:
    proxy.reset(Faults(drop_blob_after=5000))
    try:
        image_id = client.pull(catalog["multi"].replace(catalog.host, proxy.host))
        ranges = [r for _, path, r in proxy.requests if "/blobs/" in path and r]
    finally:
        proxy.reset()
    assert image_id == catalog.image_id(catalog.facts["multi"])
    assert ranges and all(r == "bytes=5000-" for r in ranges), proxy.requests
