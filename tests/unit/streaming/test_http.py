"""Request heads of the streaming server: parsing, routing and error responses."""

from __future__ import annotations

import pytest

from crirt.streaming.http import HttpError, error_response, parse_head
from crirt.streaming.server import route, url_host


def test_parse_head_keeps_headers_in_order_lower_cased() -> None:
    head = parse_head(b"POST /exec/abc?port=80&port=81 HTTP/1.1\r\nHost: x\r\nX-Stream-Protocol-Version: a\r\n"
                      b"x-stream-protocol-version: b\r\nConnection: keep-alive, Upgrade\r\n\r\n")
    assert (head.method, head.path, head.query) == ("POST", "/exec/abc", {"port": ["80", "81"]})
    assert head.all("x-stream-protocol-version") == ["a", "b"]
    assert head.tokens("connection") == {"keep-alive", "upgrade"}
    assert route(head) == ("exec", "abc")


@pytest.mark.parametrize("raw", [b"GARBAGE\r\n\r\n", b"GET /exec/x HTTP/1.1\r\n\r\n",
                                 b"GET /exec/x HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"])
def test_malformed_heads_are_400(raw: bytes) -> None:
    with pytest.raises(HttpError) as caught:
        parse_head(raw)
    assert caught.value.status == 400


@pytest.mark.parametrize(("target", "method", "status"), [("/", "GET", 404), ("/exec", "GET", 404),
                                                          ("/shell/x", "GET", 404), ("/exec/x/y", "GET", 404),
                                                          ("/attach/x", "PUT", 405)])
def test_routing_errors(target: str, method: str, status: int) -> None:
    head = parse_head(f"{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    with pytest.raises(HttpError) as caught:
        route(head)
    assert caught.value.status == status


def test_error_response_is_plain_text_and_closes() -> None:
    raw = error_response(HttpError(404, "unknown, used or expired token"))
    assert raw.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"Connection: close\r\n" in raw and raw.endswith(b"\r\n\r\nunknown, used or expired token\n")


def test_url_host() -> None:
    assert url_host("127.0.0.1") == "127.0.0.1"
    assert url_host("0.0.0.0") == "127.0.0.1"
    assert url_host("::") == "[::1]"
    assert url_host("fd00::1") == "[fd00::1]"
