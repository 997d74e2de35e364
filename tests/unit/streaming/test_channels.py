"""The remote command protocol pieces: version choice, the status message, resize decoding, expected streams."""

from __future__ import annotations

import json

import pytest

from crirt.streaming.channels import (
    ERROR,
    RESIZE,
    SPDY_PROTOCOLS,
    STDIN,
    STDOUT,
    ResizeDecoder,
    expected_streams,
    negotiate,
    status_message,
)
from crirt.streaming.requests import AttachRequest, ExecRequest


def test_negotiate_prefers_the_newest_version_the_client_offers() -> None:
    assert negotiate(["channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io"], SPDY_PROTOCOLS) \
        == "v4.channel.k8s.io"
    assert negotiate(["v2.channel.k8s.io"], SPDY_PROTOCOLS) == "v2.channel.k8s.io"
    assert negotiate([], SPDY_PROTOCOLS) == ""
    assert negotiate(["v9.channel.k8s.io"], SPDY_PROTOCOLS) is None


def test_v4_status_carries_the_exit_code() -> None:
    assert json.loads(status_message("v4.channel.k8s.io", exit_code=0)) == {"metadata": {}, "status": "Success"}
    failure = json.loads(status_message("v4.channel.k8s.io", exit_code=3, command=["sh", "-c", "exit 3"]))
    assert failure["status"] == "Failure" and failure["reason"] == "NonZeroExitCode"
    assert failure["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}
    assert "exit code 3" in failure["message"]
    error = json.loads(status_message("v5.channel.k8s.io", error="container x is not running"))
    assert error["reason"] == "InternalError" and error["code"] == 500
    assert "container x is not running" in error["message"]


def test_older_versions_send_text_and_nothing_on_success() -> None:
    assert status_message("v3.channel.k8s.io", exit_code=0) == b""
    assert b"exit code 2" in status_message("channel.k8s.io", exit_code=2)
    assert status_message("", error="boom") == b"boom"


def test_resize_messages_may_arrive_split_or_together() -> None:
    decoder = ResizeDecoder()
    assert decoder.feed(b'{"Width":100,') == []
    assert decoder.feed(b'"Height":33}{"Width":80,"Height":24}\n{"Wid') == [(100, 33), (80, 24)]
    assert decoder.feed(b'th":1,"Height":2}') == [(1, 2)]


@pytest.mark.parametrize("garbage", [b"[1,2]", b'{"Width":-1,"Height":2}', b'{"Width":"80","Height":2}',
                                     b"x" * 5000])
def test_resize_garbage_is_refused(garbage: bytes) -> None:
    with pytest.raises(ValueError, match="resize"):
        ResizeDecoder().feed(garbage)


def test_expected_streams_follow_the_request_and_version() -> None:
    tty = ExecRequest("c", ("sh",), tty=True, stdin=True, stdout=True, stderr=False)
    assert expected_streams(tty, "v4.channel.k8s.io") == {ERROR, STDIN, STDOUT, RESIZE}
    assert expected_streams(tty, "v2.channel.k8s.io") == {ERROR, STDIN, STDOUT}
    attach = AttachRequest("c", tty=False, stdin=False, stdout=True, stderr=True)
    assert expected_streams(attach, "v4.channel.k8s.io") == {ERROR, STDOUT, 2}
