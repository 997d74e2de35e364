"""The streaming targets against real runc containers in real pods: exec with and without a terminal, attach by
several clients, and TCP dials into a pod's network namespace. crirt's services run in this process (on uvloop,
as the daemon does), driven through the bus, because the targets are called with the services themselves."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from support.daemon import write_config
from support.images import Layout, busybox_layer, push, unmount_under
from support.network import BridgeNetwork, kill_containers_under, runc_shim_installed
from support.registry import start_registry

from crirt.commands.containers import CreateContainerCommand, StartContainerCommand
from crirt.commands.images import PullImageCommand
from crirt.commands.sandboxes import RemovePodSandboxCommand, RunPodSandboxCommand, StopPodSandboxCommand
from crirt.config import load_config
from crirt.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from crirt.model.enums import NamespaceMode
from crirt.server import App, build_app
from crirt.streaming.targets import StdioTarget, dial_pod_port, open_attach, open_exec

pytestmark = pytest.mark.skipif(not runc_shim_installed(), reason="the runc shim plugin is not installed")

T = TypeVar("T")
IDLE = "trap 'exit 0' TERM; /bin/busybox sleep 100000 & wait"
HTTPD = ("mkdir -p /www && echo hello-from-the-pod > /www/index.html && "
         "exec /bin/busybox httpd -f -p 127.0.0.1:8080 -h /www")


@dataclass
class Local:
    """crirt's services on an event loop of this process, the test image, and the pods made so far."""

    app: App
    loop: asyncio.AbstractEventLoop
    image: str
    logs: Path
    pods: list[str] = field(default_factory=list)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 60))

    async def pod(self, *, host_network: bool = False) -> str:
        name = f"targets-{secrets.token_hex(3)}"
        network = NamespaceMode.NODE if host_network else NamespaceMode.POD
        result = await self.app.bus.dispatch(RunPodSandboxCommand.model_validate({"config": {
            "metadata": {"name": name, "namespace": "crirt-test", "uid": f"uid-{name}"},
            "hostname": "" if host_network else name, "log_directory": str(self.logs / name),
            "linux": {"security_context": {"namespace_options": {
                "network": network, "pid": NamespaceMode.CONTAINER, "ipc": NamespaceMode.POD}}}}}))
        self.pods.append(result.pod_sandbox_id)
        return str(result.pod_sandbox_id)

    async def container(self, pod: str, script: str, *, stdin: bool = False, stdin_once: bool = False,
                        tty: bool = False, start: bool = True) -> str:
        name = f"c-{secrets.token_hex(3)}"
        created = await self.app.bus.dispatch(CreateContainerCommand.model_validate({
            "pod_sandbox_id": pod, "config": {
                "metadata": {"name": name}, "image": {"image": self.image}, "command": ["/bin/sh", "-c", script],
                "stdin": stdin, "stdin_once": stdin_once, "tty": tty, "log_path": f"{name}.log"}}))
        if start:
            await self.app.bus.dispatch(StartContainerCommand(container_id=created.container_id))
        return str(created.container_id)

    async def remove(self, pod: str) -> None:
        await self.app.bus.dispatch(StopPodSandboxCommand(pod_sandbox_id=pod))
        await self.app.bus.dispatch(RemovePodSandboxCommand(pod_sandbox_id=pod))
        self.pods.remove(pod)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    """A registry with busybox, a private bridge network and crirt's app; every pod is removed afterwards."""
    base = tmp_path_factory.mktemp("targets")
    registry = start_registry(base / "registry")
    net = BridgeNetwork(base / "d" / "cni")
    loop = uvloop.new_event_loop()
    app = None
    try:
        layout = Layout(base / "layout")
        layout.tag(layout.image([(busybox_layer().bytes(), "gzip")]), "busybox")
        image = f"{registry.host}/library/busybox:1"
        push(layout, "busybox", image)
        net.write()
        config = load_config(write_config(base / "d" / "config.toml", base / "d", registries=""))
        config.root.mkdir(parents=True, exist_ok=True)
        config.state.mkdir(parents=True, exist_ok=True)
        app = build_app(config)
        env = Local(app, loop, image, base / "logs")

        async def start() -> None:
            await app.registry.probe_features()
            await app.sandboxes.start()
            await app.containers.resume()
            await app.bus.dispatch(PullImageCommand.model_validate({"image": {"image": image}}))

        env.run(start())
        try:
            yield env
        finally:
            for pod in list(env.pods):
                env.run(env.remove(pod))
    finally:
        if app is not None:
            loop.run_until_complete(app.containers.close())
            loop.run_until_complete(app.sandboxes.close())
            loop.run_until_complete(app.registry.close())
            app.store.close()
        loop.close()
        kill_containers_under(base / "d" / "state")
        net.cleanup(base / "d" / "state")
        unmount_under(base)
        registry.stop()


@pytest.fixture(scope="module")
def pod(local: Local) -> str:
    return local.run(local.pod())


@pytest.fixture(scope="module")
def idle(local: Local, pod: str) -> str:
    return local.run(local.container(pod, IDLE))


async def collect(target: StdioTarget, until: bytes | None = None) -> dict[int, bytes]:
    """Output by stream until it ends (or until ``until`` shows on stdout), within 20 s."""
    seen: dict[int, bytes] = {1: b"", 2: b""}
    async with asyncio.timeout(20):
        while True:
            stream, data = await target.read_output()
            if stream == 0:
                return seen
            seen[stream] += data
            if until is not None and until in seen[1]:
                return seen


async def run_to_end(local: Local, cid: str, cmd: list[str]) -> tuple[dict[int, bytes], int]:
    target = await open_exec(local.app.containers, cid, cmd, tty=False, stdin=False)
    try:
        return await collect(target), await target.wait()
    finally:
        await target.close()


def open_fds() -> set[str]:
    """The pipes and terminals this process holds (what an exec session opens): other descriptors come and go
    with the rest of crirt (store, watchers), which runs in this process too."""
    held = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{name}")
            if target.startswith(("pipe:", "/dev/pts/", "/dev/ptmx")):
                held.add(f"{name}->{target}")
    return held


def test_exec_with_pipes_stdin_eof_and_exit_code(local: Local, idle: str) -> None:
    async def scenario() -> None:
        fds = open_fds()
        target = await open_exec(local.app.containers, idle, ["sh", "-c", "cat; echo done >&2; exit 3"],
                                 tty=False, stdin=True)
        await target.write_stdin(b"hello\n")
        assert (await collect(target, until=b"hello\n"))[1] == b"hello\n"
        await target.write_stdin(b"x" * 200_000)
        await target.close_stdin()
        out = await collect(target)
        assert out == {1: b"x" * 200_000, 2: b"done\n"}
        assert await target.wait() == 3
        await target.close()
        assert open_fds() == fds

    local.run(scenario())


def test_exec_with_a_terminal_echoes_resizes_and_exits(local: Local, idle: str) -> None:
    async def scenario() -> None:
        target = await open_exec(local.app.containers, idle, ["sh"], tty=True, stdin=True)
        await target.resize(100, 33)
        await target.write_stdin(b"echo mark-$((40+2)); echo TERM=$TERM\n")
        out = await collect(target, until=b"TERM=xterm")
        assert b"echo mark-$((40+2))" in out[1] and b"mark-42\r\n" in out[1], "the terminal echoes and maps NL"
        for size in ((100, 33), (132, 40)):
            await target.resize(*size)
            expected = f"{size[1]} {size[0]}".encode()
            for _ in range(20):  # runc applies a size sent with the start once it has the terminal
                await target.write_stdin(b"/bin/busybox stty size\n")
                if expected in (await collect(target, until=b"\n/ # "))[1]:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"the terminal never became {size}")
        await target.write_stdin(b"exit 7\n")
        assert (await collect(target))[2] == b""  # a terminal has one stream
        assert await target.wait() == 7
        await target.close()

    local.run(scenario())


@pytest.mark.parametrize(("script", "code"), [("exit 0", 0), ("exit 9", 9), ("kill -TERM $$", 143),
                                              ("kill -KILL $$", 137)])
def test_exit_codes(local: Local, idle: str, script: str, code: int) -> None:
    assert local.run(run_to_end(local, idle, ["sh", "-c", script]))[1] == code


def test_closing_an_exec_kills_it_in_the_container(local: Local, idle: str) -> None:
    async def scenario() -> None:
        fds = open_fds()
        for tty in (False, True):
            target = await open_exec(local.app.containers, idle,
                                     ["sh", "-c", "/bin/busybox sleep 4242 & echo started; /bin/busybox sleep 4343"],
                                     tty=tty, stdin=True)
            await collect(target, until=b"started")
            listing = (await run_to_end(local, idle, ["/bin/busybox", "ps"]))[0][1]
            assert b"sleep 4242" in listing and b"sleep 4343" in listing
            await target.close()
            assert await target.wait() == 137
            listing = (await run_to_end(local, idle, ["/bin/busybox", "ps"]))[0][1]
            assert b"sleep 4242" not in listing and b"sleep 4343" not in listing, listing.decode()
        assert open_fds() == fds

    local.run(scenario())


def test_exec_refuses_missing_and_stopped_containers(local: Local, pod: str) -> None:
    async def scenario() -> None:
        with pytest.raises(NotFound):
            await open_exec(local.app.containers, "no-such-container", ["true"], tty=False, stdin=False)
        created = await local.container(pod, IDLE, start=False)
        with pytest.raises(FailedPrecondition, match="not running"):
            await open_exec(local.app.containers, created, ["true"], tty=False, stdin=False)
        with pytest.raises(FailedPrecondition, match="not running"):
            await open_attach(local.app.containers, created, tty=False, stdin=False)

    local.run(scenario())


def test_two_clients_attached_to_a_terminal_container(local: Local, pod: str) -> None:
    async def scenario() -> None:
        cid = await local.container(pod, "exec /bin/sh", stdin=True, tty=True)
        first = await open_attach(local.app.containers, cid, tty=True, stdin=True)
        second = await open_attach(local.app.containers, cid, tty=True, stdin=True)
        await first.write_stdin(b"echo ping-$((1+1))\n")
        for client in (first, second):
            assert b"ping-2\r\n" in (await collect(client, until=b"ping-2\r\n"))[1]
        await second.resize(90, 20)
        for _ in range(20):
            await second.write_stdin(b"/bin/busybox stty size\n")
            if b"20 90" in (await collect(first, until=b"\n/ # "))[1]:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the attached terminal was never resized")
        await first.close()  # detach: the container runs on and the other client still sees its output
        await second.write_stdin(b"echo pong-$((2+2)); exit 4\n")
        out = await collect(second)
        assert b"pong-4" in out[1] and out[2] == b""
        assert await second.wait() == 4
        await second.close()

    local.run(scenario())


def test_attach_to_a_container_with_pipes(local: Local, pod: str) -> None:
    """Without a terminal stdout and stderr stay apart; closing stdin reaches a container made with stdin_once
    (one made without keeps its stdin open for the next client, as conmon's --leave-stdin-open)."""
    async def scenario() -> None:
        cid = await local.container(pod, "while read line; do echo out-$line; echo err-$line >&2; done; exit 5",
                                    stdin=True, stdin_once=True)
        target = await open_attach(local.app.containers, cid, tty=False, stdin=True)
        await target.write_stdin(b"a\n")
        seen = {1: b"", 2: b""}
        async with asyncio.timeout(20):
            while seen != {1: b"out-a\n", 2: b"err-a\n"}:
                stream, data = await target.read_output()
                seen[stream] += data
        await target.resize(80, 24)  # no terminal: nothing to do
        await target.close_stdin()
        assert await target.wait() == 5
        await target.close()

    local.run(scenario())


def test_dial_a_port_inside_the_pod(local: Local, pod: str) -> None:
    async def scenario() -> None:
        await local.container(pod, HTTPD)
        for _ in range(100):
            try:
                reader, writer = await dial_pod_port(local.app.sandboxes, pod, 8080)
                break
            except Unavailable:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("httpd in the pod never accepted a connection")
        other_reader, other_writer = await dial_pod_port(local.app.sandboxes, pod, 8080)
        for r, w in ((reader, writer), (other_reader, other_writer)):
            w.write(b"GET /index.html HTTP/1.0\r\n\r\n")
            assert b"hello-from-the-pod" in await asyncio.wait_for(r.read(), 10)
            w.close()
            await w.wait_closed()
        with pytest.raises(Unavailable, match=r"127\.0\.0\.1: Connection refused"):
            await dial_pod_port(local.app.sandboxes, pod, 8081)

    local.run(scenario())


def test_dial_through_a_host_network_pod_reaches_the_host(local: Local) -> None:
    async def scenario() -> None:
        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hello-from-the-host")
            writer.close()

        server = await asyncio.start_server(greet, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        host_pod = await local.pod(host_network=True)
        try:
            reader, writer = await dial_pod_port(local.app.sandboxes, host_pod, port)
            assert await asyncio.wait_for(reader.read(), 10) == b"hello-from-the-host"
            writer.close()
        finally:
            server.close()
            await local.remove(host_pod)

    local.run(scenario())


def test_dial_refuses_bad_ports_and_gone_pods(local: Local) -> None:
    async def scenario() -> None:
        with pytest.raises(InvalidArgument):
            await dial_pod_port(local.app.sandboxes, "whatever", 0)
        with pytest.raises(NotFound):
            await dial_pod_port(local.app.sandboxes, "no-such-pod", 80)
        stopped = await local.pod()
        await local.app.bus.dispatch(StopPodSandboxCommand(pod_sandbox_id=stopped))
        with pytest.raises(FailedPrecondition, match="not ready"):
            await dial_pod_port(local.app.sandboxes, stopped, 80)
        await local.remove(stopped)

    local.run(scenario())
