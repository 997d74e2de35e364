"""crirt's runc shim plugin: containers on runc, each monitored by its own conmon.

All the work is done by crirt's OCI-CLI + conmon driver (``crirt.shim.conmon``); this plugin validates its
options, points the driver at runc, and reports runc's features.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from crirt.shim import (
    DelegatingShim,
    HandlerFeatures,
    ShimContext,
    check_known,
    executable,
    kernel_version,
    missing_programs,
)
from crirt.shim.conmon import ConmonRuntime

__version__ = "0.1.0"

OPTIONS = ("binary", "root", "systemd_cgroup", "extra_args", "conmon", "exit_sweep_interval")
RRO_KERNEL = (5, 12)
"""The first kernel with ``mount_setattr(2)``, which runc's ``rro`` needs."""
IDMAP_OVERLAY_KERNEL = (5, 19)
"""The first kernel whose overlayfs takes id-mapped lower layers, which crirt's pod rootfs needs."""



def features_from(runtime_features: Mapping[str, Any] | None, kernel: tuple[int, int]) -> HandlerFeatures:
    """Map the OCI runtime features document (``runc features``) and the node's kernel (major, minor) to the
    CRI handler features.

    Recursive read-only mounts need the ``rro`` mount option and a kernel with ``mount_setattr`` (5.12, the
    gate containerd applies too: runc lists ``rro`` whatever the kernel); user namespaces for pods need the
    ``user`` namespace (joined by path) and a kernel with id-mapped overlay layers: crirt prepares the
    id-mapped rootfs itself before runc runs, so runc's own id-mapped mounts (runc >= 1.2) are not needed.
    Without the document (runc < 1.1) nothing is claimed.
    """
    if not runtime_features:
        return HandlerFeatures()
    linux = runtime_features.get("linux") or {}
    return HandlerFeatures(
        recursive_read_only_mounts=kernel >= RRO_KERNEL and "rro" in (runtime_features.get("mountOptions") or []),
        user_namespaces=kernel >= IDMAP_OVERLAY_KERNEL and "user" in (linux.get("namespaces") or []),
    )


class RuncShim(DelegatingShim):
    """The ``runc`` shim plugin. Options (all optional):

    - ``binary``: runc to run, a name on PATH or a path (default ``"runc"``)
    - ``root``: runc's ``--root`` state directory (default ``<handler state dir>/runc-root``)
    - ``systemd_cgroup``: let systemd manage cgroups (runc ``--systemd-cgroup``; default false)
    - ``extra_args``: more global runc flags, given on every call (default none)
    - ``conmon``: the conmon binary, a name on PATH or a path (default ``"conmon"``)
    - ``exit_sweep_interval``: seconds between checks for exits no event reported, e.g. of a container whose
      conmon was killed (default 30)
    """

    api_version = "2.1"
    default_handlers: ClassVar[Mapping[str, Mapping[str, Any]]] = {"runc": {}}
    """crirt's built-in handler, listed even where runc is missing (its problem then says why)."""

    @classmethod
    def available(cls, options: Mapping[str, Any]) -> str | None:
        """runc and conmon must be installed."""
        return missing_programs(options.get("binary", "runc"), options.get("conmon", "conmon"))

    def __init__(self, context: ShimContext, options: Mapping[str, Any]) -> None:
        check_known(options, OPTIONS, "runc")
        super().__init__(context, options)
        root = options.get("root", str(context.state / "runc-root"))
        if not isinstance(root, str) or not root.startswith("/"):
            raise ValueError(f"option 'root' must be an absolute path, not {root!r}")
        systemd_cgroup = options.get("systemd_cgroup", False)
        if not isinstance(systemd_cgroup, bool):
            raise ValueError(f"option 'systemd_cgroup' must be true or false, not {systemd_cgroup!r}")
        extra_args = options.get("extra_args", [])
        if not isinstance(extra_args, list) or not all(isinstance(a, str) and a for a in extra_args):
            raise ValueError(f"option 'extra_args' must be a list of non-empty strings, not {extra_args!r}")
        sweep = options.get("exit_sweep_interval", 30.0)
        if isinstance(sweep, bool) or not isinstance(sweep, int | float) or sweep <= 0:
            raise ValueError(f"option 'exit_sweep_interval' must be a number of seconds above 0, not {sweep!r}")
        self.runtime = ConmonRuntime(
            runtime=executable("binary", options.get("binary", "runc")),
            root=Path(root),
            state_dir=context.state,
            conmon=executable("conmon", options.get("conmon", "conmon")),
            global_args=extra_args,
            systemd_cgroup=systemd_cgroup,
            sweep_interval=float(sweep),
        )

    async def features(self) -> HandlerFeatures:
        return features_from(await self.runtime.features(), kernel_version(platform.release()))

