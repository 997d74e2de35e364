"""The kill -9 matrix: crirt SIGKILLed at ten points of the kubelet's calls, each for a few rounds, then restarted
on the same state.

One daemon environment serves the module: a registry with busybox behind a fault proxy, a bridge network whose
chain ends in a CNI plugin wrapper that blocks ADD or DEL while the test holds a lock, and crirt run by
``support/crash_server.py`` in armed mode, so it dies right after a container step when the test arms that point.
Where no crash point exists the test kills the daemon itself while the call is in flight (a blocked CNI plugin,
a stalled layer download, a running exec). After each restart the kubelet's retry of the call succeeds, a
witness container that was running all along is RUNNING and watched (stopping it records its exit code), and
once the round's pods are removed nothing is left: no process, mount, netns, address, iptables rule, veth,
bundle, rootfs, monitor dir, CNI cache entry or name reservation.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from support.containers import conmons_under
from support.daemon import Daemon, start_daemon
from support.images import Client, LayerTar, Layout, busybox_layer, push, unmount_under
from support.network import CNI_BIN, HOST_LOCAL_DIR, BridgeNetwork, PodEnv, runc_shim_installed, wait_until
from support.registry import FaultProxy, Faults, Registry, ServiceLoop, start_registry

from .conftest import executable_script, held, processes_mentioning, traces

pytestmark = pytest.mark.skipif(not runc_shim_installed(), reason="the runc shim plugin is not installed")

ROUNDS = range(3)
CRASH_SERVER = Path(__file__).resolve().parents[1] / "support" / "crash_server.py"
TERM_EXIT = 3
"""The exit code of every test container when it gets SIGTERM."""
SERVE = f"trap 'exit {TERM_EXIT}' TERM; /bin/busybox sleep 1000 & wait"


def fault_plugin(bin_dir: Path, locks: Path) -> Path:
    """``fault-portmap``: portmap, after taking the lock ``<locks>/<CNI_COMMAND>.lock`` (flock): it blocks while
    the test holds the lock of its command."""
    locks.mkdir(parents=True, exist_ok=True)
    return executable_script(bin_dir / "fault-portmap", (
        "#!/bin/sh\n"
        f'flock "{locks}/$CNI_COMMAND.lock" true\n'
        f"exec {CNI_BIN / 'portmap'}\n"))


def names(directory: Path) -> set[str]:
    """The names of the entries of ``directory`` (none when it does not exist)."""
    return {p.name for p in directory.iterdir()} if directory.is_dir() else set()


def chain_name(network: str, sandbox: str, prefix: str = "") -> str:
    """The iptables chain a CNI plugin makes for a pod (``FormatChainName`` of containernetworking/plugins:
    bridge's masquerade chain; ``DN-`` for portmap's DNAT chain)."""
    return f"CNI-{prefix}{hashlib.sha512((network + sandbox).encode()).hexdigest()}"[:28]


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    """The status code of the RPC error ``call`` raises (it must raise one)."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


@dataclass
class Witness:
    """A container that runs through the round's crash in a pod of its own."""

    sandbox: str
    container: str
    started_at: int


@dataclass
class Matrix:
    """The module's registry, fault proxy, network and (re)started daemon, with its stubs."""

    top: Path
    pb: ModuleType
    net: BridgeNetwork
    registry: Registry
    proxy: FaultProxy
    layout: Layout
    image: str
    daemon: Daemon | None = None
    channel: grpc.Channel | None = None
    runtime: Any = None
    images: Any = None
    pods: PodEnv | None = None

    @property
    def base(self) -> Path:
        return self.top / "d"

    @property
    def arm_file(self) -> Path:
        return self.top / "crash-point"

    def lock(self, command: str) -> Path:
        """The lock the fault plugin takes on CNI ``command`` (ADD, DEL)."""
        return self.top / "locks" / f"{command}.lock"

    def restart(self) -> None:
        """Start a daemon on the module's state (the last one must be dead) and connect new stubs to it."""
        assert self.daemon is None or self.daemon.proc.poll() is not None
        if self.channel is not None:
            self.channel.close()
        cni = f'default_network = false\nbin_dirs = ["{self.top / "bin"}", "{CNI_BIN}"]\n'
        self.daemon = start_daemon(self.base, argv=[sys.executable, str(CRASH_SERVER), f"@{self.arm_file}"],
                                   cni_config=cni, registries="")
        self.channel = self.daemon.channel()
        self.runtime = self.pb.grpc.RuntimeServiceStub(self.channel)
        self.images = self.pb.grpc.ImageServiceStub(self.channel)
        self.pods = PodEnv(self.daemon, self.net, self.base, self.runtime, self.pb)

    def kill(self) -> None:
        """SIGKILL the daemon and reap it."""
        assert self.daemon is not None
        self.daemon.proc.send_signal(signal.SIGKILL)
        self.daemon.proc.wait(10)

    def crash_at(self, point: str, call: Callable[[], Any]) -> None:
        """Arm crash ``point``, make ``call``: it must fail UNAVAILABLE as the daemon dies there."""
        assert self.daemon is not None
        self.arm_file.write_text(point)
        assert code_of(call) == grpc.StatusCode.UNAVAILABLE
        assert self.daemon.proc.wait(10) == -signal.SIGKILL
        assert not self.arm_file.exists()  # it died at the armed point, nowhere else

    def kill_while_blocked(self, command: str, call: Callable[[], grpc.Future]) -> None:
        """Block CNI ``command``, start ``call``, SIGKILL the daemon while the plugin waits and unblock the
        orphaned plugin. The call must fail UNAVAILABLE."""
        lock = self.lock(command)
        with held(lock):
            future = call()
            wait_until(lambda: processes_mentioning(str(lock)), 20)
            self.kill()
        assert code_of(future.result) == grpc.StatusCode.UNAVAILABLE

    def pod(self, name: str) -> str:
        """A ready pod named ``name`` (no infra container), its logs under the module's directory."""
        assert self.pods is not None
        return self.pods.run(self.pod_config(name))

    def pod_config(self, name: str) -> Any:
        assert self.pods is not None
        return self.pods.config(name, log_directory=str(self.top / "logs" / name))

    def create(self, sandbox: str, name: str) -> str:
        """Create (not start) a container ``name`` running ``SERVE`` in ``sandbox``."""
        pb = self.pb
        config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=self.image),
                                    command=["/bin/sh", "-c", SERVE], log_path=f"{name}.log")
        return self.runtime.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sandbox, config=config),
                                            timeout=30).container_id

    def start(self, container: str) -> None:
        self.runtime.StartContainer(self.pb.StartContainerRequest(container_id=container), timeout=30)

    def running(self, sandbox: str, name: str) -> str:
        """A container ``name`` created and started in ``sandbox``."""
        container = self.create(sandbox, name)
        self.start(container)
        return container

    def status(self, container: str) -> Any:
        return self.runtime.ContainerStatus(self.pb.ContainerStatusRequest(container_id=container),
                                            timeout=10).status

    def stop(self, container: str) -> None:
        self.runtime.StopContainer(self.pb.StopContainerRequest(container_id=container, timeout=10), timeout=30)

    def witness(self, name: str) -> Witness:
        """A running container in a pod of its own, to check that the crash leaves it running and watched."""
        sandbox = self.pod(f"{name}-witness")
        container = self.running(sandbox, "witness")
        return Witness(sandbox, container, self.status(container).started_at)

    def check_witness(self, witness: Witness) -> None:
        """The witness still runs as it was started, and crirt watches it: stopping it records its exit code."""
        now = self.status(witness.container)
        assert (now.state, now.started_at) == (self.pb.CONTAINER_RUNNING, witness.started_at)
        self.stop(witness.container)
        final = self.status(witness.container)
        assert (final.state, final.exit_code) == (self.pb.CONTAINER_EXITED, TERM_EXIT)
        assert final.finished_at > final.started_at

    def containers_on_disk(self) -> dict[str, set[str]]:
        """The ids of the containers with a bundle, a rootfs dir or a monitor (conmon) dir."""
        state = self.base / "state"
        return {"bundles": names(state / "containers"), "rootfs": names(self.base / "root" / "rootfs"),
                "monitor_dirs": names(state / "shims" / "runc" / "containers")}

    def chains_of(self, sandboxes: list[str]) -> list[str]:
        """The nat chains of these pods that exist, with rules or empty (the snapshot's ``cni_chains`` lists
        every empty chain of the host, which other suites running meanwhile make and drop)."""
        lines = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout.splitlines()
        ours = {chain_name(self.net.name, s, prefix) for s in sandboxes for prefix in ("", "DN-")}
        return sorted({line.split()[1] for line in lines if line.startswith("-N ")} & ours)

    def orphans(self) -> dict[str, list[str]]:
        """What belongs to no container or pod the daemon lists: bundles, rootfs dirs, monitor dirs, conmons, pod
        dirs, CNI cache entries and host-local addresses."""
        pb = self.pb
        containers = {c.id for c in self.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers}
        pods = {s.id for s in self.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items}
        state, root, store = self.base / "state", self.base / "root", HOST_LOCAL_DIR / self.net.name
        found = {
            **{kind: ids - containers for kind, ids in self.containers_on_disk().items()},
            "conmons": set(conmons_under(self.base).values()) - containers,
            "pod_dirs": names(state / "pods") - pods,
            "cni_cache": {p.stem for p in (root / "cni" / "results").glob("*.json")} - pods,
            "addresses": {ip for ip in self.net.allocations()
                          if (store / ip).read_text().splitlines()[0].strip() not in pods},
        }
        return {key: sorted(value) for key, value in found.items() if value}

    def finish(self, before: dict[str, list[str]], witness: Witness, sandboxes: list[str], ids: list[str]) -> None:
        """The end of every round: the witness is fine, nothing is orphaned, and once the round's pods are
        removed nothing of ``ids`` is left and the network is as ``before``."""
        assert self.pods is not None
        self.check_witness(witness)
        assert self.orphans() == {}
        for sandbox in [witness.sandbox, *sandboxes]:
            self.pods.stop(sandbox)
            self.pods.remove(sandbox)
        assert traces(self.base, self.net, [*ids, witness.sandbox, witness.container]) == {}
        assert self.orphans() == {}
        assert self.chains_of([*ids, witness.sandbox]) == []
        after = self.pods.snapshot()
        assert {**after, "cni_chains": []} == {**before, "cni_chains": []}

    def begin(self, name: str) -> tuple[dict[str, list[str]], Witness]:
        """The start of every round: the host's state before it, and its witness."""
        assert self.pods is not None
        before = self.pods.snapshot()
        witness = self.witness(name)
        assert self.chains_of([witness.sandbox])  # what ``finish`` looks for is there while a pod runs
        return before, witness


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory, pb: ModuleType) -> Iterator[Matrix]:
    """The module's environment, with busybox pulled; everything is removed afterwards."""
    top = tmp_path_factory.mktemp("killmatrix")
    registry = start_registry(top / "registry")
    services = ServiceLoop()
    net = BridgeNetwork(top / "d" / "cni")
    made: Matrix | None = None
    try:
        layout = Layout(top / "layout")
        layout.tag(layout.image([(busybox_layer().bytes(), "gzip")]), "busybox")
        image = f"{registry.host}/library/busybox:1"
        push(layout, "busybox", image)
        proxy = FaultProxy(registry.url)
        proxy.start(services)
        fault_plugin(top / "bin", top / "locks")
        net.write([{"type": "fault-portmap", "capabilities": {"portMappings": True}}], portmap=False)
        made = Matrix(top, pb, net, registry, proxy, layout, image)
        made.restart()
        made.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=60)
        yield made
    finally:
        if made is not None and made.channel is not None:
            made.channel.close()
        if made is not None and made.daemon is not None:
            made.daemon.stop()
        net.cleanup(top / "d" / "state")
        unmount_under(top)
        services.close()
        registry.stop()


def round_name(point: str, round_: int) -> str:
    return f"{point}-{round_}-{secrets.token_hex(2)}"


@pytest.mark.parametrize("round_", ROUNDS)
def test_run_pod_sandbox_killed_mid_cni_add(matrix: Matrix, round_: int) -> None:
    m, pb = matrix, matrix.pb
    name = round_name("add", round_)
    before, witness = m.begin(name)
    pods_before = names(m.base / "state" / "pods")
    config = m.pod_config(name)
    lock = m.lock("ADD")
    with held(lock):
        future = m.runtime.RunPodSandbox.future(pb.RunPodSandboxRequest(config=config), timeout=60)
        wait_until(lambda: processes_mentioning(str(lock)), 20)  # bridge has run; the chain's last plugin waits
        half_made = names(m.base / "state" / "pods") - pods_before
        m.kill()
    assert code_of(future.result) == grpc.StatusCode.UNAVAILABLE
    assert traces(m.base, m.net, half_made).get("addresses")  # bridge's ADD allocated one
    m.restart()
    sandbox = m.pods.run(config)  # the kubelet's retry, same name and attempt
    assert sandbox not in half_made and len(half_made) == 1
    listed = m.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
    assert [s.id for s in listed if s.metadata.name == name] == [sandbox]
    assert m.pods.status(sandbox)[0].state == pb.SANDBOX_READY
    container = m.running(sandbox, "app")
    m.finish(before, witness, [sandbox], [*half_made, sandbox, container])


@pytest.mark.parametrize("point", ["rootfs", "create"])
@pytest.mark.parametrize("round_", ROUNDS)
def test_create_container_killed_after_a_step(matrix: Matrix, point: str, round_: int) -> None:
    m, pb = matrix, matrix.pb
    name = round_name(point, round_)
    before, witness = m.begin(name)
    sandbox = m.pod(name)
    on_disk = m.containers_on_disk()
    m.crash_at(point, lambda: m.create(sandbox, "app"))
    made = {kind for kind, ids in m.containers_on_disk().items() if ids - on_disk[kind]}
    assert made == ({"rootfs"} if point == "rootfs" else {"rootfs", "bundles", "monitor_dirs"})  # half-made
    m.restart()
    container = m.create(sandbox, "app")  # the retry: the name is free again
    assert m.status(container).state == pb.CONTAINER_CREATED
    m.start(container)
    assert m.status(container).state == pb.CONTAINER_RUNNING
    m.finish(before, witness, [sandbox], [sandbox, container])


@pytest.mark.parametrize("round_", ROUNDS)
def test_start_container_killed_after_the_task_started(matrix: Matrix, round_: int) -> None:
    m, pb = matrix, matrix.pb
    name = round_name("start", round_)
    before, witness = m.begin(name)
    sandbox = m.pod(name)
    container = m.create(sandbox, "app")
    m.crash_at("start", lambda: m.start(container))
    m.restart()
    now = m.status(container)  # what the kubelet's next sync sees: it runs, nothing to retry
    assert now.state == pb.CONTAINER_RUNNING and now.started_at > 0
    assert code_of(lambda: m.start(container)) == grpc.StatusCode.FAILED_PRECONDITION  # no second start
    m.stop(container)  # watched: the exit is recorded
    final = m.status(container)
    assert (final.state, final.exit_code) == (pb.CONTAINER_EXITED, TERM_EXIT)
    m.finish(before, witness, [sandbox], [sandbox, container])


@pytest.mark.parametrize("round_", ROUNDS)
def test_stop_container_killed_after_the_signal(matrix: Matrix, round_: int) -> None:
    m, pb = matrix, matrix.pb
    name = round_name("stop", round_)
    before, witness = m.begin(name)
    sandbox = m.pod(name)
    container = m.running(sandbox, "app")
    m.crash_at("kill", lambda: m.stop(container))
    m.restart()
    m.stop(container)  # the kubelet's retry
    final = m.status(container)
    assert (final.state, final.exit_code) == (pb.CONTAINER_EXITED, TERM_EXIT)  # the exit while crirt was down
    m.finish(before, witness, [sandbox], [sandbox, container])


@pytest.mark.parametrize("round_", ROUNDS)
def test_remove_container_killed_after_the_task_was_deleted(matrix: Matrix, round_: int) -> None:
    m, pb = matrix, matrix.pb
    name = round_name("rm", round_)
    before, witness = m.begin(name)
    sandbox = m.pod(name)
    container = m.running(sandbox, "app")
    remove = pb.RemoveContainerRequest(container_id=container)
    m.crash_at("delete", lambda: m.runtime.RemoveContainer(remove, timeout=30))
    m.restart()
    assert m.status(container).state == pb.CONTAINER_EXITED  # the task is gone, the record is not
    m.runtime.RemoveContainer(remove, timeout=30)  # the kubelet's retry
    assert code_of(lambda: m.status(container)) == grpc.StatusCode.NOT_FOUND
    again = m.running(sandbox, "app")  # the name is free
    m.finish(before, witness, [sandbox], [sandbox, container, again])


@pytest.mark.parametrize("round_", ROUNDS)
def test_pull_image_killed_mid_layer(matrix: Matrix, round_: int) -> None:
    m, pb = matrix, matrix.pb
    name = round_name("pull", round_)
    before, witness = m.begin(name)
    assert m.daemon is not None
    store_before = Client(m.daemon, pb, m.images).leftovers()
    descriptor = m.layout.image([(LayerTar().file("data", secrets.token_bytes(512 * 1024)).bytes(), "gzip")])
    m.layout.tag(descriptor, name)
    push(m.layout, name, f"{m.registry.host}/library/{name}:1")
    manifest = json.loads(m.layout.read(descriptor["digest"]))
    layer = manifest["layers"][0]
    m.proxy.reset(Faults(stall_blob_after=layer["size"] // 2))
    request = pb.PullImageRequest(image=pb.ImageSpec(image=f"{m.proxy.host}/library/{name}:1"))
    ingest = m.base / "root" / "images" / "content" / "ingest"
    pulling = m.images.PullImage.future(request, timeout=60)
    wait_until(lambda: any(layer["digest"][7:] in path for path in m.proxy.blob_gets()), 20)
    wait_until(lambda: any(p.stat().st_size for p in ingest.rglob("*") if p.is_file()), 10)  # half a layer
    m.kill()
    assert code_of(pulling.result) == grpc.StatusCode.UNAVAILABLE
    m.restart()
    assert names(ingest) == set()  # the half-received layer is dropped
    m.proxy.reset()
    assert m.images.PullImage(request, timeout=60).image_ref == manifest["config"]["digest"]  # the retry
    client = Client(m.daemon, pb, m.images)
    assert [i.id for i in client.images(request.image.image)] == [manifest["config"]["digest"]]
    client.remove(request.image.image)
    assert client.leftovers() == store_before
    m.finish(before, witness, [], [])


@pytest.mark.parametrize("round_", ROUNDS)
def test_stop_pod_sandbox_killed_mid_teardown(matrix: Matrix, round_: int) -> None:
    m, pb = matrix, matrix.pb
    name = round_name("stoppod", round_)
    before, witness = m.begin(name)
    sandbox = m.pod(name)
    container = m.running(sandbox, "app")
    m.kill_while_blocked("DEL", lambda: m.runtime.StopPodSandbox.future(
        pb.StopPodSandboxRequest(pod_sandbox_id=sandbox), timeout=60))
    left = traces(m.base, m.net, [sandbox])
    assert left.get("addresses") and left.get("mounts")  # the teardown stopped before the network's release
    m.restart()
    m.pods.stop(sandbox)  # the kubelet's retry
    assert m.pods.status(sandbox)[0].state == pb.SANDBOX_NOTREADY
    assert m.status(container).state == pb.CONTAINER_EXITED
    left = traces(m.base, m.net, [sandbox])
    assert (left.get("addresses"), left.get("mounts")) == (None, None)  # the address and netns are released
    m.finish(before, witness, [sandbox], [sandbox, container])


@pytest.mark.parametrize("round_", ROUNDS)
def test_remove_pod_sandbox_killed_mid_removal(matrix: Matrix, round_: int) -> None:
    m, pb = matrix, matrix.pb
    name = round_name("rmpod", round_)
    before, witness = m.begin(name)
    sandbox = m.pod(name)
    container = m.running(sandbox, "app")
    m.pods.stop(sandbox)  # the kubelet stops a pod before removing it
    remove = pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox)
    m.crash_at("delete", lambda: m.runtime.RemovePodSandbox(remove, timeout=30))  # its container's task deleted
    m.restart()
    m.runtime.RemovePodSandbox(remove, timeout=30)  # the kubelet's retry
    assert code_of(lambda: m.pods.status(sandbox)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: m.status(container)) == grpc.StatusCode.NOT_FOUND
    again = m.pod(name)  # the name is free
    m.finish(before, witness, [again], [sandbox, container, again])


@pytest.mark.parametrize("round_", ROUNDS)
def test_exec_sync_killed_while_the_process_runs(matrix: Matrix, round_: int) -> None:
    m, pb = matrix, matrix.pb
    name = round_name("exec", round_)
    before, witness = m.begin(name)
    sandbox = m.pod(name)
    container = m.running(sandbox, "app")
    marker = f"exec-{name}"
    request = pb.ExecSyncRequest(container_id=container, cmd=["/bin/sh", "-c", f"/bin/busybox sleep 1; echo {marker}"],
                                 timeout=10)
    exec_root = m.base / "state" / "shims" / "runc" / "containers" / container / "exec"
    running = m.runtime.ExecSync.future(request, timeout=20)
    wait_until(lambda: processes_mentioning(marker) and names(exec_root), 10)
    m.kill()
    assert code_of(running.result) == grpc.StatusCode.UNAVAILABLE
    m.restart()
    reply = m.runtime.ExecSync(request, timeout=20)  # the probe's next run
    assert (reply.exit_code, reply.stdout) == (0, f"{marker}\n".encode())
    wait_until(lambda: not processes_mentioning(marker), 10)  # the orphaned exec ended on its own
    assert m.status(container).state == pb.CONTAINER_RUNNING
    m.stop(container)
    assert (m.status(container).state, m.status(container).exit_code) == (pb.CONTAINER_EXITED, TERM_EXIT)
    stale = names(exec_root)
    m.finish(before, witness, [sandbox], [sandbox, container])
    assert stale == set()  # the killed ExecSync's exec dir did not outlive its process until the container's end
