"""``linux.seccomp``: RuntimeDefault, Unconfined or a Localhost profile.

RuntimeDefault is ``seccomp_default.json``, a copy of the policy of moby's ``profiles/seccomp/default.json``
(the Docker/containerd default). Like moby's, its rules carry conditions (``includes``/``excludes`` by
architecture, capability and kernel version, and an ``archMap``); they are resolved when the spec is written,
for the node's architecture and the container's bounding capabilities, so runc receives a plain OCI profile.
Localhost profiles (Docker or OCI format) get the same treatment.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Collection, Mapping
from importlib import resources
from typing import Any

from crirt.errors import InvalidArgument
from crirt.model.container import LinuxContainerSecurityContext
from crirt.model.enums import SecurityProfileType

SC = "config.linux.security_context"
NATIVE_ARCH = {
    "x86_64": "amd64", "amd64": "amd64", "i386": "x86", "i686": "x86", "aarch64": "arm64", "arm64": "arm64",
    "armv7l": "arm", "armv6l": "arm", "ppc64le": "ppc64le", "ppc64": "ppc64", "s390x": "s390x",
    "riscv64": "riscv64", "mips64": "mips64",
}
"""``uname -m`` to the architecture names the profiles' conditions use (Go's, as moby's)."""
SECCOMP_ARCH = {
    "amd64": "SCMP_ARCH_X86_64", "x86": "SCMP_ARCH_X86", "arm64": "SCMP_ARCH_AARCH64", "arm": "SCMP_ARCH_ARM",
    "ppc64le": "SCMP_ARCH_PPC64LE", "ppc64": "SCMP_ARCH_PPC64", "s390x": "SCMP_ARCH_S390X",
    "riscv64": "SCMP_ARCH_RISCV64", "mips64": "SCMP_ARCH_MIPS64",
}
PASSED_THROUGH = ("defaultErrnoRet", "flags", "listenerPath", "listenerMetadata")
ARG_KEYS = ("index", "value", "valueTwo", "op")
KERNEL = re.compile(r"^(\d+)\.(\d+)")


@functools.cache
def _default_profile_text() -> str:
    return resources.files("crirt.oci").joinpath("seccomp_default.json").read_text()


def default_profile() -> dict[str, Any]:
    """The RuntimeDefault profile as shipped, conditions unresolved (a fresh copy)."""
    profile: dict[str, Any] = json.loads(_default_profile_text())
    return profile


def seccomp_choice(context: LinuxContainerSecurityContext) -> tuple[SecurityProfileType, str]:
    """The profile type and, for Localhost, the profile's absolute path.

    ``seccomp`` wins; otherwise the deprecated ``seccomp_profile_path``: ``runtime/default`` (or
    ``docker/default``), ``unconfined``, ``localhost/<absolute path>``, and ``""``, which the CRI defines as
    unconfined (critest checks it)."""
    if context.seccomp is not None:
        kind, ref = context.seccomp.profile_type, context.seccomp.localhost_ref
        field = f"{SC}.seccomp.localhost_ref"
        if kind != SecurityProfileType.Localhost and ref:
            raise InvalidArgument(f"{field}: only allowed with profile_type Localhost, got {kind.name}")
    else:
        path = context.seccomp_profile_path
        field = f"{SC}.seccomp_profile_path"
        if path in ("", "unconfined"):
            return SecurityProfileType.Unconfined, ""
        if path in ("runtime/default", "docker/default"):
            return SecurityProfileType.RuntimeDefault, ""
        if not path.startswith("localhost/"):
            raise InvalidArgument(f"{field}: {path!r} is not runtime/default, unconfined or localhost/<path>")
        kind, ref = SecurityProfileType.Localhost, path.removeprefix("localhost/")
    if kind == SecurityProfileType.Localhost and not ref.startswith("/"):
        raise InvalidArgument(f"{field}: a Localhost seccomp profile must be an absolute path, got {ref!r}")
    return kind, ref


def localhost_profile_path(context: LinuxContainerSecurityContext) -> str | None:
    """The file the caller must read (``load_profile``) and pass to the spec, or None when none is needed."""
    if context.privileged:
        return None
    kind, ref = seccomp_choice(context)
    return ref if kind == SecurityProfileType.Localhost else None


def load_profile(path: str) -> str:
    """The text of a Localhost profile; INVALID_ARGUMENT naming the file when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise InvalidArgument(f"{SC}.seccomp: cannot read the Localhost seccomp profile {path}: {reason}") from None


def _kernel_version(text: str, source: str) -> tuple[int, int]:
    match = KERNEL.match(text)
    if not match:
        raise InvalidArgument(f"{source}: minKernel {text!r} is not a kernel version like 4.8")
    return int(match[1]), int(match[2])


def _applies(rule: Mapping[str, Any], arch: str, caps: Collection[str], kernel: tuple[int, int], source: str) -> bool:
    """moby's conditions: any excluded arch or capability, or a kernel at least ``minKernel``, drops the rule;
    it needs one of the included arches, every included capability and a kernel at least ``minKernel``."""
    excludes = rule.get("excludes") or {}
    includes = rule.get("includes") or {}
    if arch in (excludes.get("arches") or ()) or any(cap in caps for cap in excludes.get("caps") or ()):
        return False
    if excludes.get("minKernel") and kernel >= _kernel_version(excludes["minKernel"], source):
        return False
    if includes.get("arches") and arch not in includes["arches"]:
        return False
    if not all(cap in caps for cap in includes.get("caps") or ()):
        return False
    return not (includes.get("minKernel") and kernel < _kernel_version(includes["minKernel"], source))


def resolve_profile(
    profile: Mapping[str, Any], *, bounding: Collection[str], machine: str, kernel: tuple[int, int], source: str
) -> dict[str, Any] | None:
    """A profile in Docker's format (or plain OCI) made into the OCI ``linux.seccomp`` for this node and a
    container with these bounding capabilities (moby's ``setupSeccomp``). None when the profile has neither a
    default action nor syscalls: it disables seccomp. ``source`` names the profile in errors."""
    if not isinstance(profile, Mapping):
        raise InvalidArgument(f"{source}: a seccomp profile must be a JSON object")
    if not profile.get("defaultAction") and not profile.get("syscalls"):
        return None
    if profile.get("architectures") and profile.get("archMap"):
        raise InvalidArgument(f"{source}: give either 'architectures' or 'archMap', not both")
    arch = NATIVE_ARCH.get(machine, machine)
    result: dict[str, Any] = {"defaultAction": profile.get("defaultAction", "")}
    result.update({key: profile[key] for key in PASSED_THROUGH if key in profile})
    architectures = list(profile.get("architectures") or [])
    for entry in profile.get("archMap") or []:
        if entry.get("architecture") == SECCOMP_ARCH.get(arch):
            architectures = [entry["architecture"], *(entry.get("subArchitectures") or [])]
    if architectures:
        result["architectures"] = architectures
    syscalls = []
    for index, rule in enumerate(profile.get("syscalls") or []):
        if not isinstance(rule, Mapping):
            raise InvalidArgument(f"{source}: syscalls[{index}] is not an object")
        if rule.get("name") and rule.get("names"):
            raise InvalidArgument(f"{source}: syscalls[{index}] has both 'name' and 'names'")
        if not _applies(rule, arch, bounding, kernel, source):
            continue
        entry = {"names": list(rule.get("names") or [rule.get("name")]), "action": rule.get("action")}
        if "errnoRet" in rule:
            entry["errnoRet"] = rule["errnoRet"]
        if rule.get("args"):
            entry["args"] = [{key: arg[key] for key in ARG_KEYS if key in arg} for arg in rule["args"]]
        syscalls.append(entry)
    if syscalls:
        result["syscalls"] = syscalls
    return result


def seccomp_section(
    context: LinuxContainerSecurityContext,
    *,
    bounding: Collection[str],
    machine: str,
    kernel: tuple[int, int],
    localhost_profile: str | None,
) -> dict[str, Any] | None:
    """``linux.seccomp`` for a container, None for no filter (Unconfined, or privileged: the CRI says seccomp
    does not apply to privileged containers). ``localhost_profile`` is the text ``load_profile`` read for a
    Localhost choice."""
    if context.privileged:
        return None
    kind, ref = seccomp_choice(context)
    if kind == SecurityProfileType.Unconfined:
        return None
    if kind == SecurityProfileType.RuntimeDefault:
        return resolve_profile(default_profile(), bounding=bounding, machine=machine, kernel=kernel,
                               source="the RuntimeDefault seccomp profile")
    source = f"{SC}.seccomp: Localhost seccomp profile {ref}"
    if localhost_profile is None:
        raise ValueError(f"{source}: the caller did not read it (crirt.oci.seccomp.load_profile)")
    try:
        profile = json.loads(localhost_profile)
    except ValueError as error:
        raise InvalidArgument(f"{source} is not valid JSON: {error}") from None
    return resolve_profile(profile, bounding=bounding, machine=machine, kernel=kernel, source=source)
