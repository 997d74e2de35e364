"""Attach end to end: CRI Attach to a real container's main process (conmon's attach socket), independent clients."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import grpc
import pytest

from .conftest import NODE_DIR, StreamEnv, needs_clients, node

pytestmark = needs_clients

READER = 'while read line; do echo "got $line"; done; echo bye'


def state(env: StreamEnv, cid: str) -> int:
    return int(env.runtime.ContainerStatus(env.pb.ContainerStatusRequest(container_id=cid), timeout=10).status.state)


def test_two_attachers_see_the_output_and_stdin_reaches_the_process(env: StreamEnv) -> None:
    cid = env.container(READER, stdin=True)
    watcher_url = env.attach_url(cid)
    watcher = subprocess.Popen(
        ["node", str(NODE_DIR / "stream_ws.js"), watcher_url,
         json.dumps({"protocols": ["v5.channel.k8s.io"], "steps": [{"wait": "got two"}, {"disconnect": True}]})],
        stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    try:
        time.sleep(1)  # the watcher attaches first
        url = env.attach_url(cid, stdin=True)
        result = node("spdy", url, {"protocols": ["v4.channel.k8s.io"],
                                    "streams": ["error", "stdin", "stdout", "stderr"],
                                    "steps": [{"send": "one\n"}, {"wait": "got one"}, {"send": "two\n"},
                                              {"wait": "got two"}, {"end": True}]})
        assert result["stdout"] == "got one\ngot two\n"
        assert json.loads(result["error"]) == {"metadata": {}, "status": "Success"}
        seen = json.loads(watcher.communicate(timeout=60)[0].splitlines()[-1])
    finally:
        watcher.kill()
    assert "got one\ngot two\n" in seen["channels"]["1"]
    assert state(env, cid) == env.pb.CONTAINER_RUNNING, "detaching must leave the container running"


def test_attach_with_a_terminal_and_resize(env: StreamEnv) -> None:
    cid = env.container("exec /bin/sh", stdin=True, tty=True)
    url = env.attach_url(cid, stdin=True, tty=True)
    result = node("ws", url, {"protocols": ["v5.channel.k8s.io"],
                              "steps": [{"resize": [77, 22]}, {"send": "echo attached-$((1+1))\n"},
                                        {"wait": "attached-2"}, {"send": "stty size\n"}, {"wait": "22 77"},
                                        {"end": True}]})
    assert "attached-2" in result["channels"]["1"] and "\r\n" in result["channels"]["1"]
    assert json.loads(result["channels"]["3"]) == {"metadata": {}, "status": "Success"}
    assert state(env, cid) == env.pb.CONTAINER_RUNNING


def test_attach_ends_when_the_container_exits(env: StreamEnv) -> None:
    cid = env.container("read line; echo \"last: $line\"; exit 3", stdin=True)
    url = env.attach_url(cid, stdin=True)
    result = node("spdy", url, {"protocols": ["v4.channel.k8s.io"], "streams": ["error", "stdin", "stdout", "stderr"],
                                "steps": [{"send": "done\n"}]})
    assert result["stdout"] == "last: done\n"
    assert json.loads(result["error"])["status"] == "Success"


def test_attach_requests_are_validated(env: StreamEnv) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        env.runtime.Attach(env.pb.AttachRequest(container_id="nope", stdout=True), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
