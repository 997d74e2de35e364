"""The OCI runtime spec (``config.json``) of a container: one pure function of everything it depends on.

``container_spec(SpecInputs)`` is deterministic: every fact about the host, the image and the pod is in its
input, found by the caller (``crirt.oci.host``, ``user.read_image_file``, ``mounts.resolve_host_paths``,
``devices.devices_at``/``host_devices``, ``seccomp.read_localhost_profile``, ``CdiRegistry.edits_for``). The
parts live in their own modules: ``process`` (argv, env, cwd, capabilities), ``user``, ``mounts``, ``devices``,
``resources``, ``seccomp``, ``apparmor``, ``cdi`` (the CDI devices' edits, made last).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crirt.cdi.schema import ContainerEdits
from crirt.errors import FailedPrecondition, InvalidArgument
from crirt.model.common import NamespaceOption
from crirt.model.container import ContainerConfig, LinuxContainerSecurityContext
from crirt.model.enums import NamespaceMode
from crirt.model.sandbox import PodSandboxConfig
from crirt.oci.apparmor import apparmor_profile
from crirt.oci.cdi import apply_cdi_edits
from crirt.oci.devices import HostDevice, device_entries
from crirt.oci.host import HostFacts
from crirt.oci.infra import OCI_VERSION, infra_cgroups_path
from crirt.oci.mounts import PodFiles, container_mounts, masked_and_readonly_paths
from crirt.oci.process import capabilities, process_args, process_env, working_dir
from crirt.oci.resources import linux_resources, oom_score_adj
from crirt.oci.seccomp import seccomp_section
from crirt.oci.user import ResolvedUser
from crirt.oci.userns import check_container_user_namespace, plan_user_namespace

SC = "config.linux.security_context"


@dataclass(frozen=True)
class PodNamespaces:
    """Paths of the pod's namespaces a container joins; None: the node's (hostNetwork, hostIPC)."""

    network: str | None = None
    ipc: str | None = None
    uts: str | None = None
    user: str | None = None
    """The pod's pinned user namespace (a pod with ``userns_options`` mode POD); None: the node's."""
    pid: str | None = None
    """The PID namespace to join: the infra container's (``/proc/PID/ns/pid``) for a container sharing a
    ``pid: POD`` pod's, the target container's for ``TARGET``; unused otherwise."""


@dataclass(frozen=True, kw_only=True)
class SpecInputs:
    """Everything a container's spec depends on, and nothing else."""

    container_id: str
    sandbox_id: str
    config: ContainerConfig
    sandbox_config: PodSandboxConfig
    image_name: str
    """The image reference the container was created from (annotation ``io.kubernetes.cri.image-name``)."""
    image_config: Mapping[str, Any]
    """The ``config`` object of the OCI image config: Entrypoint, Cmd, Env, WorkingDir, User..."""
    user: ResolvedUser
    """From ``user.resolve_user`` (the request and the image's /etc/passwd and /etc/group)."""
    rootfs: str = "rootfs"
    """The bundle's rootfs, absolute or relative to the bundle."""
    hostname: str = ""
    """The pod's hostname (the node's for a hostNetwork pod), ``HOSTNAME`` in the environment; defaults to the
    sandbox config's."""
    namespaces: PodNamespaces = field(default_factory=PodNamespaces)
    pod_files: PodFiles = field(default_factory=PodFiles)
    cgroup_driver: str = "cgroupfs"
    cgroup_parent: str = ""
    host: HostFacts
    host_paths: Mapping[str, str] = field(default_factory=dict)
    """Real paths of the CRI mounts' host paths (``mounts.resolve_host_paths``); others are used as given."""
    devices: Mapping[str, Mapping[str, HostDevice]] = field(default_factory=dict)
    """What each requested device's host path holds (``devices.devices_at``)."""
    host_devices: tuple[HostDevice, ...] = ()
    """The host's devices for a privileged container (``devices.host_devices``)."""
    rro_mounts: bool = False
    """The pod's runtime handler supports recursive read-only mounts (its ``HandlerFeatures``, which Status
    reports): a fact of the handler, not of the node."""
    seccomp_profile: str | None = None
    """The Localhost seccomp profile's text (``seccomp.read_localhost_profile``), when the context names one."""
    cdi_edits: tuple[ContainerEdits, ...] = ()
    """The edits of the container's CDI devices, in order, device nodes complete (``CdiRegistry.edits_for``)."""


def security_context(config: ContainerConfig) -> LinuxContainerSecurityContext:
    """The container's Linux security context, all defaults when the request has none."""
    context = config.linux.security_context if config.linux else None
    return context or LinuxContainerSecurityContext()


def cri_annotations(inputs: SpecInputs) -> dict[str, str]:
    """The CRI annotations containerd sets, which sandbox-aware runtimes (gVisor, Kata) read."""
    pod = inputs.sandbox_config.metadata
    return {
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.container-name": inputs.config.metadata.name if inputs.config.metadata else "",
        "io.kubernetes.cri.image-name": inputs.image_name,
        "io.kubernetes.cri.sandbox-id": inputs.sandbox_id,
        "io.kubernetes.cri.sandbox-name": pod.name if pod else "",
        "io.kubernetes.cri.sandbox-namespace": pod.namespace if pod else "",
        "io.kubernetes.cri.sandbox-uid": pod.uid if pod else "",
    }


def linux_namespaces(
    context: LinuxContainerSecurityContext, pod_pid: NamespaceMode, pod: PodNamespaces, cgroup_ns: bool
) -> list[dict[str, str]]:
    """The pod's network, IPC and UTS namespaces joined by path (the node's where the pod has none); the PID
    namespace by the container's mode; always a new mount namespace; a new cgroup namespace on cgroup v2 for
    unprivileged containers (containerd's choice). The container's network and IPC modes are the pod's: the
    kubelet copies them, and a container cannot leave its pod's namespaces.

    PID: CONTAINER is a new namespace, NODE the node's, TARGET the target container's (``pod.pid``). POD is
    the pod's (``pod_pid``): the infra container's (``pod.pid``) for a ``pid: POD`` pod, the node's for a
    hostPID pod, and a new one when the pod shares none (``pid: CONTAINER``, as every container of it gets)."""
    options = context.namespace_options
    mode = options.pid if options else NamespaceMode.POD
    if mode == NamespaceMode.TARGET and not (options and options.target_id):
        raise InvalidArgument(f"{SC}.namespace_options.target_id: pid mode TARGET needs a target container")
    if mode == NamespaceMode.POD and pod_pid != NamespaceMode.POD:
        mode = NamespaceMode.NODE if pod_pid == NamespaceMode.NODE else NamespaceMode.CONTAINER
    namespaces: list[dict[str, str]] = []
    if pod.user is not None:
        namespaces.append({"type": "user", "path": pod.user})
    if mode == NamespaceMode.CONTAINER:
        namespaces.append({"type": "pid"})
    elif mode != NamespaceMode.NODE:
        if pod.pid is None:
            what = "the pod's infra container is gone" if mode == NamespaceMode.POD else "the target is gone"
            raise FailedPrecondition(f"{SC}.namespace_options.pid: {mode.name} asked, but {what}")
        namespaces.append({"type": "pid", "path": pod.pid})
    for kind, path in (("network", pod.network), ("ipc", pod.ipc), ("uts", pod.uts)):
        if path is not None:
            namespaces.append({"type": kind, "path": path})
    namespaces.append({"type": "mount"})
    if cgroup_ns:
        namespaces.append({"type": "cgroup"})
    return namespaces


def pod_namespace_options(sandbox_config: PodSandboxConfig) -> NamespaceOption:
    """The pod's namespace options (all POD, the CRI default, when unset)."""
    context = sandbox_config.linux.security_context if sandbox_config.linux else None
    return (context.namespace_options if context else None) or NamespaceOption()


def pod_pid_mode(sandbox_config: PodSandboxConfig) -> NamespaceMode:
    """The pod's PID namespace mode (POD, the CRI default, when unset)."""
    return pod_namespace_options(sandbox_config).pid


def user_namespace_section(context: LinuxContainerSecurityContext, sandbox_config: PodSandboxConfig,
                           pod: PodNamespaces) -> dict[str, Any]:
    """``uidMappings``/``gidMappings`` for a container of a pod with its own user namespace (joined by path in
    ``linux_namespaces``); nothing for the node's. The container's settings must be its pod's."""
    options = pod_namespace_options(sandbox_config)
    mine = context.namespace_options.userns_options if context.namespace_options else None
    check_container_user_namespace(options.userns_options, mine, f"{SC}.namespace_options")
    plan = plan_user_namespace(options, "linux.security_context.namespace_options")
    if plan is None:
        return {}
    if pod.user is None:
        raise FailedPrecondition("the pod has its own user namespace, but it is not pinned any more")
    return plan.oci_mappings()


def pod_sysctls(sandbox_config: PodSandboxConfig) -> dict[str, str]:
    """The pod's sysctls in the dotted form runc reads. crirt already set them in the pod's namespaces when it
    created them; they are repeated so the spec describes the container fully (runtimes with their own kernel
    apply them). A name given with slashes whose parts contain dots (``net/ipv4/conf/eth0.100/forwarding``)
    has no dotted form and is left to the pod-level setting."""
    sysctls = sandbox_config.linux.sysctls if sandbox_config.linux else {}
    result = {}
    for name, value in sysctls.items():
        if "/" not in name:
            result[name] = value
        elif "." not in name:
            result[name.replace("/", ".")] = value
    return result


def container_spec(inputs: SpecInputs) -> dict[str, Any]:
    """The container's ``config.json`` document.

    Raises InvalidArgument (or FailedPrecondition, Unimplemented) naming the request field at fault."""
    config = inputs.config
    context = security_context(config)
    host = inputs.host
    if context.privileged:
        pod_context = inputs.sandbox_config.linux.security_context if inputs.sandbox_config.linux else None
        if not (pod_context and pod_context.privileged):
            raise InvalidArgument(f"{SC}.privileged: the pod sandbox was not created privileged "
                                  "(linux.security_context.privileged), so it cannot run a privileged container")
    caps = capabilities(context, host.capabilities)
    process: dict[str, Any] = {
        "terminal": config.tty,
        "user": {"uid": inputs.user.uid, "gid": inputs.user.gid,
                 "additionalGids": list(inputs.user.additional_gids)},
        "args": process_args(config, inputs.image_config),
        "env": process_env(config, inputs.image_config, inputs.hostname or inputs.sandbox_config.hostname),
        "cwd": working_dir(config, inputs.image_config),
        "capabilities": caps,
        "noNewPrivileges": context.no_new_privs,
    }
    resources = config.linux.resources if config.linux else None
    adj = oom_score_adj(resources, host.oom_score_adj)
    if adj is not None:
        process["oomScoreAdj"] = adj
    profile = apparmor_profile(context, enabled=host.apparmor, default=host.apparmor_default_profile)
    if profile:
        process["apparmorProfile"] = profile

    mounts, propagation = container_mounts(
        config.mounts, inputs.pod_files, privileged=context.privileged, readonly_rootfs=context.readonly_rootfs,
        host_ipc=inputs.namespaces.ipc is None, host_paths=inputs.host_paths, rro_supported=inputs.rro_mounts)
    devices, device_rules = device_entries(config.devices, inputs.devices, context.privileged, inputs.host_devices)
    masked, readonly = masked_and_readonly_paths(context)
    linux: dict[str, Any] = {
        "namespaces": linux_namespaces(context, pod_pid_mode(inputs.sandbox_config), inputs.namespaces,
                                       host.cgroups.v2 and not context.privileged),
        "cgroupsPath": infra_cgroups_path(inputs.cgroup_driver, inputs.cgroup_parent, inputs.container_id),
        "resources": {"devices": device_rules, **linux_resources(resources, host.cgroups)},
        "devices": devices,
        "maskedPaths": masked,
        "readonlyPaths": readonly,
    }
    linux.update(user_namespace_section(context, inputs.sandbox_config, inputs.namespaces))
    sysctls = pod_sysctls(inputs.sandbox_config)
    if inputs.namespaces.user:  # only the node's root may write it (runc would fail); the pod's UTS has it already
        sysctls.pop("kernel.domainname", None)
    if sysctls:
        linux["sysctl"] = sysctls
    if propagation:
        linux["rootfsPropagation"] = propagation
    seccomp = seccomp_section(context, bounding=caps["bounding"], machine=host.machine, kernel=host.kernel,
                              localhost_profile=inputs.seccomp_profile)
    if seccomp is not None:
        linux["seccomp"] = seccomp
    return apply_cdi_edits({
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": inputs.rootfs, "readonly": context.readonly_rootfs},
        "mounts": mounts,
        "annotations": cri_annotations(inputs),
        "linux": linux,
    }, inputs.cdi_edits)
