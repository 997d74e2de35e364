"""``crirt ctl attach``, ``port-forward`` and ``exec -i`` against the daemon's streaming server."""

from __future__ import annotations

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

from .conftest import StreamEnv, needs_clients

pytestmark = needs_clients


def ctl(env: StreamEnv, *args: str) -> list[str]:
    return [sys.executable, "-m", "crirt", "ctl", "-r", env.daemon.endpoint, *args]


def test_ctl_attach_passes_stdin_and_output(env: StreamEnv) -> None:
    cid = env.container('while read line; do echo "got $line"; done', stdin=True)
    proc = subprocess.Popen(ctl(env, "attach", "-i", cid), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
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


def test_ctl_exec_streams_and_returns_the_exit_code(env: StreamEnv) -> None:
    cid = env.container("trap 'exit 0' TERM; /bin/busybox sleep 100000 & wait")
    done = subprocess.run(ctl(env, "exec", "-i", cid, "sh", "-c", "cat; echo err >&2; exit 3"), input="piped\n",
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (3, "piped\n", "err\n")
    done = subprocess.run(ctl(env, "exec", cid, "echo", "plain"), capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "plain\n")


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


def test_ctl_exec_with_a_terminal(env: StreamEnv) -> None:
    """``exec -it`` on a local terminal (a pty here): raw keys in, the remote terminal's size follows ours."""
    cid = env.container("trap 'exit 0' TERM; /bin/busybox sleep 100000 & wait")
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
    proc = subprocess.Popen(ctl(env, "exec", "-it", cid, "/bin/sh"), stdin=slave, stdout=slave, stderr=slave,
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


def test_ctl_port_forward(env: StreamEnv) -> None:
    env.container("mkdir -p /tmp/w && echo via-ctl > /tmp/w/index.html && "
                  "exec /bin/busybox httpd -f -p 8090 -h /tmp/w")
    proc = subprocess.Popen(ctl(env, "port-forward", env.pod, "0:8090"), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> 8090", line)
        assert found, line
        url = f"http://127.0.0.1:{found[1]}/"
        body = ""
        for _ in range(20):  # httpd may still be starting
            try:
                body = urllib.request.urlopen(url, timeout=10).read().decode()
                break
            except OSError:
                time.sleep(0.25)
        assert body == "via-ctl\n"
        bodies = [urllib.request.urlopen(url, timeout=10).read().decode() for _ in range(3)]
        assert bodies == ["via-ctl\n"] * 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
