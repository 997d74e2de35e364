"""The shim v2 driver's pure parts: the start protocol's output, the CRI log format, exits and stdio files;
and the CRI log copier on real FIFOs."""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import pytest

from crirt.shim.contract import Stdio
from crirt.shim.crilog import CriLog, format_chunk, timestamp
from crirt.shim.taskv2 import already_finished, exit_status, stdio_fifos
from crirt.shim.taskv2_attach import frames
from crirt.shim.taskv2_start import ShimCommand, ShimFailure, parse_start_output

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize("text", [
    "unix:///run/containerd/s/0123abcd",
    "unix:///run/containerd/s/0123abcd\n",
    '{"version": 2, "address": "unix:///run/containerd/s/0123abcd", "protocol": "ttrpc"}\n',
])
def test_start_output_legacy_and_json_bootstrap(text: str) -> None:
    assert parse_start_output(text) == "unix:///run/containerd/s/0123abcd"


@pytest.mark.parametrize(("text", "problem"), [
    ("", "printed no address"),
    ("time=now level=error msg=boom\n", "printed no address but"),
    ('{"version": 3, "address": "unix:///x", "protocol": "ttrpc"}', "bootstrap version 3"),
    ('{"version": 2, "address": "unix:///x", "protocol": "grpc"}', "protocol 'grpc'"),
    ('{"version": 2, "protocol": "ttrpc"}', "no address"),
    ('{"version": 2,', "unreadable JSON"),
    ("[1]", "printed no address but"),
])
def test_start_output_that_is_refused(text: str, problem: str) -> None:
    with pytest.raises(ShimFailure, match=problem):
        parse_start_output(text)


def test_shim_command_line_and_environment(tmp_path: Path) -> None:
    command = ShimCommand(binary=Path("/usr/bin/containerd-shim-kata-v2"), namespace="crirt", address="/s/shim.sock",
                          events_address="@events", publish_binary="/bin/true", env={"KATA_CONF_FILE": "/k.toml"})
    assert command.argv("c1", "start") == [
        "/usr/bin/containerd-shim-kata-v2", "-namespace", "crirt", "-address", "/s/shim.sock",
        "-publish-binary", "/bin/true", "-id", "c1", "start"]
    assert command.argv("c1", "delete", Path("/b/c1"))[-3:] == ["-bundle", "/b/c1", "delete"]
    env = command.environ(tmp_path)
    assert (env["TTRPC_ADDRESS"], env["GRPC_ADDRESS"], env["NAMESPACE"], env["PWD"], env["KATA_CONF_FILE"]) == (
        "@events", "/s/shim.sock", "crirt", str(tmp_path), "/k.toml")


async def test_a_missing_shim_binary_is_a_failed_precondition(tmp_path: Path) -> None:
    from crirt.errors import FailedPrecondition

    command = ShimCommand(binary=tmp_path / "containerd-shim-nothing-v2", namespace="n", address="/a",
                          events_address="@e", publish_binary="/bin/true")
    with pytest.raises(FailedPrecondition, match="containerd-shim-nothing-v2 is not installed"):
        await command.start("c1", tmp_path)


async def test_a_failing_start_reports_what_the_shim_printed(tmp_path: Path) -> None:
    fake = tmp_path / "containerd-shim-fails-v2"
    fake.write_text("#!/bin/sh\necho \"bundle $PWD has no config.json\" >&2\nexit 1\n")
    fake.chmod(0o755)
    command = ShimCommand(binary=fake, namespace="n", address="/a", events_address="@e", publish_binary="/bin/true")
    with pytest.raises(ShimFailure, match=f"containerd-shim-fails-v2 start c1: bundle {tmp_path} has no config.json"):
        await command.start("c1", tmp_path)


def test_cri_log_lines() -> None:
    ns = 1475713029_669794202
    assert timestamp(ns) == "2016-10-06T00:17:09.669794202Z"
    assert timestamp(1_000_000_000) == "1970-01-01T00:00:01.000000000Z"
    stamp = b"2016-10-06T00:17:09.669794202Z"
    assert format_chunk("stdout", b"one\ntwo\n", ns) == stamp + b" stdout F one\n" + stamp + b" stdout F two\n"
    assert format_chunk("stderr", b"a\npart", ns) == stamp + b" stderr F a\n" + stamp + b" stderr P part\n"
    assert format_chunk("stdout", b"\n", ns) == stamp + b" stdout F \n"
    assert format_chunk("stdout", b"", ns) == b""


def test_exits_and_stdio_files() -> None:
    at = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC)
    assert exit_status(137, at).exit_code == 137
    assert exit_status(137, at).exited_at == int(at.timestamp()) * 10**9 + 678901000
    before = time.time_ns()
    assert exit_status(0, datetime.datetime(1, 1, 1, tzinfo=datetime.UTC)).exited_at >= before
    assert exit_status(0, None).exited_at >= before
    from crirt.errors import NotFound

    assert already_finished(NotFound("containerd.task.v2.Task/Kill: process already finished: not found"))
    assert not already_finished(NotFound("containerd.task.v2.Task/Kill: container not created: not found"))
    assert stdio_fifos(Stdio()) == ["stdout", "stderr"]
    assert stdio_fifos(Stdio(log_path=Path("/l"), terminal=True, stdin=True)) == ["stdout", "stdin"]
    assert stdio_fifos(Stdio(stdin=True)) == ["stdout", "stderr", "stdin"]
    assert frames("stdout", b"x" * 9000) == [b"\x02" + b"x" * 8192, b"\x02" + b"x" * 808]
    assert frames("stderr", b"e") == [b"\x03e"]


async def test_the_copier_writes_cri_lines_and_reopens_on_request(tmp_path: Path) -> None:
    import asyncio

    for name in ("out", "err"):
        os.mkfifo(tmp_path / name)
    log = tmp_path / "0.log"
    copier = CriLog(log, tmp_path / "out", tmp_path / "err")
    out = os.open(tmp_path / "out", os.O_WRONLY)
    err = os.open(tmp_path / "err", os.O_WRONLY)
    try:
        os.write(out, b"hello\nwor")
        await asyncio.sleep(0.05)
        os.write(out, b"ld\n")
        os.write(err, b"oops\n")
        await asyncio.sleep(0.05)
        os.close(out)  # the writer going away is not the end: the copier keeps its FIFO open
        out = os.open(tmp_path / "out", os.O_WRONLY)
        log.rename(tmp_path / "0.log.1")
        copier.reopen()
        os.write(out, b"after rotation")
    finally:
        os.close(out)
        os.close(err)
    copier.close()  # drains what is still in the FIFO
    rotated = [line.split(" ", 1)[1] for line in (tmp_path / "0.log.1").read_text().splitlines()]
    assert rotated == ["stdout F hello", "stdout P wor", "stdout F ld", "stderr F oops"]
    assert [line.split(" ", 1)[1] for line in log.read_text().splitlines()] == ["stdout P after rotation"]
