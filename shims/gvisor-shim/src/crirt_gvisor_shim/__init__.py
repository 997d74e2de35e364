"""crirt's gVisor shim plugin: pods in one gVisor sandbox each, run by ``runsc`` and monitored by conmon.

The work is done by crirt's OCI-CLI + conmon driver, adapted to runsc's sub-containers in
``crirt_gvisor_shim.runtime``; this module validates the options, turns them into runsc's global flags (given
on every runsc call, as runsc requires) and reports the handler's features.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from crirt.shim import (
    DelegatingShim,
    HandlerFeatures,
    ShimContext,
    check_known,
    executable,
    missing_programs,
    run_program,
)
from crirt_gvisor_shim.runtime import GvisorRuntime

__version__ = "0.1.0"

OPTIONS = ("binary", "root", "platform", "network", "overlay", "net_raw", "oci_seccomp", "debug_log_dir", "extra_args",
           "conmon")
SWITCHES = {"net_raw": "--net-raw", "oci_seccomp": "--oci-seccomp"}
"""Boolean options and the runsc flag each turns on."""
PLATFORMS = ("ptrace", "kvm", "systrap")
NETWORKS = ("host", "sandbox", "none")
OVERLAY = re.compile(r"none|(root|all):(memory|/\S+)")
DEFAULT_NETWORK = "host"
"""On kernels that show ``/proc/sys/net/core/rmem_default`` in every network namespace (Linux 6.x), runsc
20221219 refuses ``--network=sandbox`` everywhere ("cannot run with network enabled in root network namespace")."""



def _choice(options: Mapping[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    value = options.get(name, default)
    if value not in choices:
        raise ValueError(f"option {name!r} must be one of {', '.join(map(repr, choices))}, not {value!r}")
    return str(value)


def _absolute(options: Mapping[str, Any], name: str, default: str | None) -> str | None:
    value = options.get(name, default)
    if value is not None and (not isinstance(value, str) or not value.startswith("/") or re.search(r"\s", value)):
        raise ValueError(f"option {name!r} must be an absolute path without white space, not {value!r}")
    return value


def runsc_flags(options: Mapping[str, Any]) -> list[str]:
    """runsc's global flags for the options (all but ``binary``, ``root`` and ``conmon``); ValueError naming
    the bad option."""
    flags = [f"--platform={_choice(options, 'platform', PLATFORMS, 'ptrace')}",
             f"--network={_choice(options, 'network', NETWORKS, DEFAULT_NETWORK)}"]
    overlay = options.get("overlay")
    if overlay is not None:
        if not isinstance(overlay, str) or not OVERLAY.fullmatch(overlay):
            raise ValueError(f"option 'overlay' must be 'none', 'root:memory', 'all:memory' or '<root|all>:/dir', "
                             f"not {overlay!r}")
        flags.append(f"--overlay2={overlay}")
    for name, flag in SWITCHES.items():
        value = options.get(name, False)
        if not isinstance(value, bool):
            raise ValueError(f"option {name!r} must be true or false, not {value!r}")
        if value:
            flags.append(flag)
    debug_log_dir = _absolute(options, "debug_log_dir", None)
    if debug_log_dir is not None:
        flags += ["--debug", f"--debug-log={debug_log_dir.rstrip('/')}/"]
    extra_args = options.get("extra_args", [])
    if not isinstance(extra_args, list) or not all(isinstance(a, str) and a and not re.search(r"\s", a)
                                                   for a in extra_args):
        raise ValueError(f"option 'extra_args' must be a list of non-empty strings without white space, "
                         f"not {extra_args!r}")
    return flags + extra_args


def platforms_listed(help_text: str) -> list[str]:
    """The platform names printed by ``runsc help platforms`` (one per line)."""
    return [line.strip() for line in help_text.splitlines() if re.fullmatch(r"\s*[a-z0-9_-]+\s*", line)]


class GvisorShim(DelegatingShim):
    """The ``gvisor`` shim plugin (default handler name ``runsc``). Options (all optional):

    - ``binary``: runsc to run, a name on PATH or a path (default ``"runsc"``)
    - ``root``: runsc's ``--root`` state directory (default ``<handler state dir>/runsc-root``)
    - ``platform``: ``ptrace`` (default), ``kvm`` or ``systrap`` (only where the runsc has it)
    - ``network``: ``host`` (default here), ``sandbox`` or ``none``
    - ``overlay``: runsc ``--overlay2``, e.g. ``"root:memory"`` (default: runsc's own, no overlay)
    - ``net_raw``: ``true`` gives raw sockets to containers with ``CAP_NET_RAW`` (runsc ``--net-raw``; off:
      none has them, whatever its capabilities)
    - ``oci_seccomp``: ``true`` applies the containers' seccomp profiles inside the sandbox (``--oci-seccomp``;
      off: gVisor's own syscall filter only)
    - ``debug_log_dir``: turn on ``--debug`` and write runsc's debug logs there
    - ``extra_args``: more global runsc flags, given on every call
    - ``conmon``: the conmon binary, a name on PATH or a path (default ``"conmon"``)
    """

    api_version = "2.1"
    needs_infra_container: ClassVar[bool] = True
    default_handlers: ClassVar[Mapping[str, Mapping[str, Any]]] = {"runsc": {}}

    @classmethod
    def available(cls, options: Mapping[str, Any]) -> str | None:
        """runsc and conmon must be installed."""
        return missing_programs(options.get("binary", "runsc"), options.get("conmon", "conmon"))

    def __init__(self, context: ShimContext, options: Mapping[str, Any]) -> None:
        check_known(options, OPTIONS, "gvisor")
        super().__init__(context, options)
        root = _absolute(options, "root", str(context.state / "runsc-root"))
        assert root is not None
        self.platform = _choice(options, "platform", PLATFORMS, "ptrace")
        self.runtime = GvisorRuntime(
            runtime=executable("binary", options.get("binary", "runsc")),
            root=Path(root),
            state_dir=context.state,
            conmon=executable("conmon", options.get("conmon", "conmon")),
            global_args=runsc_flags(options),
        )

    async def features(self) -> HandlerFeatures:
        """Checks that this runsc has the chosen platform, then reports what the handler supports: runsc
        20221219 has no ``features`` command, no recursive read-only mounts and no user namespaces for pods."""
        done = await run_program([str(self.runtime.runtime), "help", "platforms"],
                                 time_limit=self.runtime.command_timeout)
        listed = platforms_listed(done.stdout.decode(errors="replace"))
        if done.returncode != 0 or self.platform not in listed:
            said = ", ".join(listed) or done.stderr.decode(errors="replace").strip() or "none"
            raise ValueError(f"option 'platform': {self.runtime.runtime} does not offer {self.platform!r} "
                             f"(it lists {said})")
        return HandlerFeatures(recursive_read_only_mounts=False, user_namespaces=False)

