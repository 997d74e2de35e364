"""crirt.network.cni against Debian's real CNI plugins in a private network (own bridge, subnet, name)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.network import CNI_BIN, BridgeNetwork, script_plugin

from crirt.network import netns
from crirt.network.cni import Attachment, Cni, CniError, parse_network

pytestmark = pytest.mark.skipif(not (CNI_BIN / "bridge").exists(), reason="containernetworking-plugins missing")


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[BridgeNetwork, Path, Cni]]:
    net = BridgeNetwork(tmp_path / "cni")
    pods = tmp_path / "pods"
    netns.ensure_shared_dir(pods)
    cni = Cni([tmp_path / "bin", CNI_BIN], tmp_path / "cache", timeout=5)
    try:
        yield net, pods, cni
    finally:
        net.cleanup(pods)


def _pin(pods: Path, name: str) -> str:
    (pods / name).mkdir()
    return str(asyncio.run(netns.pin_namespaces(pods / name, ["net"]))["net"])


def test_add_caches_then_del_releases(setup) -> None:
    net, pods, cni = setup
    network = parse_network(json.dumps(net.conflist()))
    path = _pin(pods, "p1")
    attachment = Attachment("pod1", path, pod_name="p", pod_namespace="ns", pod_uid="u")
    runtime = {"portMappings": [{"hostPort": 38080, "containerPort": 80, "protocol": "tcp"}]}
    result = asyncio.run(cni.setup(network, attachment, runtime))
    address = result["ips"][0]["address"].split("/")[0]
    assert net.allocations() == [address]
    cached = cni.cached("pod1")
    assert cached is not None and cached["result"] == result and cached["runtimeConfig"] == runtime
    assert ["K8S_POD_NAME", "p"] in cached["cniArgs"] and cached["network"]["name"] == net.name
    assert any("38080" in rule for rule in net.nat_rules())
    assert cni.cached_ids() == ["pod1"]
    assert asyncio.run(cni.teardown("pod1"))
    assert net.allocations() == [] and net.nat_rules() == []
    assert cni.cached("pod1") is None and not asyncio.run(cni.teardown("pod1"))  # nothing left to DEL
    netns.unpin(Path(path))


def test_del_works_after_the_netns_is_gone(setup) -> None:
    net, pods, cni = setup
    path = _pin(pods, "p2")
    # Without ipMasq: bridge finds its masquerade rules through the pod's interface, so a DEL without the
    # netns would leave them (crirt never unpins a netns whose DEL has not succeeded).
    network = parse_network(json.dumps(net.conflist(ip_masq=False)))
    asyncio.run(cni.setup(network, Attachment("pod2", path), {}))
    netns.unpin(Path(path))
    assert asyncio.run(cni.teardown("pod2"))  # plugins tolerate a missing netns on DEL
    assert net.allocations() == [] and net.nat_rules() == []


def test_version_mismatch_is_refused_before_add(setup) -> None:
    net, _, cni = setup
    network = parse_network(json.dumps({**net.conflist(), "cniVersion": "9.9.9"}))
    with pytest.raises(CniError, match=r"asks for CNI version 9\.9\.9, but plugin 'bridge' supports"):
        asyncio.run(cni.setup(network, Attachment("pod3", "/nonexistent"), {}))
    assert cni.cached("pod3") is None


def test_a_hung_plugin_is_killed_after_the_timeout(setup, tmp_path: Path) -> None:
    net, pods, cni = setup
    cni.timeout = 0.5
    script_plugin(tmp_path / "bin", "hang", "if os.environ['CNI_COMMAND'] == 'ADD':\n    time.sleep(30)\n")
    network = parse_network(json.dumps(net.conflist([{"type": "hang"}], portmap=False)))
    path = _pin(pods, "p4")
    started = time.monotonic()
    with pytest.raises(CniError, match=r"'hang' timed out on ADD after 0\.5s"):
        asyncio.run(cni.setup(network, Attachment("pod4", path), {}))
    assert time.monotonic() - started < 5
    asyncio.run(cni.teardown("pod4"))
    assert net.allocations() == []
    netns.unpin(Path(path))


def test_cancelling_add_waits_for_the_running_plugin(setup, tmp_path: Path) -> None:
    net, pods, cni = setup
    marker = tmp_path / "done"
    script_plugin(tmp_path / "bin", "slow", "if os.environ['CNI_COMMAND'] != 'ADD':\n    sys.exit(0)\n"
                  f"time.sleep(0.6)\nopen({str(marker)!r}, 'w').close()\nprint(json.dumps(conf['prevResult']))\n")
    network = parse_network(json.dumps(net.conflist([{"type": "slow"}], portmap=False)))
    path = _pin(pods, "p5")

    async def cancel_midway() -> None:
        task = asyncio.ensure_future(cni.setup(network, Attachment("pod5", path), {}))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert marker.exists()  # the cancellation waited for the plugin's step to end

    asyncio.run(cancel_midway())
    asyncio.run(cni.teardown("pod5"))
    assert net.allocations() == []
    netns.unpin(Path(path))
