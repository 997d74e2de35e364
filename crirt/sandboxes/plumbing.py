"""Pure decisions about a pod's plumbing: namespaces, hostname, /etc/hosts, resolv.conf, sysctls, cgroup
parent, port mappings. Each validates its part of the request and raises ``InvalidArgument`` naming the
field and the problem, before anything is created."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crirt.errors import InvalidArgument
from crirt.model.common import NamespaceOption
from crirt.model.enums import NamespaceMode, Protocol
from crirt.model.sandbox import DNSConfig, PodSandboxConfig, PortMapping
from crirt.oci.userns import UserNamespacePlan, plan_user_namespace

HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-]{0,62}[A-Za-z0-9])?$")
DNS_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,253}$")
RESOLV_OPTION = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
SYSCTL_PART = re.compile(r"^[A-Za-z0-9_\-.]{1,128}$")
SLICE = re.compile(r"^[A-Za-z0-9_:.\\\-]{1,200}\.slice$")
MAX_SEARCHES = 32
MAX_SEARCH_CHARS = 2048

IPC_SYSCTLS = frozenset({"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                         "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"})
UTS_SYSCTLS = frozenset({"kernel.domainname"})

LOCALHOST_ENTRIES = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)


@dataclass(frozen=True)
class NamespacePlan:
    """Which namespaces a pod gets. UTS follows the network (a hostNetwork pod has the node's hostname)."""

    network: NamespaceMode
    ipc: NamespaceMode
    pid: NamespaceMode
    user: UserNamespacePlan | None = None
    """The pod's own user namespace (``userns_options`` mode POD); None: the node's."""

    @property
    def host_network(self) -> bool:
        return self.network == NamespaceMode.NODE

    @property
    def pinned(self) -> tuple[str, ...]:
        """Namespace kinds crirt creates and pins for the pod (``user`` first: it owns the others)."""
        kinds = ["user"] if self.user is not None else []
        if self.network == NamespaceMode.POD:
            kinds += ["net", "uts"]
        if self.ipc == NamespaceMode.POD:
            kinds.append("ipc")
        return tuple(kinds)

    @property
    def needs_infra(self) -> bool:
        """A shared PID namespace needs a process to hold it: the infra container."""
        return self.pid == NamespaceMode.POD


def namespace_options(config: PodSandboxConfig) -> NamespaceOption:
    """The namespace options a request asks for (all POD, the CRI default, when unset)."""
    context = config.linux.security_context if config.linux else None
    return (context.namespace_options if context else None) or NamespaceOption()


def plan_namespaces(options: NamespaceOption) -> NamespacePlan:
    """Check the modes a sandbox may use: network and IPC are POD or NODE; PID is POD, CONTAINER or NODE
    (TARGET names a container, which a sandbox cannot); the user namespace as ``oci.userns`` allows."""
    if options.network not in (NamespaceMode.POD, NamespaceMode.NODE):
        raise InvalidArgument(f"linux.security_context.namespace_options.network: mode {options.network.name} is "
                              "not valid for a pod sandbox (POD or NODE)")
    if options.ipc not in (NamespaceMode.POD, NamespaceMode.NODE):
        raise InvalidArgument(f"linux.security_context.namespace_options.ipc: mode {options.ipc.name} is not "
                              "valid for a pod sandbox (POD or NODE)")
    if options.pid == NamespaceMode.TARGET or options.target_id:
        raise InvalidArgument("linux.security_context.namespace_options.pid: mode TARGET (target_id) shares a "
                              "container's PID namespace and is only valid for containers, not for a pod sandbox")
    user = plan_user_namespace(options, "linux.security_context.namespace_options")
    return NamespacePlan(network=options.network, ipc=options.ipc, pid=options.pid, user=user)


def check_hostname(hostname: str) -> str:
    """A valid hostname (RFC 1123 labels, at most 64 characters, the kernel's limit) or ""."""
    if hostname and not HOSTNAME.match(hostname):
        raise InvalidArgument(f"hostname {hostname!r} is not a valid host name (letters, digits, '-' and '.', "
                              "at most 64 characters, starting and ending with a letter or digit)")
    return hostname


def hosts_file(hostname: str, ips: Sequence[str], host_hosts: str | None) -> str:
    """The pod's /etc/hosts: the node's file for a hostNetwork pod (``host_hosts``), else the localhost
    entries plus one line per pod IP with its hostname."""
    if host_hosts is not None:
        return host_hosts
    return LOCALHOST_ENTRIES + "".join(f"{ip}\t{hostname}\n" for ip in ips if hostname)


def check_dns(dns: DNSConfig | None) -> None:
    """Servers must be IP addresses; searches and options single words (no resolv.conf injection)."""
    if dns is None:
        return
    for index, server in enumerate(dns.servers):
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise InvalidArgument(f"dns_config.servers[{index}]: {server!r} is not an IP address") from None
    for index, domain in enumerate(dns.searches):
        if not DNS_NAME.match(domain):
            raise InvalidArgument(f"dns_config.searches[{index}]: {domain!r} is not a DNS search domain")
    if len(dns.searches) > MAX_SEARCHES or len(" ".join(dns.searches)) > MAX_SEARCH_CHARS:
        raise InvalidArgument(f"dns_config.searches: at most {MAX_SEARCHES} domains and {MAX_SEARCH_CHARS} "
                              f"characters (got {len(dns.searches)})")
    for index, option in enumerate(dns.options):
        if not RESOLV_OPTION.match(option):
            raise InvalidArgument(f"dns_config.options[{index}]: {option!r} is not a resolv.conf option")


def resolv_conf(dns: DNSConfig | None, host_resolv: str) -> str:
    """The pod's resolv.conf: from the DNS config when it says anything, else the node's file."""
    check_dns(dns)
    if dns is None or not (dns.servers or dns.searches or dns.options):
        return host_resolv
    lines = []
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    lines += [f"nameserver {server}" for server in dns.servers]
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n"


def dns_runtime_config(dns: DNSConfig | None) -> dict[str, Any]:
    """CNI ``runtimeConfig.dns`` for plugins that ask for the ``dns`` capability."""
    if dns is None:
        return {}
    return {"servers": list(dns.servers), "searches": list(dns.searches), "options": list(dns.options)}


def sysctl_parts(key: str) -> list[str]:
    """Split a sysctl name: with a '/' the separator is '/' and dots are literal (``net/ipv4/conf/eth0.1/x``),
    else the separator is '.'; raise InvalidArgument for anything that is not a plain name."""
    parts = key.split("/") if "/" in key else key.split(".")
    if not parts or any(not SYSCTL_PART.match(p) or p in (".", "..") for p in parts):
        raise InvalidArgument(f"linux.sysctls: {key!r} is not a sysctl name")
    return parts


def plan_sysctls(sysctls: Mapping[str, str], plan: NamespacePlan) -> list[tuple[str, str]]:
    """(path under /proc/sys, value) for each sysctl, refusing every sysctl that is not namespaced (it would
    change the whole node) and every namespaced one whose namespace the pod shares with the node."""
    planned = []
    for key, value in sorted(sysctls.items()):
        parts = sysctl_parts(key)
        dotted = ".".join(parts)
        if "\n" in value or "\0" in value or len(value) > 4096:
            raise InvalidArgument(f"linux.sysctls: the value of {key!r} must be one line of at most 4096 characters")
        if parts[0] == "net":
            if plan.host_network:
                raise InvalidArgument(f"linux.sysctls: {key!r} is a network sysctl, but the pod uses the node's "
                                      "network namespace (hostNetwork): setting it would change the node; refused")
        elif dotted in IPC_SYSCTLS or dotted.startswith("fs.mqueue."):
            if plan.ipc == NamespaceMode.NODE:
                raise InvalidArgument(f"linux.sysctls: {key!r} is an IPC sysctl, but the pod uses the node's IPC "
                                      "namespace (hostIPC): setting it would change the node; refused")
        elif dotted in UTS_SYSCTLS:
            if plan.host_network:
                raise InvalidArgument(f"linux.sysctls: {key!r} needs the pod's own UTS namespace, but a "
                                      "hostNetwork pod shares the node's; refused")
        else:
            raise InvalidArgument(f"linux.sysctls: {key!r} is not a namespaced sysctl: setting it would change "
                                  "the whole node; refused (per-pod sysctls: net.*, kernel.shm*, kernel.msg*, "
                                  "kernel.sem, fs.mqueue.*, kernel.domainname)")
        planned.append(("/".join(parts), value))
    return planned


def cgroup_parent(driver: str, requested: str) -> str:
    """The cgroup parent of the pod for ``driver`` (``cgroupfs`` or ``systemd``), checked against the driver.

    cgroupfs wants an absolute path (``/kubepods/burstable/pod<uid>``; default ``/crirt``), systemd a slice
    name (``kubepods-burstable-pod<uid>.slice``; default ``crirt.slice``). The format is the same on cgroup v1
    and v2. A mismatch means the kubelet's cgroupDriver differs from crirt's ``cgroup_driver``."""
    if driver == "systemd":
        if not requested:
            return "crirt.slice"
        if not SLICE.match(requested):
            raise InvalidArgument(f"linux.cgroup_parent {requested!r} is not a systemd slice name "
                                  "(like kubepods-burstable-pod<uid>.slice), but crirt's cgroup_driver is systemd: "
                                  "the kubelet's cgroupDriver must match crirt's")
        return requested
    if not requested:
        return "/crirt"
    if requested.endswith(".slice") and "/" not in requested:
        raise InvalidArgument(f"linux.cgroup_parent {requested!r} is a systemd slice, but crirt's cgroup_driver is "
                              "cgroupfs: the kubelet's cgroupDriver must match crirt's")
    parts = requested.split("/")
    if not requested.startswith("/") or any(p in (".", "..") for p in parts) or "\n" in requested:
        raise InvalidArgument(f"linux.cgroup_parent {requested!r} must be an absolute cgroup path "
                              "(like /kubepods/burstable/pod<uid>) with cgroup_driver cgroupfs")
    return "/" + "/".join(p for p in parts if p)


PROTOCOL_NAMES = {Protocol.TCP: "tcp", Protocol.UDP: "udp", Protocol.SCTP: "sctp"}


def port_mappings(ports: Sequence[PortMapping]) -> list[dict[str, Any]]:
    """CNI ``runtimeConfig.portMappings`` (portmap plugin) for the ports with a host port."""
    mappings = []
    for index, port in enumerate(ports):
        where = f"port_mappings[{index}]"
        if not 0 < port.container_port <= 65535:
            raise InvalidArgument(f"{where}.container_port: {port.container_port} is not a port (1-65535)")
        if not 0 <= port.host_port <= 65535:
            raise InvalidArgument(f"{where}.host_port: {port.host_port} is not a port (1-65535, 0 for none)")
        if port.host_ip:
            try:
                ipaddress.ip_address(port.host_ip)
            except ValueError:
                raise InvalidArgument(f"{where}.host_ip: {port.host_ip!r} is not an IP address") from None
        if port.host_port == 0:
            continue  # nothing to publish (containerd skips these too)
        mapping: dict[str, Any] = {"hostPort": port.host_port, "containerPort": port.container_port,
                                   "protocol": PROTOCOL_NAMES[port.protocol]}
        if port.host_ip:
            mapping["hostIP"] = port.host_ip
        mappings.append(mapping)
    return mappings


def cgroup_version(mounts: Sequence[tuple[str, str]]) -> str:
    """``v2`` when /sys/fs/cgroup is the unified hierarchy, ``v1 (hybrid)`` when a v2 tree is mounted beside
    the v1 controllers, else ``v1``; ``mounts`` are (mount point, fs type) pairs."""
    types = {point: fstype for point, fstype in mounts}
    if types.get("/sys/fs/cgroup") == "cgroup2":
        return "v2"
    if "cgroup2" in types.values():
        return "v1 (hybrid)"
    return "v1"
