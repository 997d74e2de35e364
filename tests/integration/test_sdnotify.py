"""sd_notify from a real daemon: READY=1 once the CRI socket answers, STOPPING=1 at SIGTERM.

The test plays systemd: it binds a unix datagram socket (a path, or a name in the abstract namespace, both of
which systemd may hand out), passes it as ``NOTIFY_SOCKET`` and reads what crirt sends.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from support.daemon import start_daemon

TIMEOUT = 30.0


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and its ``NOTIFY_SOCKET`` spelling (``/path`` or ``@name``)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    else:
        address = f"@crirt-test-notify-{os.getpid()}-{id(sock)}"
        sock.bind("\0" + address[1:])
    sock.settimeout(TIMEOUT)
    with sock:
        yield sock, address


def socket_answers(socket_path: Path, pb: ModuleType) -> bool:
    """Whether crirt's CRI socket answers a Version call right now (one short try)."""
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        try:
            return pb.grpc.RuntimeServiceStub(channel).Version(pb.VersionRequest(), timeout=2).runtime_name == "crirt"
        except grpc.RpcError:
            return False


def test_ready_after_the_socket_answers_and_stopping_at_sigterm(notify_socket: tuple[socket.socket, str],
                                                                tmp_path: Path, pb: ModuleType) -> None:
    sock, address = notify_socket
    base = tmp_path / "d"
    first: dict[str, object] = {}

    def receive_ready() -> None:
        """Take the first message and, at once, whether the CRI socket answered when it came."""
        try:
            first["message"] = sock.recv(4096).decode()
        except TimeoutError:
            return
        first["answered"] = socket_answers(base / "crirt.sock", pb)

    receiver = threading.Thread(target=receive_ready)
    receiver.start()
    daemon = start_daemon(base, env={"NOTIFY_SOCKET": address})
    try:
        receiver.join(TIMEOUT)
        assert not receiver.is_alive()
        assert "message" in first, f"no notification within {TIMEOUT}s:\n{daemon.log_text()}"
        lines = str(first["message"]).splitlines()
        assert lines[0] == "READY=1", lines
        assert f"STATUS=serving CRI on unix://{base / 'crirt.sock'}" in lines
        assert first["answered"], "READY=1 came before the CRI socket answered"
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log_text()
    assert sock.recv(4096).decode().splitlines() == ["STOPPING=1"]
    sock.settimeout(0.5)
    with pytest.raises(TimeoutError):  # READY once, STOPPING once, nothing else
        sock.recv(4096)
