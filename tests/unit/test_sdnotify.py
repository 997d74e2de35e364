"""crirt.sdnotify without a daemon: the variable leaves the environment, odd addresses and dead sockets are
reported, not raised (a missing READY is for systemd to act on)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

import pytest

from crirt.sdnotify import ENVIRONMENT, Notifier


def test_from_environment_takes_the_variable_away(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENVIRONMENT, str(tmp_path / "notify.sock"))
    notifier = Notifier.from_environment()
    assert notifier.address == str(tmp_path / "notify.sock")
    assert ENVIRONMENT not in os.environ  # so conmon, runtimes and shims started later never see it


def test_without_the_variable_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENVIRONMENT, raising=False)
    notifier = Notifier.from_environment()
    assert notifier.address is None
    asyncio.run(notifier.send("READY=1"))  # returns without a socket to send to


def test_an_address_of_another_kind_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="crirt.sdnotify"):
        notifier = Notifier("vsock:2:1234")
    assert notifier.address is None
    assert "vsock:2:1234" in caplog.text and ENVIRONMENT in caplog.text


def test_a_dead_socket_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="crirt.sdnotify"):
        asyncio.run(Notifier(str(tmp_path / "gone.sock")).send("READY=1"))
    assert "gone.sock" in caplog.text and "READY=1" in caplog.text


def test_several_assignments_go_in_one_datagram(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify.sock"))
        asyncio.run(Notifier(str(tmp_path / "notify.sock")).send("READY=1", "STATUS=up"))
        sock.settimeout(5)
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
