"""The OCI ``process`` of a container: argv, environment, working directory and capabilities.

The image config (``Entrypoint``, ``Cmd``, ``Env``, ``WorkingDir``) is merged with the request by the CRI's
rules, as containerd does. No ``rlimits`` are set: the container inherits crirt's (through conmon), as with
containerd's CRI plugin.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from crirt.errors import FailedPrecondition, InvalidArgument
from crirt.model.common import Capability
from crirt.model.container import ContainerConfig, LinuxContainerSecurityContext

SC = "config.linux.security_context"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

ALL_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
"""Linux capabilities by number (``ALL_CAPABILITIES[21] == "CAP_SYS_ADMIN"``)."""

DEFAULT_CAPABILITIES = frozenset({
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
})
"""The Docker/containerd default set."""


def _no_nul(items: Iterable[str], field: str) -> None:
    for index, item in enumerate(items):
        if "\x00" in item:
            raise InvalidArgument(f"{field}[{index}]: contains a NUL character")


def process_args(config: ContainerConfig, image: Mapping[str, Any]) -> list[str]:
    """argv by the CRI's (and containerd's) rule: ``command`` replaces the image's Entrypoint and then the Cmd
    is ignored, so argv is ``command + args``. Without ``command``: the Entrypoint (unless it is ``[""]``)
    followed by ``args``, or by the image's Cmd when ``args`` is empty too."""
    command, args = list(config.command), list(config.args)
    _no_nul(command, "config.command")
    _no_nul(args, "config.args")
    if not command:
        entrypoint = list(image.get("Entrypoint") or [])
        if not args:
            args = list(image.get("Cmd") or [])
        if entrypoint != [""]:
            command = entrypoint
    argv = command + args
    if not argv:
        raise InvalidArgument("config.command: no command given and the image has neither Entrypoint nor Cmd")
    return argv


def _set_env(env: list[str], item: str) -> None:
    """Replace the variable of the same name in place, or append it (containerd's replaceOrAppendEnvValues)."""
    key = item.split("=", 1)[0]
    for index, existing in enumerate(env):
        if existing.split("=", 1)[0] == key:
            env[index] = item
            return
    env.append(item)


def process_env(config: ContainerConfig, image: Mapping[str, Any], hostname: str) -> list[str]:
    """``PATH`` (a default, replaced by the image's), ``HOSTNAME`` (the pod's), the image's Env, then the
    request's envs; a later variable replaces an earlier one of the same name where it stands."""
    env = [DEFAULT_PATH]
    if hostname:
        _set_env(env, f"HOSTNAME={hostname}")
    image_env = [str(item) for item in image.get("Env") or []]
    _no_nul(image_env, "image config Env")
    for item in image_env:
        _set_env(env, item)
    for index, pair in enumerate(config.envs):
        field = f"config.envs[{index}]"
        if not pair.key or "=" in pair.key or "\x00" in pair.key:
            raise InvalidArgument(f"{field}.key: {pair.key!r} is not a variable name (empty, or has '=' or NUL)")
        try:
            value = pair.value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"{field}.value: {pair.key} is not valid UTF-8") from None
        if "\x00" in value:
            raise InvalidArgument(f"{field}.value: {pair.key} contains a NUL character")
        _set_env(env, f"{pair.key}={value}")
    return env


def working_dir(config: ContainerConfig, image: Mapping[str, Any]) -> str:
    """The request's ``working_dir``, else the image's ``WorkingDir``, else ``/``; it must be absolute."""
    if config.working_dir:
        cwd, field = config.working_dir, "config.working_dir"
    else:
        cwd, field = str(image.get("WorkingDir") or "/"), "image config WorkingDir"
    if not cwd.startswith("/") or "\x00" in cwd:
        raise InvalidArgument(f"{field}: {cwd!r} is not an absolute path")
    return cwd


def capability_names(mask: int) -> frozenset[str]:
    """The names of the capabilities set in a mask (``CapEff`` of /proc/PID/status); unknown bits ignored."""
    return frozenset(name for bit, name in enumerate(ALL_CAPABILITIES) if mask >> bit & 1)


def _normalize(names: Sequence[str], field: str) -> set[str]:
    """``net_admin``, ``NET_ADMIN`` and ``CAP_NET_ADMIN`` name the same capability; ``ALL`` is kept."""
    result = set()
    for index, raw in enumerate(names):
        name = raw.strip().upper()
        if name != "ALL" and not name.startswith("CAP_"):
            name = "CAP_" + name
        if name != "ALL" and name not in ALL_CAPABILITIES:
            raise InvalidArgument(f"{field}[{index}]: unknown capability {raw!r}")
        result.add(name)
    return result


def _ordered(names: set[str] | frozenset[str]) -> list[str]:
    return sorted(names, key=ALL_CAPABILITIES.index)


def capabilities(context: LinuxContainerSecurityContext, held: frozenset[str]) -> dict[str, list[str]]:
    """The five capability sets.

    Privileged: every capability crirt holds (``held``: asking for one it lacks makes runc fail). Otherwise the
    default set (less any crirt lacks), then containerd's order: ``ALL`` added, ``ALL`` dropped, the named
    additions, the named drops; a drop removes a capability from every set. ``add_capabilities`` go to the
    bounding, permitted and effective sets, not the inheritable one (containerd's and Docker's choice since
    CVE-2022-24769); ``add_ambient_capabilities`` go to all five, as ambient capabilities need the inheritable
    set. Asking for a capability crirt does not hold is FAILED_PRECONDITION."""
    if context.privileged:
        every = _ordered(held)
        return {"bounding": every, "effective": every, "permitted": list(every), "inheritable": [], "ambient": []}
    asked = context.capabilities or Capability()
    field = f"{SC}.capabilities"
    add = _normalize(asked.add_capabilities, f"{field}.add_capabilities")
    drop = _normalize(asked.drop_capabilities, f"{field}.drop_capabilities")
    ambient = _normalize(asked.add_ambient_capabilities, f"{field}.add_ambient_capabilities")
    if "ALL" in ambient:
        raise InvalidArgument(f"{field}.add_ambient_capabilities: ALL is not accepted; name the capabilities")
    lacking = _ordered((add | ambient) - {"ALL"} - held)
    if lacking:
        raise FailedPrecondition(f"{field}: crirt does not hold {', '.join(lacking)} (not in its own capability "
                                 "set), so no container can be given it")
    granted = set(DEFAULT_CAPABILITIES & held)
    if "ALL" in add:
        granted = set(held)
    if "ALL" in drop:
        granted = set()
    granted |= add - {"ALL"}
    dropped = drop - {"ALL"}
    main = _ordered((granted | ambient) - dropped)
    kept_ambient = _ordered(ambient - dropped)
    return {"bounding": main, "effective": list(main), "permitted": list(main), "inheritable": kept_ambient,
            "ambient": list(kept_ambient)}
