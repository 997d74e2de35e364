"""CNI pure parts: config parsing, plugin stdin, CNI_ARGS, results, errors, the default network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crirt.network.cni import (
    NetworkConfig,
    NetworkConfigError,
    cni_args,
    describe_error,
    load_network,
    network_problem,
    parse_network,
    plugin_config,
    pod_ips,
)
from crirt.network.defaults import DEFAULT_FILE_NAME, default_conflist, write_default_network

CONFLIST = {"cniVersion": "1.0.0", "name": "net", "plugins": [
    {"type": "bridge", "bridge": "br0", "ipam": {"type": "host-local"}},
    {"type": "portmap", "capabilities": {"portMappings": True}},
]}


def test_parse_conflist_and_single_conf() -> None:
    network = parse_network(json.dumps(CONFLIST), "/x.conflist")
    assert (network.name, network.cni_version, [p["type"] for p in network.plugins]) == (
        "net", "1.0.0", ["bridge", "portmap"])
    single = parse_network(json.dumps({"cniVersion": "0.4.0", "name": "one", "type": "ptp", "mtu": 1400}))
    assert single.plugins == ({"type": "ptp", "mtu": 1400},)
    assert single.to_dict() == {"cniVersion": "0.4.0", "name": "one", "plugins": [{"type": "ptp", "mtu": 1400}]}


@pytest.mark.parametrize(("text", "words"), [
    ("{", "not valid JSON"),
    ("[]", "JSON object"),
    ('{"cniVersion": "1.0.0", "plugins": [{"type": "x"}]}', "'name'"),
    ('{"name": "n", "plugins": [{"type": "x"}]}', "'cniVersion'"),
    ('{"name": "n", "cniVersion": "1.0.0", "plugins": []}', "non-empty list"),
    ('{"name": "n", "cniVersion": "1.0.0", "plugins": [{"type": "../../bin/sh"}]}', "plugin binary name"),
    ('{"name": "n", "cniVersion": "1.0.0", "plugins": [{"bridge": "x"}]}', "plugin binary name"),
])
def test_bad_configs_are_named(text: str, words: str) -> None:
    with pytest.raises(NetworkConfigError, match=words) as info:
        parse_network(text, "/etc/cni/net.d/10-x.conflist")
    assert "10-x.conflist" in str(info.value)


def test_first_valid_file_by_name_wins_and_problems_are_reported(tmp_path: Path) -> None:
    assert load_network(tmp_path / "missing") == (None, [])
    assert "no CNI network config" in (network_problem(tmp_path) or "")
    (tmp_path / "05-broken.conflist").write_text("{")
    (tmp_path / "10-b.conflist").write_text(json.dumps({**CONFLIST, "name": "b"}))
    (tmp_path / "20-a.conf").write_text(json.dumps({"cniVersion": "1.0.0", "name": "a", "type": "bridge"}))
    (tmp_path / "00-ignored.txt").write_text("x")
    network, problems = load_network(tmp_path)
    assert network is not None and network.name == "b" and network.source.endswith("10-b.conflist")
    assert len(problems) == 1 and "05-broken.conflist" in problems[0]
    assert network_problem(tmp_path) is None
    (tmp_path / "10-b.conflist").unlink()
    (tmp_path / "20-a.conf").unlink()
    assert "05-broken.conflist: not valid JSON" in (network_problem(tmp_path) or "")


def test_plugin_config_injects_name_version_prev_result_and_asked_capabilities() -> None:
    network = parse_network(json.dumps(CONFLIST))
    runtime = {"portMappings": [{"hostPort": 80}], "dns": {"servers": ["1.1.1.1"]}}
    first = plugin_config(network, network.plugins[0], None, runtime)
    assert first["name"] == "net" and first["cniVersion"] == "1.0.0"
    assert "prevResult" not in first and "runtimeConfig" not in first  # bridge asks for no capability
    second = plugin_config(network, network.plugins[1], {"ips": []}, runtime)
    assert second["prevResult"] == {"ips": []} and second["runtimeConfig"] == {"portMappings": [{"hostPort": 80}]}
    assert network.plugins[1] == CONFLIST["plugins"][1]  # the config itself is not changed


def test_cni_args_start_with_ignore_unknown() -> None:
    assert cni_args([("K8S_POD_NAME", "p"), ("K8S_POD_NAMESPACE", "ns")]) == (
        "IgnoreUnknown=1;K8S_POD_NAME=p;K8S_POD_NAMESPACE=ns")


def test_pod_ips_only_from_sandbox_interfaces_ipv4_first() -> None:
    result = {
        "interfaces": [{"name": "br0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"interface": 2, "address": "fd00::5/64"}, {"interface": 2, "address": "10.1.0.5/24"},
                {"interface": 0, "address": "10.1.0.1/24"}],
    }
    assert pod_ips(result) == ["10.1.0.5", "fd00::5"]
    assert pod_ips({"ips": [{"address": "10.2.0.2/16"}]}) == ["10.2.0.2"]
    assert pod_ips({"ip4": {"ip": "10.3.0.3/16"}, "ip6": {"ip": "fd01::3/64"}}) == ["10.3.0.3", "fd01::3"]
    assert pod_ips(None) == [] and pod_ips({}) == []


def test_plugin_errors_are_described() -> None:
    error = json.dumps({"cniVersion": "1.0.0", "code": 7, "msg": "no IP addresses available", "details": "full"})
    assert describe_error("host-local", "ADD", 1, error.encode(), b"") == (
        "CNI plugin 'host-local' failed on ADD: no IP addresses available: full (CNI error code 7)")
    assert describe_error("x", "DEL", 2, b"", b"panic: boom\n") == "CNI plugin 'x' failed on DEL with exit code 2: " \
                                                                     "panic: boom"
    assert "no output" in describe_error("x", "ADD", 1, b"", b"")


def test_default_network() -> None:
    conflist = default_conflist("crirt", "crirt0", ["10.88.0.0/16"])
    network = parse_network(json.dumps(conflist))
    assert [p["type"] for p in network.plugins] == ["bridge", "portmap"]
    bridge = network.plugins[0]
    assert bridge["bridge"] == "crirt0" and bridge["ipam"]["type"] == "host-local"
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.88.0.0/16"}]]
    assert network.plugins[1]["capabilities"] == {"portMappings": True}
    dual = default_conflist("crirt", "crirt0", ["10.88.0.0/16", "fd88::/64"])
    assert dual["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.88.0.0/16"}], [{"subnet": "fd88::/64"}]]
    assert dual["plugins"][0]["ipam"]["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    with pytest.raises(ValueError):
        default_conflist("crirt", "crirt0", [])


def test_default_network_is_written_only_into_an_empty_conf_dir(tmp_path: Path) -> None:
    conf = tmp_path / "net.d"
    path = write_default_network(conf, "crirt", "crirt0", ["10.88.0.0/16"])
    assert path == conf / DEFAULT_FILE_NAME
    assert isinstance(parse_network(path.read_text()), NetworkConfig)
    assert write_default_network(conf, "other", "x0", ["10.99.0.0/16"]) is None
    assert json.loads(path.read_text())["name"] == "crirt"
