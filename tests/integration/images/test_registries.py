"""Registry access: basic and token auth, CRI credentials and configured ones, TLS with a private CA and
client certificates, mirrors with and without falling back to the origin, air-gapped nodes."""

from __future__ import annotations

import base64
import json

import grpc
from support.images import Catalog, StartDaemon
from support.registry import FaultProxy, RemoteRegistry, ServiceLoop, http_get


def test_basic_auth_with_cri_or_configured_credentials(crirt_daemon: StartDaemon, connect,
                                                       basic_registry: RemoteRegistry) -> None:
    reg = basic_registry.registry
    client = connect(crirt_daemon())
    error = client.pull_error(basic_registry.image)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "username and password" in error.details()
    wrong = client.pull_error(basic_registry.image, username="alice", password="queen")
    assert wrong.code() == grpc.StatusCode.FAILED_PRECONDITION and "access denied" in wrong.details()
    assert client.pull(basic_registry.image, username="alice", password="wonderland") == basic_registry.image_id
    client.remove(basic_registry.image)
    assert client.pull(basic_registry.image, auth=base64.b64encode(b"alice:wonderland").decode()) == (
        basic_registry.image_id)
    bad = client.pull_error(basic_registry.image, auth="not base64!")
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT

    configured = connect(crirt_daemon(registries=f'[registries."{reg.host}"]\nusername = "alice"\n'
                                                 'password = "wonderland"\n', name="configured"))
    assert configured.pull(basic_registry.image) == basic_registry.image_id


def test_token_auth_anonymous_basic_identity_and_registry_tokens(crirt_daemon: StartDaemon, connect,
                                                                 token_registry: RemoteRegistry) -> None:
    tokens = token_registry.extra["tokens"]
    host = token_registry.registry.host
    private = f"{host}/private/app:1"
    client = connect(crirt_daemon())
    tokens.requests.clear()
    assert client.pull(token_registry.image) == token_registry.image_id  # public: an anonymous token suffices
    assert ("GET", "anonymous", "repository:public/app:pull") in tokens.requests
    denied = client.pull_error(private)
    assert denied.code() == grpc.StatusCode.FAILED_PRECONDITION and "access denied" in denied.details()

    assert client.pull(private, username="alice", password="wonderland") == token_registry.image_id
    assert ("GET", "alice", "repository:private/app:pull") in tokens.requests
    client.remove(private)
    assert client.pull(private, identity_token="refresh-token-of-alice") == token_registry.image_id
    assert ("POST", "alice", "repository:private/app:pull") in tokens.requests
    client.remove(private)
    refused = client.pull_error(private, identity_token="stolen")
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and "refused the credentials" in refused.details()

    status, body = http_get(f"http://{tokens.host}/token?service={tokens.service}&scope=repository:private/app:pull",
                            {"Authorization": "Basic " + base64.b64encode(b"alice:wonderland").decode()})
    assert status == 200
    count = len(tokens.requests)
    token = json.loads(body)["token"]
    assert client.pull(private, registry_token=token) == token_registry.image_id
    assert len(tokens.requests) == count  # the registry token was used as it is


def test_tls_with_a_private_ca_and_client_certificates(crirt_daemon: StartDaemon, connect,
                                                       tls_registry: RemoteRegistry) -> None:
    host = tls_registry.registry.host
    client = connect(crirt_daemon(registries=tls_registry.config))
    assert client.pull(tls_registry.image) == tls_registry.image_id

    unknown_ca = connect(crirt_daemon(registries=f'[registries."{host}"]\nplain_http = false\n', name="no-ca"))
    error = unknown_ca.pull_error(tls_registry.image)
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "TLS verification" in error.details()

    extra = tls_registry.extra
    no_client_cert = connect(crirt_daemon(registries=f'[registries."{host}"]\nplain_http = false\n'
                                                     f'ca_file = "{extra["ca"]}"\n', name="no-cert"))
    assert no_client_cert.pull_error(tls_registry.image).code() == grpc.StatusCode.UNAVAILABLE

    skip = connect(crirt_daemon(registries=f'[registries."{host}"]\nplain_http = false\ninsecure_skip_verify = true\n'
                                           f'cert_file = "{extra["cert"]}"\nkey_file = "{extra["key"]}"\n',
                                name="skip"))
    assert skip.pull(tls_registry.image) == tls_registry.image_id


def test_mirrors_then_origin(crirt_daemon: StartDaemon, connect, catalog: Catalog,
                             mirror_registry: RemoteRegistry) -> None:
    mirror = mirror_registry.registry.host
    config = (f'[registries."{catalog.host}"]\nmirrors = ["http://127.0.0.1:1", "http://{mirror}/m"]\n')
    client = connect(crirt_daemon(registries=config))
    # The mirror holds another image under that name, which shows who answered; a dead mirror is skipped.
    assert client.pull(catalog["multi"]) == mirror_registry.image_id
    assert client.pull(catalog["zstd"]) == catalog.image_id(catalog.facts["zstd"])  # not on the mirror: origin
    only = connect(crirt_daemon(registries=f'[registries."{catalog.host}"]\nmirrors = ["http://{mirror}/m"]\n'
                                           'fallback_to_origin = false\n', name="mirror-only"))
    error = only.pull_error(catalog["zstd"])
    assert error.code() == grpc.StatusCode.NOT_FOUND and mirror in error.details()


def test_air_gapped_node_takes_every_registry_from_one_local_registry(crirt_daemon: StartDaemon, connect,
                                                                      mirror_registry: RemoteRegistry) -> None:
    mirror = mirror_registry.registry.host
    config = "".join(f'[registries."{registry}"]\nmirrors = ["http://{mirror}/{prefix}"]\nfallback_to_origin = false\n'
                     for registry, prefix in (("docker.io", "dockerhub"), ("registry.k8s.io", "k8s"),
                                              ("gcr.io", "gcr")))
    client = connect(crirt_daemon(registries=config + '[registries."*"]\nblocked = true\n'))
    for text, canonical in (("busybox", "docker.io/library/busybox:latest"),
                            ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
                            ("gcr.io/distroless/static:nonroot", "gcr.io/distroless/static:nonroot")):
        image_id = client.pull(text)
        assert image_id == mirror_registry.image_id
        assert canonical in client.status(text).image.repo_tags
    assert client.pull_error("quay.io/nothing/here:1").code() == grpc.StatusCode.FAILED_PRECONDITION


def test_loopback_registries_need_no_configuration(crirt_daemon: StartDaemon, connect, catalog: Catalog,
                                                   services: ServiceLoop) -> None:
    ipv6 = FaultProxy(f"http://{catalog.host}")
    ipv6.start(services, "::1")
    client = connect(crirt_daemon())
    port = catalog.host.rsplit(":", 1)[1]
    expected = catalog.image_id(catalog.facts["zstd"])
    for host in (f"localhost:{port}", ipv6.host):
        assert client.pull(catalog["zstd"].replace(catalog.host, host)) == expected
    assert ipv6.requests and ipv6.host.startswith("[::1]:")
