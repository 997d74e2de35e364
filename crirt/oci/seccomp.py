"""``linux.seccomp``: RuntimeDefault, Unconfined or a Localhost profile.

RuntimeDefault is ``seccomp_default.json``, a copy of the policy of moby's ``profiles/seccomp/default.json``
(the Docker/containerd default). Like moby's, its rules carry conditions (``includes``/``excludes`` by
architecture, capability and kernel version, and an ``archMap``); they are resolved when the spec is written,
for the node's architecture and the container's bounding capabilities, so runc receives a plain OCI profile.
Localhost profiles (Docker or OCI format) get the same treatment, after ``seccomp_schema`` has checked their
fields (a bad file is INVALID_ARGUMENT naming it, not a runc failure).
"""

from __future__ import annotations

import functools
import json
import os
import re
import stat
from collections.abc import Collection, Mapping
from importlib import resources
from typing import Any

from crirt.errors import InvalidArgument
from crirt.model.container import LinuxContainerSecurityContext
from crirt.model.enums import SecurityProfileType
from crirt.oci.seccomp_schema import check_profile

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
MAX_PROFILE_BYTES = 1024 * 1024
"""A Localhost profile larger than this is refused (moby's default profile is about 20 KiB)."""


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
    """The text of a Localhost profile (blocking I/O); INVALID_ARGUMENT naming the file when it is missing,
    unreadable, not a regular file (a FIFO would block the reader), over ``MAX_PROFILE_BYTES`` or not UTF-8."""
    where = f"{SC}.seccomp: cannot read the Localhost seccomp profile {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise InvalidArgument(f"{where}: {error.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidArgument(f"{where}: not a regular file")
        data = b""
        while len(data) <= MAX_PROFILE_BYTES and (chunk := os.read(fd, MAX_PROFILE_BYTES + 1 - len(data))):
            data += chunk
    except OSError as error:
        raise InvalidArgument(f"{where}: {error.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_PROFILE_BYTES:
        raise InvalidArgument(f"{where}: larger than {MAX_PROFILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"{where}: not UTF-8 text") from None


def read_localhost_profile(context: LinuxContainerSecurityContext) -> str | None:
    """``SpecInputs.seccomp_profile``: the text of the Localhost profile the context names, None when it names
    none. Blocking I/O: a service runs it off the event loop."""
    path = localhost_profile_path(context)
    return None if path is None else load_profile(path)


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
    check_profile(profile, source)
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
    for rule in profile.get("syscalls") or []:
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
    does not apply to privileged containers). ``localhost_profile`` is the text ``read_localhost_profile`` read
    for a Localhost choice."""
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
        raise ValueError(f"{source}: the caller did not read it (crirt.oci.seccomp.read_localhost_profile)")
    try:
        profile = json.loads(localhost_profile)
    except ValueError as error:
        raise InvalidArgument(f"{source} is not valid JSON: {error}") from None
    return resolve_profile(profile, bounding=bounding, machine=machine, kernel=kernel, source=source)
