"""``crirt ctl attach``, ``port-forward`` and ``exec -i``/``-it`` against the daemon's streaming server, over
each ``--transport`` (SPDY, the default as with crictl, and WebSocket)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import urllib.request

import pytest

from crirt.ctl.streaming import TRANSPORTS, stream_session
from crirt.ctl.transport import TransportError

from .conftest import StreamEnv, needs_clients

pytestmark = needs_clients


@pytest.fixture(params=["spdy", "websocket"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def ctl(env: StreamEnv, verb: str, transport: str, *args: str) -> list[str]:
    """``crirt ctl VERB --transport TRANSPORT ARGS...`` against the test daemon."""
    return [sys.executable, "-m", "crirt", "ctl", "-r", env.daemon.endpoint, verb, "--transport", transport, *args]


def test_ctl_attach_passes_stdin_and_output(env: StreamEnv, transport: str) -> None:
    cid = env.container('while read line; do echo "got $line"; done', stdin=True)
    proc = subprocess.Popen(ctl(env, "attach", transport, "-i", cid), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        for word in ("one", "two"):
            proc.stdin.write(f"{word}\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == f"got {word}\n"
        proc.stdin.close()  # stdin's end detaches; the container keeps running
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    status = env.runtime.ContainerStatus(env.pb.ContainerStatusRequest(container_id=cid), timeout=10).status
    assert status.state == env.pb.CONTAINER_RUNNING


def test_ctl_exec_streams_and_returns_the_exit_code(env: StreamEnv, transport: str) -> None:
    cid = env.container("trap 'exit 0' TERM; /bin/busybox sleep 100000 & wait")
    done = subprocess.run(ctl(env, "exec", transport, "-i", cid, "sh", "-c", "cat; echo err >&2; exit 3"),
                          input="piped\n", capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (3, "piped\n", "err\n")
    done = subprocess.run(ctl(env, "exec", transport, cid, "echo", "plain"), capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout) == (0, "plain\n")


def test_ctl_exec_carries_megabytes_both_ways(env: StreamEnv, transport: str) -> None:
    """Several windows' worth of stdin (its EOF ends ``wc``) and of output, byte for byte."""
    cid = env.container("trap 'exit 0' TERM; /bin/busybox sleep 100000 & wait")
    done = subprocess.run(ctl(env, "exec", transport, "-i", cid, "/bin/busybox", "wc", "-c"),
                          input=b"z" * 3_000_000, capture_output=True, timeout=60)
    assert (done.returncode, done.stdout.split()) == (0, [b"3000000"]), done.stderr[-2000:]
    script = "/bin/busybox yes 0123456789abcdef | /bin/busybox head -c 5000000"
    done = subprocess.run(ctl(env, "exec", transport, cid, "sh", "-c", script), capture_output=True, timeout=60)
    assert done.returncode == 0 and done.stdout == (b"0123456789abcdef\n" * 300_000)[:5_000_000]


def test_ctl_exec_reports_refusals(env: StreamEnv, transport: str) -> None:
    """A used URL is refused with the server's status; an unknown transport is named."""
    cid = env.container("trap 'exit 0' TERM; /bin/busybox sleep 100000 & wait")
    url = env.exec_url(cid, ["/bin/busybox", "true"])
    assert asyncio.run(stream_session(TRANSPORTS[transport](), url, stdin=False, tty=False)) == 0
    with pytest.raises(TransportError, match="refused the session: 404"):
        asyncio.run(stream_session(TRANSPORTS[transport](), url, stdin=False, tty=False))
    done = subprocess.run(ctl(env, "exec", "carrier-pigeon", "c", "true"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "--transport 'carrier-pigeon': expected spdy or websocket" in done.stderr


def read_until(fd: int, wanted: bytes, seconds: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + seconds
    while wanted not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 1)[0]:
            try:
                seen += os.read(fd, 4096)
            except OSError:  # EIO: the other side of the terminal is closed
                break
    return seen


def test_ctl_exec_with_a_terminal(env: StreamEnv, transport: str) -> None:
    """``exec -it`` on a local terminal (a pty here): raw keys in, the remote terminal's size follows ours."""
    cid = env.container("trap 'exit 0' TERM; /bin/busybox sleep 100000 & wait")
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
    proc = subprocess.Popen(ctl(env, "exec", transport, "-it", cid, "/bin/sh"), stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    try:
        assert b"/ # " in read_until(master, b"/ # "), "no prompt from the remote shell"
        os.write(master, b"stty size; exit 4\r")
        seen = read_until(master, b"30 90")
        assert b"30 90" in seen, seen
        assert proc.wait(30) == 4
    finally:
        proc.kill()
        os.close(master)


def test_ctl_port_forward(env: StreamEnv, transport: str) -> None:
    """Several connections through one ``port-forward``, a small page and a megabyte, byte for byte."""
    port = 8090 if transport == "spdy" else 8091  # the pod's network is shared by the runs
    env.container(f"mkdir -p /tmp/w && echo via-{transport} > /tmp/w/index.html && "
                  "/bin/busybox yes 0123456789abcdef | /bin/busybox head -c 1048576 > /tmp/w/big && "
                  f"exec /bin/busybox httpd -f -p {port} -h /tmp/w")
    proc = subprocess.Popen(ctl(env, "port-forward", transport, env.pod, f"0:{port}"), stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.match(rf"Forwarding from 127\.0\.0\.1:(\d+) -> {port}", line)
        assert found, line
        url = f"http://127.0.0.1:{found[1]}/"
        body = ""
        for _ in range(20):  # httpd may still be starting
            try:
                body = urllib.request.urlopen(url, timeout=10).read().decode()
                break
            except OSError:
                time.sleep(0.25)
        assert body == f"via-{transport}\n"
        bodies = [urllib.request.urlopen(url, timeout=10).read().decode() for _ in range(3)]
        assert bodies == [f"via-{transport}\n"] * 3
        big = urllib.request.urlopen(url + "big", timeout=30).read()
        assert big == (b"0123456789abcdef\n" * 61_681)[:1_048_576]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
