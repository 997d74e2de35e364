"""The runtime-wide RPCs and UNIMPLEMENTED answers, through an independent grpcio client."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from support.cri_requests import IMPLEMENTED, all_rpcs, filled
from support.daemon import Daemon, start_daemon

import crirt
from crirt.oci.host import kernel_version

CONFLIST = '{"cniVersion": "1.0.0", "name": "test", "plugins": [{"type": "loopback"}]}'


def test_version(runtime_stub, pb: ModuleType) -> None:
    reply = runtime_stub.Version(pb.VersionRequest(version="0.1.0"))
    assert (reply.version, reply.runtime_name, reply.runtime_version, reply.runtime_api_version) == (
        "0.1.0", "crirt", crirt.__version__, "v1")


def _conditions(reply) -> dict[str, object]:
    return {c.type: c for c in reply.status.conditions}


def test_status_reflects_plugins_and_cni_config(tmp_path: Path, pb: ModuleType) -> None:
    # The runc-shim package is installed with crirt; a second handler names a plugin that is not.
    daemon = start_daemon(tmp_path / "d", '[runtimes.ghost]\nshim = "no-such-plugin"\n')
    try:
        with daemon.channel() as channel:
            stub = pb.grpc.RuntimeServiceStub(channel)
            reply = stub.Status(pb.StatusRequest())
            conditions = _conditions(reply)
            assert conditions["RuntimeReady"].status, conditions["RuntimeReady"].message
            plugins = conditions["ShimPluginsReady"]
            assert not plugins.status and "'no-such-plugin' is not installed" in plugins.message
            network = conditions["NetworkReady"]
            assert not network.status and network.reason == "NetworkPluginNotReady"
            assert str(daemon.socket.parent / "cni") in network.message
            assert [h.name for h in reply.runtime_handlers] == ["", "runc", "ghost"]
            # runc lists the rro mount option; the kernel must have mount_setattr(2) (5.12) for it to work.
            rro = kernel_version(platform.release()) >= (5, 12)
            assert [h.features.recursive_read_only_mounts for h in reply.runtime_handlers] == [rro, rro, False]
            assert reply.features.supplemental_groups_policy  # crirt resolves both policies for every handler
            assert not reply.features.user_namespaces_host_network
            assert reply.info == {}  # verbose info only on request

            (daemon.socket.parent / "cni" / "10-test.conflist").write_text(CONFLIST)
            assert _conditions(stub.Status(pb.StatusRequest()))["NetworkReady"].status
    finally:
        daemon.stop()


def test_runtime_not_ready_when_the_default_handler_is_broken(tmp_path: Path, pb: ModuleType) -> None:
    daemon = start_daemon(tmp_path / "d", 'default_runtime = "ghost"\n[runtimes.ghost]\nshim = "no-such-plugin"\n')
    try:
        with daemon.channel() as channel:
            ready = _conditions(pb.grpc.RuntimeServiceStub(channel).Status(pb.StatusRequest()))["RuntimeReady"]
        assert not ready.status and ready.reason == "DefaultRuntimeUnavailable"
        assert "'ghost'" in ready.message and "not installed" in ready.message
    finally:
        daemon.stop()


def test_status_verbose_info_is_json(daemon: Daemon, runtime_stub, pb: ModuleType) -> None:
    info = runtime_stub.Status(pb.StatusRequest(verbose=True)).info
    config = json.loads(info["config"])
    assert config["root"] == config["rootDir"] == str(daemon.root)
    assert config["stateDir"] == config["state"] and Path(config["stateDir"]).is_dir()
    handlers = json.loads(info["handlerStatus"])
    assert handlers["runc"] == {"shim": "runc", "ready": True, "problem": None,
                                "features": handlers["runc"]["features"]}
    assert isinstance(json.loads(info["rpcMetrics"]), dict)


def test_runtime_config_reports_cgroup_driver(tmp_path: Path, pb: ModuleType) -> None:
    for driver, expected in (("cgroupfs", pb.CGROUPFS), ("systemd", pb.SYSTEMD)):
        daemon = start_daemon(tmp_path / driver, f'cgroup_driver = "{driver}"')
        try:
            with daemon.channel() as channel:
                reply = pb.grpc.RuntimeServiceStub(channel).RuntimeConfig(pb.RuntimeConfigRequest())
            assert reply.linux.cgroup_driver == expected
        finally:
            daemon.stop()


def test_update_runtime_config_keeps_pod_cidr_across_restart(tmp_path: Path, pb: ModuleType) -> None:
    daemon = start_daemon(tmp_path / "d")
    request = pb.UpdateRuntimeConfigRequest(
        runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr="10.244.1.0/24")))
    with daemon.channel() as channel:
        pb.grpc.RuntimeServiceStub(channel).UpdateRuntimeConfig(request)
    assert daemon.stop() == 0
    daemon = start_daemon(tmp_path / "d")
    try:
        with daemon.channel() as channel:
            info = pb.grpc.RuntimeServiceStub(channel).Status(pb.StatusRequest(verbose=True)).info
        assert json.loads(info["podCIDR"]) == "10.244.1.0/24"
    finally:
        daemon.stop()


def test_every_unimplemented_rpc_answers_unimplemented_naming_itself(daemon: Daemon, pb: ModuleType) -> None:
    rpcs = all_rpcs(pb)
    assert len(rpcs) == 41
    unimplemented = [r for r in rpcs if r[1] not in IMPLEMENTED]
    assert unimplemented, "nothing left to check"
    with daemon.channel() as channel:
        for path, name, streaming, request_cls, response_cls in unimplemented:
            make = channel.unary_stream if streaming else channel.unary_unary
            call = make(path, request_serializer=request_cls.SerializeToString,
                        response_deserializer=response_cls.FromString)
            with pytest.raises(grpc.RpcError) as info:
                result = call(filled(request_cls), timeout=10)
                if streaming:
                    list(result)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED, (name, info.value.details())
            assert name in info.value.details()


def test_listing_rpcs_answer_empty_lists(runtime_stub, pb: ModuleType) -> None:
    assert list(runtime_stub.ListContainers(pb.ListContainersRequest()).containers) == []
    assert list(runtime_stub.ListPodSandbox(pb.ListPodSandboxRequest()).items) == []
    batches = list(runtime_stub.StreamContainers(pb.StreamContainersRequest()))
    assert len(batches) == 1 and not batches[0].containers


def test_update_runtime_config_rejects_a_bad_pod_cidr(runtime_stub, pb: ModuleType) -> None:
    for bad in ("10.0.0.0/33", "not-a-cidr", "10.0.0.0/8,fd00::/64,10.1.0.0/16", "\x00"):
        request = pb.UpdateRuntimeConfigRequest(
            runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr=bad)))
        with pytest.raises(grpc.RpcError) as info:
            runtime_stub.UpdateRuntimeConfig(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "pod_cidr" in info.value.details()
    dual = pb.NetworkConfig(pod_cidr="10.244.0.0/24, fd00:10::/64")
    runtime_stub.UpdateRuntimeConfig(pb.UpdateRuntimeConfigRequest(runtime_config=pb.RuntimeConfig(network_config=dual)))
