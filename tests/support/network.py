"""A private CNI network for one test: its own conf dir, bridge, subnet and network name, so host-local keeps
its allocations in its own directory and nothing touches the host's /etc/cni/net.d; plus leak counting
(addresses, iptables rules, veths, mounts, files) and teardown by name.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from support.daemon import Daemon, start_daemon

HOST_LOCAL_DIR = Path("/var/lib/cni/networks")
CNI_BIN = Path("/usr/lib/cni")


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    nets = []
    for line in out.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("local", "broadcast"):
            word = line.split()[1]
        try:
            nets.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue
    return [n for n in nets if n.version == 4 and n.prefixlen > 0]


def free_subnet() -> ipaddress.IPv4Network:
    """A random 10.2xx.y.0/24 no route of this machine overlaps."""
    used = _used_networks()
    for _ in range(200):
        candidate = ipaddress.ip_network(f"10.{200 + secrets.randbelow(55)}.{secrets.randbelow(256)}.0/24")
        if not any(candidate.overlaps(n) for n in used):
            return candidate
    raise RuntimeError("no free 10.2xx.y.0/24 subnet")


@dataclass
class BridgeNetwork:
    """One test's bridge network; ``write`` puts its conflist into ``conf_dir``."""

    conf_dir: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    subnet: ipaddress.IPv4Network = field(default_factory=free_subnet)
    subnet6: ipaddress.IPv6Network | None = None

    @property
    def name(self) -> str:
        return f"crirt-test-{self.tag}"

    @property
    def bridge(self) -> str:
        return f"crt{self.tag}"

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def conflist(self, extra_plugins: list[dict[str, Any]] | None = None, portmap: bool = True,
                 ip_masq: bool = True) -> dict[str, Any]:
        ranges = [[{"subnet": str(self.subnet)}]]
        routes = [{"dst": "0.0.0.0/0"}]
        if self.subnet6 is not None:
            ranges.append([{"subnet": str(self.subnet6)}])
            routes.append({"dst": "::/0"})
        plugins: list[dict[str, Any]] = [{
            "type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": ip_masq, "hairpinMode": True,
            "ipam": {"type": "host-local", "ranges": ranges, "routes": routes},
        }]
        if portmap:
            plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
        plugins += extra_plugins or []
        return {"cniVersion": "1.0.0", "name": self.name, "plugins": plugins}

    def write(self, extra_plugins: list[dict[str, Any]] | None = None, portmap: bool = True) -> Path:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        path = self.conf_dir / "10-test.conflist"
        path.write_text(json.dumps(self.conflist(extra_plugins, portmap)))
        return path

    # ---- what a pod may leak -----------------------------------------------------------------------------

    def allocations(self) -> list[str]:
        """Addresses host-local has handed out on this network."""
        directory = HOST_LOCAL_DIR / self.name
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if _is_ip(p.name))

    def _mentions(self, line: str) -> bool:
        prefix = ".".join(str(self.subnet.network_address).split(".")[:3]) + "."
        return self.name in line or prefix in line

    def nat_rules(self) -> list[str]:
        """iptables nat rules of this network (bridge masquerade, portmap DNAT: they carry the network's name
        or an address of its subnet), and the per-container chains (CNI-DN-*, CNI-<hash>) holding them."""
        out = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout
        ours = [line for line in out.splitlines() if self._mentions(line)]
        chains = {line.split()[1] for line in ours if line.startswith("-A ") and line.split()[1].startswith("CNI-")}
        return sorted(chains - HOST_CHAINS) + ours

    def veths(self) -> list[str]:
        """Host-side veths attached to this network's bridge."""
        out = subprocess.run(["ip", "-o", "link", "show", "master", self.bridge], capture_output=True,
                             text=True).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip()]

    def snapshot(self, state_dir: Path, root_dir: Path) -> dict[str, list[str]]:
        """Everything a pod may leave behind, to compare before and after."""
        pods = state_dir / "pods"
        mounts = [m for m in _mounts_under(state_dir) if m != str(pods)]
        cache = root_dir / "cni" / "results"
        return {
            "allocations": self.allocations(),
            "nat_rules": self.nat_rules(),
            "cni_chains": cni_chains(),
            "veths": self.veths(),
            "mounts": mounts,
            "pod_dirs": sorted(p.name for p in pods.iterdir()) if pods.is_dir() else [],
            "cni_cache": sorted(p.name for p in cache.iterdir()) if cache.is_dir() else [],
        }

    def cleanup(self, state_dir: Path | None = None) -> None:
        """Remove everything of this network from the host, whatever a failed test left."""
        if state_dir is not None:
            kill_containers_under(state_dir)
            for point in reversed(_mounts_under(state_dir)):
                subprocess.run(["umount", "-l", point], capture_output=True)
        out = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout
        ours = [line for line in out.splitlines() if line.startswith("-A ") and self._mentions(line)]
        for line in ours:
            subprocess.run(["sh", "-c", f"iptables -t nat -D {line[3:]}"], capture_output=True)
        for chain in {line.split()[1] for line in ours} - HOST_CHAINS:
            if chain.startswith("CNI-") and not [r for r in _nat_lines() if r.startswith(f"-A {chain} ")]:
                subprocess.run(["iptables", "-t", "nat", "-X", chain], capture_output=True)
        for veth in self.veths():
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(HOST_LOCAL_DIR / self.name, ignore_errors=True)


def _gvisor_processes(runsc_root: Path) -> list[int]:
    """The runsc-sandbox and runsc-gofer processes run with ``--root=<runsc_root>``."""
    flag = f"--root={runsc_root}".encode()
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            if argv[0] in (b"runsc-sandbox", b"runsc-gofer") and flag in argv:
                found.append(int(cmdline.parent.name))
    return found


def kill_containers_under(state_dir: Path) -> None:
    """Delete every runc container whose runc root lies under ``state_dir``, kill every gVisor sandbox and gofer
    whose runsc root does, and kill their conmons.

    Containers outlive the daemon by design (conmon is not its child), so a test that fails before removing
    its pods would otherwise leave them running."""
    for root in state_dir.glob("shims/*/runc-root"):
        listing = subprocess.run(["runc", "--root", str(root), "list", "-q"], capture_output=True, text=True)
        for container_id in listing.stdout.split():
            subprocess.run(["runc", "--root", str(root), "delete", "--force", container_id], capture_output=True)
    for root in state_dir.glob("shims/*/runsc-root"):
        for pid in _gvisor_processes(root):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    for pidfile in state_dir.glob("shims/*/containers/*/conmon.pid"):
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


HOST_CHAINS = {"CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK"}
"""portmap's shared chains: created once per host and kept."""


def _nat_lines() -> list[str]:
    return subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout.splitlines()


def cni_chains() -> list[str]:
    """Empty per-container CNI chains in the nat table, of any network: a leaked chain whose rules were removed
    names no network, so it shows here; the chains of this network's pods are in ``nat_rules``, and other
    suites' live pods (whose chains hold rules) do not disturb the comparison."""
    lines = _nat_lines()
    filled = {line.split()[1] for line in lines if line.startswith("-A CNI-")}
    return sorted(name for line in lines if line.startswith("-N CNI-")
                  and (name := line.split()[1]) not in HOST_CHAINS and name not in filled)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _mounts_under(prefix: Path) -> list[str]:
    root = str(prefix).rstrip("/")
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split(" ")[4].replace("\\040", " ")
        if point == root or point.startswith(root + "/"):
            points.append(point)
    return points


def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; return it (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def netns_run(netns: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    """Run a command inside a pod's pinned network namespace."""
    return subprocess.run(["nsenter", f"--net={netns}", *argv], capture_output=True, text=True, timeout=timeout)


def script_plugin(bin_dir: Path, name: str, body: str) -> Path:
    """A CNI plugin written as a Python script (for failure injection); it answers VERSION itself."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(
        "#!/usr/bin/python3\nimport json, os, sys, time\n"
        "if os.environ.get('CNI_COMMAND') == 'VERSION':\n"
        "    print(json.dumps({'cniVersion': '1.0.0', 'supportedVersions': ['0.3.1', '0.4.0', '1.0.0']}))\n"
        "    sys.exit(0)\n"
        "conf = json.load(sys.stdin)\n" + body)
    os.chmod(path, 0o755)
    return path


def runc_shim_installed() -> bool:
    return any(ep.name == "runc" for ep in entry_points(group="crirt.shims"))


NEEDS_RUNC_SHIM_REASON = (
    "the runc shim plugin (entry point 'runc' in group crirt.shims, shims/runc-shim) is not installed: "
    "pods with pid: POD need it for their infra container")


@dataclass
class PodEnv:
    """A daemon, its network and a RuntimeService stub."""

    daemon: Daemon
    net: BridgeNetwork
    base: Path
    stub: Any
    pb: ModuleType

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def root(self) -> Path:
        return self.base / "root"

    def snapshot(self) -> dict[str, list[str]]:
        return self.net.snapshot(self.state, self.root)

    def config(self, name: str | None = None, *, pid: str = "CONTAINER", network: str = "POD", ipc: str = "POD",
               attempt: int = 0, **fields: Any) -> Any:
        """A kubelet-like sandbox config (pid CONTAINER unless asked: no infra container needed)."""
        pb = self.pb
        options = pb.NamespaceOption(network=getattr(pb, network), pid=getattr(pb, pid), ipc=getattr(pb, ipc))
        linux = fields.pop("linux", None) or pb.LinuxPodSandboxConfig()
        linux.security_context.namespace_options.CopyFrom(options)
        name = name or f"pod-{secrets.token_hex(3)}"
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, namespace="crirt-test", uid=f"uid-{name}", attempt=attempt),
            hostname=fields.pop("hostname", name), linux=linux, **fields)

    def run(self, config: Any, timeout: float = 30, handler: str = "") -> str:
        return self.stub.RunPodSandbox(self.pb.RunPodSandboxRequest(config=config, runtime_handler=handler),
                                       timeout=timeout).pod_sandbox_id

    def status(self, sandbox_id: str) -> tuple[Any, dict[str, Any]]:
        reply = self.stub.PodSandboxStatus(self.pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True),
                                           timeout=10)
        return reply.status, json.loads(reply.info["info"])

    def netns(self, sandbox_id: str) -> str:
        return self.status(sandbox_id)[1]["namespaces"]["net"]

    def stop(self, sandbox_id: str) -> None:
        self.stub.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)

    def remove(self, sandbox_id: str) -> None:
        self.stub.RemovePodSandbox(self.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)

    def remove_all(self) -> None:
        for item in self.stub.ListPodSandbox(self.pb.ListPodSandboxRequest(), timeout=10).items:
            self.stop(item.id)
            self.remove(item.id)


def start_pod_env(base: Path, pb: ModuleType, net: BridgeNetwork | None = None, cni: str = "",
                  extra: str = "") -> tuple[Daemon, BridgeNetwork]:
    net = net or BridgeNetwork(base / "cni")
    if not (base / "cni").is_dir() or not list((base / "cni").iterdir()):
        net.write()
    daemon = start_daemon(base, extra, cni_config=f"default_network = false\n{cni}")
    return daemon, net
