"""Failure injection: a failing CNI plugin, a deadline that passes mid-setup, a crash mid-ADD, a DEL that fails.
Each must leave no address, namespace, mount, veth, iptables rule or file behind, and release the name."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from support.daemon import start_daemon
from support.network import BridgeNetwork, PodEnv, free_subnet, script_plugin, start_pod_env, wait_until

PASS_THROUGH = "print(json.dumps(conf.get('prevResult') or {'cniVersion': conf['cniVersion']}))\n"
FAIL_ADD = (
    "if os.environ['CNI_COMMAND'] == 'ADD':\n"
    "    print(json.dumps({'cniVersion': '1.0.0', 'code': 11, 'msg': 'injected failure', 'details': 'on purpose'}))\n"
    "    sys.exit(1)\n"
)
SLOW_ADD = "if os.environ['CNI_COMMAND'] == 'ADD':\n    time.sleep(float(conf.get('seconds', 3)))\n" + PASS_THROUGH
SLOW_DEL = "if os.environ['CNI_COMMAND'] == 'DEL':\n    time.sleep(float(conf.get('seconds', 3)))\n" + PASS_THROUGH
FAIL_DEL_WHILE_FLAG = (
    "if os.environ['CNI_COMMAND'] == 'DEL' and os.path.exists(conf['flag']):\n"
    "    print(json.dumps({'cniVersion': '1.0.0', 'code': 7, 'msg': 'DEL refused while the flag exists'}))\n"
    "    sys.exit(1)\n"
    "if os.environ['CNI_COMMAND'] == 'ADD':\n"
    "    print(json.dumps({'cniVersion': '1.0.0', 'code': 11, 'msg': 'injected failure'}))\n"
    "    sys.exit(1)\n"
)


class Env:
    """A daemon whose network chain ends with a test plugin from a private bin dir."""

    def __init__(self, base: Path, pb: ModuleType) -> None:
        self.base, self.pb = base, pb
        self.bin = base / "bin"
        script_plugin(self.bin, "fail-add", FAIL_ADD + PASS_THROUGH)
        script_plugin(self.bin, "slow-add", SLOW_ADD)
        script_plugin(self.bin, "slow-del", SLOW_DEL)
        script_plugin(self.bin, "fail-del", FAIL_DEL_WHILE_FLAG + PASS_THROUGH)
        self.net = BridgeNetwork(base / "cni")
        self.net.write()
        self.cni = f'bin_dirs = ["{self.bin}", "/usr/lib/cni"]\n'
        self.start()

    def start(self) -> None:
        self.daemon, _ = start_pod_env(self.base, self.pb, self.net, self.cni)
        self.channel = self.daemon.channel()
        self.env = PodEnv(self.daemon, self.net, self.base, self.pb.grpc.RuntimeServiceStub(self.channel), self.pb)

    def stop(self) -> None:
        self.channel.close()
        self.daemon.stop()


@pytest.fixture
def env(tmp_path: Path, pb: ModuleType):
    e = Env(tmp_path / "d", pb)
    try:
        yield e
    finally:
        e.stop()
        e.net.cleanup(e.base / "state")


def test_failing_plugin_leaves_nothing_and_the_retry_works(env: Env) -> None:
    pods = env.env
    before = pods.snapshot()
    env.net.write([{"type": "fail-add"}])  # bridge and portmap succeed first, then this fails
    config = pods.config("retry", port_mappings=[env.pb.PortMapping(container_port=80, host_port=28081)])
    with pytest.raises(grpc.RpcError) as info:
        pods.run(config)
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert "'fail-add'" in info.value.details() and "injected failure: on purpose" in info.value.details()
    assert pods.snapshot() == before
    assert not pods.stub.ListPodSandbox(env.pb.ListPodSandboxRequest()).items
    env.net.write()
    sandbox_id = pods.run(config)  # the name was released
    pods.remove(sandbox_id)
    assert pods.snapshot() == before


def test_missing_plugin_is_named(env: Env) -> None:
    pods = env.env
    before = pods.snapshot()
    env.net.write([{"type": "no-such-plugin"}])
    with pytest.raises(grpc.RpcError) as info:
        pods.run(pods.config())
    assert "'no-such-plugin' not found in" in info.value.details() and str(env.bin) in info.value.details()
    assert pods.snapshot() == before


def test_deadline_mid_setup_cleans_up_detached(env: Env) -> None:
    pods = env.env
    before = pods.snapshot()
    env.net.write([{"type": "slow-add", "seconds": 2}])
    config = pods.config("slow")
    with pytest.raises(grpc.RpcError) as info:
        pods.run(config, timeout=0.8)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: pods.snapshot() == before, timeout=20)
    env.net.write()
    wait_until(lambda: _runs(pods, config), timeout=10)  # the name is free once the undo finished
    pods.remove_all()
    assert pods.snapshot() == before


def test_deadline_during_stop_does_not_cut_the_teardown_short(env: Env) -> None:
    pods = env.env
    before = pods.snapshot()
    env.net.write([{"type": "slow-del", "seconds": 1.5}])
    sandbox_id = pods.run(pods.config("slow-stop"))
    with pytest.raises(grpc.RpcError) as info:
        pods.stub.StopPodSandbox(env.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: pods.status(sandbox_id)[1]["phase"] == "stopped", timeout=20)
    left = pods.snapshot()
    assert left["allocations"] == before["allocations"] and left["mounts"] == before["mounts"]
    assert left["nat_rules"] == before["nat_rules"] and left["cni_cache"] == before["cni_cache"]
    pods.stop(sandbox_id)  # the retry finds it stopped
    pods.remove(sandbox_id)
    assert pods.snapshot() == before


def _runs(pods: PodEnv, config) -> bool:
    try:
        pods.run(config)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.ALREADY_EXISTS, exc.details()
        return False
    return True


def test_crash_mid_add_is_finished_on_restart(env: Env) -> None:
    pods = env.env
    before = pods.snapshot()
    env.net.write([{"type": "slow-add", "seconds": 1.5}])
    config = pods.config("crash")
    with pytest.raises(grpc.RpcError):
        pods.run(config, timeout=0.7)
    env.daemon.proc.send_signal(signal.SIGKILL)  # the undo was running (waiting for the plugin): crash now
    env.daemon.proc.wait()
    env.channel.close()
    assert pods.snapshot() != before  # the bridge's ADD left an address, a veth, rules, pins
    env.net.write()
    env.start()
    pods = env.env
    assert pods.snapshot() == before  # recovery finished before the daemon started serving
    pods.remove(pods.run(config))


def test_failed_del_is_retried_by_the_next_start(env: Env) -> None:
    pods = env.env
    before = pods.snapshot()
    flag = env.base / "refuse-del"
    flag.touch()
    env.net.write([{"type": "fail-del", "flag": str(flag)}])
    config = pods.config("leftover")
    with pytest.raises(grpc.RpcError) as info:
        pods.run(config)
    assert "injected failure" in info.value.details()
    left = pods.snapshot()
    assert left["cni_cache"]  # the cache stays until every plugin's DEL succeeded, and so does the netns pin
    assert [m.rsplit("/", 1)[1] for m in left["mounts"]] == ["net"]
    assert left["allocations"] == before["allocations"] and left["nat_rules"] == before["nat_rules"]
    assert left["veths"] == before["veths"]  # ...but every other plugin's DEL ran
    assert not pods.stub.ListPodSandbox(env.pb.ListPodSandboxRequest()).items
    env.net.write()
    pods.remove(pods.run(config))  # the name is released even though cleanup is pending
    flag.unlink()
    env.stop()
    env.start()
    assert env.env.snapshot() == before


def test_network_not_ready_without_config(tmp_path: Path, pb: ModuleType) -> None:
    base = tmp_path / "d"
    daemon = start_daemon(base)  # default_network = false, empty conf dir
    try:
        with daemon.channel() as channel:
            stub = pb.grpc.RuntimeServiceStub(channel)
            network = next(c for c in stub.Status(pb.StatusRequest()).status.conditions if c.type == "NetworkReady")
            assert not network.status and network.reason == "NetworkPluginNotReady"
            env = PodEnv(daemon, BridgeNetwork(base / "cni"), base, stub, pb)
            with pytest.raises(grpc.RpcError) as info:
                env.run(env.config())
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert str(base / "cni") in info.value.details()
            (base / "cni" / "10-bad.conflist").write_text("{not json")
            network = next(c for c in stub.Status(pb.StatusRequest()).status.conditions if c.type == "NetworkReady")
            assert not network.status and "10-bad.conflist: not valid JSON" in network.message
            env.remove(env.run(env.config(network="NODE")))  # hostNetwork pods need no CNI
    finally:
        daemon.stop()


def test_default_network_is_written_on_first_start_and_works(tmp_path: Path, pb: ModuleType) -> None:
    base = tmp_path / "d"
    net = BridgeNetwork(base / "cni")
    cni = (f'default_network = true\ndefault_network_name = "{net.name}"\ndefault_bridge = "{net.bridge}"\n'
           f'default_subnets = ["{net.subnet}"]\n')
    daemon = start_daemon(base, cni_config=cni)
    try:
        written = json.loads((base / "cni" / "99-crirt.conflist").read_text())
        assert [p["type"] for p in written["plugins"]] == ["bridge", "portmap"]
        assert written["plugins"][0]["ipam"]["ranges"] == [[{"subnet": str(net.subnet)}]]
        with daemon.channel() as channel:
            env = PodEnv(daemon, net, base, pb.grpc.RuntimeServiceStub(channel), pb)
            before = env.snapshot()
            sandbox_id = env.run(env.config())
            assert env.status(sandbox_id)[0].network.ip.startswith(str(net.subnet.network_address)[:-1])
            env.remove(sandbox_id)
            assert env.snapshot() == before
        daemon.stop()
        (base / "cni" / "99-crirt.conflist").write_text(json.dumps({**written, "name": "edited"}))
        daemon = start_daemon(base, cni_config=cni.replace(str(net.subnet), str(free_subnet())))
        assert json.loads((base / "cni" / "99-crirt.conflist").read_text())["name"] == "edited"  # not rewritten
    finally:
        daemon.stop()
        net.cleanup(base / "state")
