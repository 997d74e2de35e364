"""Exec end to end: CRI Exec on a real runc container, then an independent SPDY or WebSocket client on the URL."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from .conftest import StreamEnv, gone, needs_clients, node

pytestmark = needs_clients

SPDY_EXEC = {"protocols": ["v4.channel.k8s.io"], "streams": ["error", "stdout", "stderr"]}
PROMPT = "/ # "
"""busybox sh's prompt: typing before it shows can be eaten by its terminal queries, so the tests wait for it."""
IDLE = "trap 'exit 0' TERM; /bin/busybox sleep 100000 & wait"


@pytest.fixture(scope="module")
def cid(env: StreamEnv) -> str:
    return env.container(IDLE)


def exit_code(status: str) -> int:
    """The exit code a v4/v5 status object reports (0 for Success)."""
    document = json.loads(status)
    if document["status"] == "Success":
        return 0
    assert document["reason"] == "NonZeroExitCode", document
    return int(document["details"]["causes"][0]["message"])


def test_spdy_exec_with_stdin_stdout_stderr_and_exit_code(env: StreamEnv, cid: str) -> None:
    url = env.exec_url(cid, ["sh", "-c", "cat; echo oops >&2; exit 3"], stdin=True)
    result = node("spdy", url, {"protocols": ["v4.channel.k8s.io", "v3.channel.k8s.io"],
                                "streams": ["error", "stdin", "stdout", "stderr"],
                                "steps": [{"send": "hello\n"}, {"wait": "hello"}, {"send": "world\n"},
                                          {"end": True}]})
    assert result["protocol"] == "v4.channel.k8s.io"
    assert (result["stdout"], result["stderr"]) == ("hello\nworld\n", "oops\n")
    assert exit_code(result["error"]) == 3


def test_spdy_exec_with_a_tty_echoes_and_resizes(env: StreamEnv, cid: str) -> None:
    url = env.exec_url(cid, ["/bin/sh"], tty=True, stdin=True)
    result = node("spdy", url, {"protocols": ["v4.channel.k8s.io"], "streams": ["error", "stdin", "stdout", "resize"],
                                "steps": [{"resize": [100, 33]}, {"wait": PROMPT}, {"send": "echo mark-$((40+2))\n"},
                                          {"wait": "mark-42"}, {"send": "stty size\n"}, {"wait": "33 100"},
                                          {"resize": [120, 40]}, {"send": "sleep 1; stty size; exit 7\n"}]})
    stdout = result["stdout"]
    assert "echo mark-$((40+2))" in stdout, "the terminal echoes what was typed"
    assert "33 100" in stdout and "40 120" in stdout
    assert "\r\n" in stdout  # output went through a terminal
    assert exit_code(result["error"]) == 7


def test_bulk_stdin_and_stdout(env: StreamEnv, cid: str) -> None:
    """More than any window both ways: 4 MiB of stdin counted by the process, 64 MiB of output counted by us."""
    url = env.exec_url(cid, ["sh", "-c", "wc -c"], stdin=True)
    result = node("spdy", url, {**SPDY_EXEC, "streams": ["error", "stdin", "stdout", "stderr"],
                                "steps": [{"sendBytes": 4 << 20}, {"end": True}]})
    assert result["stdout"].strip() == str(4 << 20)
    url = env.exec_url(cid, ["sh", "-c", "head -c 67108864 /dev/zero"])
    result = node("spdy", url, {**SPDY_EXEC, "lengthsOnly": True}, timeout=180)
    assert result["stdoutLength"] == 64 << 20
    assert exit_code(result["error"]) == 0


def test_a_signal_exit_is_128_plus_the_signal(env: StreamEnv, cid: str) -> None:
    url = env.exec_url(cid, ["sh", "-c", "kill -9 $$"])
    result = node("spdy", url, {"protocols": ["v4.channel.k8s.io"], "streams": ["error", "stdout", "stderr"]})
    assert exit_code(result["error"]) == 137


def test_older_spdy_versions_report_errors_as_text(env: StreamEnv, cid: str) -> None:
    url = env.exec_url(cid, ["sh", "-c", "echo v2; exit 4"])
    result = node("spdy", url, {"protocols": ["v2.channel.k8s.io"], "streams": ["error", "stdout", "stderr"]})
    assert result["protocol"] == "v2.channel.k8s.io" and result["stdout"] == "v2\n"
    assert "exit code 4" in result["error"] and not result["error"].startswith("{")
    url = env.exec_url(cid, ["sh", "-c", "exit 0"])
    result = node("spdy", url, {"protocols": ["channel.k8s.io"], "streams": ["error", "stdout", "stderr"]})
    assert result["error"] == ""


def test_websocket_v5_closes_stdin(env: StreamEnv, cid: str) -> None:
    url = env.exec_url(cid, ["sh", "-c", "wc -c; exit 5"], stdin=True)
    result = node("ws", url, {"protocols": ["v5.channel.k8s.io", "v4.channel.k8s.io"],
                              "steps": [{"send": "0123456789"}, {"end": True}]})
    assert result["protocol"] == "v5.channel.k8s.io"
    assert result["firsts"][0] == {"channel": 1, "length": 0, "hex": ""}, "the server announces itself on stdout"
    assert result["channels"]["1"].strip() == "10"
    assert exit_code(result["channels"]["3"]) == 5
    assert result["closeCode"] == 1000


def test_websocket_v4_base64_with_a_tty(env: StreamEnv, cid: str) -> None:
    url = env.exec_url(cid, ["/bin/sh"], tty=True, stdin=True)
    result = node("ws", url, {"protocols": ["v4.base64.channel.k8s.io"],
                              "steps": [{"resize": [90, 20]}, {"wait": PROMPT}, {"send": "stty size\n"},
                                        {"wait": "20 90"}, {"send": "exit\n"}]})
    assert result["protocol"] == "v4.base64.channel.k8s.io"
    assert "20 90" in result["channels"]["1"]
    assert exit_code(result["channels"]["3"]) == 0


def test_a_client_that_disappears_leaves_no_process_behind(env: StreamEnv, cid: str) -> None:
    marker = "4242"
    fds = Path(f"/proc/{env.daemon.proc.pid}/fd")
    node("spdy", env.exec_url(cid, ["echo"]), SPDY_EXEC)  # warm up: whatever a first session opens once
    baseline = len(list(fds.iterdir()))
    for script in ("spdy", "ws"):
        url = env.exec_url(cid, ["sh", "-c", f"echo started; exec /bin/busybox sleep {marker}"], stdin=True)
        scenario = {"protocols": ["v4.channel.k8s.io"], "streams": ["error", "stdin", "stdout", "stderr"],
                    "steps": [{"wait": "started"}, {"disconnect": True}]}
        assert node(script, url, scenario)["disconnected"]
        assert gone(f"sleep {marker}"), f"{script}: the exec'd process outlived its client"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(list(fds.iterdir())) > baseline:
        time.sleep(0.1)
    assert len(list(fds.iterdir())) <= baseline, "the daemon kept file descriptors of the sessions"
    # the container and the daemon carry on
    url = env.exec_url(cid, ["echo", "still here"])
    result = node("spdy", url, {"protocols": ["v4.channel.k8s.io"], "streams": ["error", "stdout", "stderr"]})
    assert result["stdout"] == "still here\n"


def test_exec_requests_are_validated(env: StreamEnv, cid: str) -> None:
    pb = env.pb
    with pytest.raises(grpc.RpcError) as caught:
        env.runtime.Exec(pb.ExecRequest(container_id="no-such-container", cmd=["true"], stdout=True), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        env.runtime.Exec(pb.ExecRequest(container_id=cid, cmd=["true"]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stopped = env.container("true")
    env.runtime.StopContainer(pb.StopContainerRequest(container_id=stopped, timeout=1), timeout=30)
    with pytest.raises(grpc.RpcError) as caught:
        env.runtime.Exec(pb.ExecRequest(container_id=stopped, cmd=["true"], stdout=True), timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not running" in (caught.value.details() or "")
