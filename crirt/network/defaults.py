"""The default pod network crirt writes when the CNI conf dir holds no network at all.

A bridge with host-local IPAM and portmap, from Debian's containernetworking-plugins; ``lo`` is brought up
by crirt itself for every pod (``crirt.network.netns.loopback_up``: what the ``loopback`` plugin does, without
starting a process), so the network needs no loopback entry. The file is named
``99-crirt.conflist`` so any network a cluster add-on installs later (``10-calico.conflist``, ...) sorts first
and wins, as CNI users pick the first file by name.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crirt.network.cni import config_files, write_atomically

DEFAULT_FILE_NAME = "99-crirt.conflist"


def default_conflist(name: str, bridge: str, subnets: Sequence[str], cni_version: str = "1.0.0") -> dict[str, Any]:
    """The default network: bridge (gateway + masquerade) with one host-local range set per subnet
    (one IPv4 and one IPv6 subnet give dual stack), then portmap for hostPorts."""
    networks = [ipaddress.ip_network(s, strict=True) for s in subnets]
    if not networks:
        raise ValueError("the default network needs at least one subnet")
    routes = [{"dst": "0.0.0.0/0" if n.version == 4 else "::/0"} for n in networks]
    return {
        "cniVersion": cni_version,
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(n)}] for n in networks],
                    "routes": list({r["dst"]: r for r in routes}.values()),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def write_default_network(conf_dir: Path, name: str, bridge: str, subnets: Sequence[str]) -> Path | None:
    """Write the default network into ``conf_dir`` when it holds no network config; the path, or None."""
    if config_files(conf_dir):
        return None
    path = conf_dir / DEFAULT_FILE_NAME
    write_atomically(path, (json.dumps(default_conflist(name, bridge, subnets), indent=2) + "\n").encode())
    return path
