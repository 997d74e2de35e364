"""Bad input to the streaming server of a real daemon: used and expired URLs, malformed upgrades, unknown
protocols, garbage after the upgrade. Each is refused on its own; the server and other sessions carry on."""

from __future__ import annotations

import os
import socket
import time
from urllib.parse import urlsplit

import pytest

from .conftest import TOKEN_TTL, StreamEnv, gone, needs_clients, node, running

pytestmark = needs_clients

SPDY_EXEC = {"protocols": ["v4.channel.k8s.io"], "streams": ["error", "stdout", "stderr"]}


@pytest.fixture(scope="module")
def cid(env: StreamEnv) -> str:
    return env.container("trap 'exit 0' TERM; /bin/busybox sleep 100000 & wait")


def raw(url: str, head: str, then: bytes = b"") -> bytes:
    """Send ``head`` for ``url``'s path on a plain socket and, once the answer's head is in, ``then``;
    everything the server sent until it closed (or reset: closing on unread garbage makes TCP send RST)."""
    parts = urlsplit(url)
    answer = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head.replace("PATH", parts.path).encode())
        try:
            if then:
                while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
                    answer += chunk
                sock.sendall(then)
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def works(env: StreamEnv, cid: str) -> None:
    result = node("spdy", env.exec_url(cid, ["echo", "ok"]), SPDY_EXEC)
    assert result["stdout"] == "ok\n"


def test_a_used_url_is_404(env: StreamEnv, cid: str) -> None:
    url = env.exec_url(cid, ["echo", "once"])
    assert node("spdy", url, SPDY_EXEC)["stdout"] == "once\n"
    assert node("spdy", url, SPDY_EXEC)["status"] == 404
    assert node("ws", url, {"protocols": ["v5.channel.k8s.io"]})["status"] == 404


def test_an_expired_url_is_404(env: StreamEnv, cid: str) -> None:
    url = env.exec_url(cid, ["echo", "late"])
    time.sleep(TOKEN_TTL + 0.5)
    assert node("ws", url, {"protocols": ["v5.channel.k8s.io"]})["status"] == 404


def test_unknown_protocols_are_refused(env: StreamEnv, cid: str) -> None:
    result = node("spdy", env.exec_url(cid, ["echo"]), {**SPDY_EXEC, "protocols": ["v9.channel.k8s.io"]})
    assert result["status"] == 403 and "unable to negotiate protocol" in result["body"]
    result = node("ws", env.exec_url(cid, ["echo"]), {"protocols": ["v9.channel.k8s.io", "bogus"]})
    assert result["status"] == 403 and "v9.channel.k8s.io" in result["body"]
    result = node("spdy", env.port_forward_url(), {"protocols": ["v4.channel.k8s.io"], "forward": []})
    assert result["status"] == 403
    works(env, cid)


def test_a_websocket_without_subprotocol_gets_the_plain_channel_protocol(env: StreamEnv, cid: str) -> None:
    result = node("ws", env.exec_url(cid, ["echo", "plain"]), {"protocols": []})
    assert result["protocol"] == "" and result["channels"]["1"] == "plain\n"


def test_malformed_requests_are_400(env: StreamEnv, cid: str) -> None:
    url = env.exec_url(cid, ["echo"])
    assert raw(url, "GET PATH HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 400 ")  # no upgrade at all
    url = env.exec_url(cid, ["echo"])
    answer = raw(url, "GET PATH HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                      "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Sec-WebSocket-Key" in answer
    assert raw(url, "\x00\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(url, "GET PATH HTTP/1.1\r\nHost: x\r\n" + "X-Pad: " + "a" * 20000 + "\r\n\r\n")[:12] \
        in (b"HTTP/1.1 431", b"HTTP/1.1 400")
    works(env, cid)


def test_garbage_after_the_upgrade_ends_only_that_connection(env: StreamEnv, cid: str) -> None:
    for _ in range(3):
        url = env.exec_url(cid, ["echo"])
        answer = raw(url, "POST PATH HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                          "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n", then=os.urandom(4096))
        assert answer.startswith(b"HTTP/1.1 101 ")
        url = env.exec_url(cid, ["echo"])
        answer = raw(url, "GET PATH HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                          "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          "Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n", then=os.urandom(4096))
        assert answer.startswith(b"HTTP/1.1 101 ")
    works(env, cid)
    assert env.daemon.proc.poll() is None


def test_a_client_that_never_reads_stalls_only_its_own_session(env: StreamEnv, cid: str) -> None:
    url = env.exec_url(cid, ["sh", "-c", "exec yes stalled-5151"])
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n".encode())
        assert sock.recv(12) == b"HTTP/1.1 101"
        time.sleep(2)  # `yes` fills every buffer on the way and blocks
        assert running("yes stalled-5151")
        works(env, cid)
    assert gone("yes stalled-5151"), "the stalled session's process outlived its client"
