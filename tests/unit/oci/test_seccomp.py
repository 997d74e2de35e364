"""Seccomp: the shipped RuntimeDefault profile (moby's policy), its resolution, Unconfined and Localhost."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from crirt.errors import InvalidArgument
from crirt.model.container import LinuxContainerSecurityContext
from crirt.model.enums import SecurityProfileType
from crirt.oci.process import DEFAULT_CAPABILITIES
from crirt.oci.seccomp import (
    MAX_PROFILE_BYTES,
    default_profile,
    load_profile,
    localhost_profile_path,
    read_localhost_profile,
    resolve_profile,
    seccomp_choice,
    seccomp_section,
)

DEFAULT_CAPS = sorted(DEFAULT_CAPABILITIES)


def sc(**fields: Any) -> LinuxContainerSecurityContext:
    return LinuxContainerSecurityContext.model_validate(fields)


def allowed(section: dict[str, Any]) -> set[str]:
    """Syscalls allowed without argument conditions."""
    return {name for rule in section["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule
            for name in rule["names"]}


def runtime_default(caps: list[str] = DEFAULT_CAPS, machine: str = "x86_64",
                    kernel: tuple[int, int] = (6, 1)) -> dict[str, Any]:
    section = seccomp_section(sc(seccomp={"profile_type": 0}), bounding=caps, machine=machine, kernel=kernel,
                              localhost_profile=None)
    assert section is not None
    return section


def test_the_shipped_profile_is_mobys_policy() -> None:
    profile = default_profile()
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == 1
    base = profile["syscalls"][0]
    assert base["action"] == "SCMP_ACT_ALLOW" and "includes" not in base and len(base["names"]) == 349
    assert {"read", "write", "openat", "execve", "io_uring_setup", "pkey_alloc", "name_to_handle_at"} <= set(
        base["names"])
    assert not {"socket", "mount", "ptrace", "reboot", "bpf", "unshare", "kexec_load"} & set(base["names"])
    assert len(profile["syscalls"]) == 31
    assert profile["archMap"][0] == {"architecture": "SCMP_ARCH_X86_64",
                                     "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}
    vsock = next(r for r in profile["syscalls"] if r["names"] == ["socket"])
    assert vsock["args"] == [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]  # AF_VSOCK refused


def test_runtime_default_resolved_for_amd64_and_default_caps() -> None:
    section = runtime_default()
    assert section["defaultAction"] == "SCMP_ACT_ERRNO" and section["defaultErrnoRet"] == 1
    assert section["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    names = allowed(section)
    assert {"arch_prctl", "modify_ldt", "chroot", "ptrace", "process_vm_readv"} <= names  # amd64; SYS_CHROOT; 4.8+
    assert not {"mount", "unshare", "sethostname", "reboot", "bpf", "arm_fadvise64_64", "s390_runtime_instr",
                "open_by_handle_at", "kcmp"} & names
    clone3 = [r for r in section["syscalls"] if r["names"] == ["clone3"]]
    assert clone3 == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]  # ENOSYS: glibc falls back
    clone = [r for r in section["syscalls"] if r["names"] == ["clone"]]
    assert clone == [{"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                      "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]}]
    assert all(set(rule) <= {"names", "action", "errnoRet", "args"} for rule in section["syscalls"])


def test_capabilities_open_their_syscalls() -> None:
    names = allowed(runtime_default([*DEFAULT_CAPS, "CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_TIME"]))
    assert {"mount", "unshare", "sethostname", "setns", "clone", "clone3", "kcmp", "clock_settime"} <= names
    section = runtime_default([*DEFAULT_CAPS, "CAP_SYS_ADMIN"])
    assert not [r for r in section["syscalls"] if r["action"] == "SCMP_ACT_ERRNO"]  # clone3 ENOSYS excluded


def test_other_architectures_and_old_kernels() -> None:
    arm = runtime_default(machine="aarch64")
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert {"arm_fadvise64_64", "set_tls"} <= allowed(arm) and "arch_prctl" not in allowed(arm)
    s390 = runtime_default(machine="s390x")
    assert [r["args"][0]["index"] for r in s390["syscalls"] if r["names"] == ["clone"]] == [1]
    assert "ptrace" not in allowed(runtime_default(kernel=(4, 4)))
    assert "architectures" not in runtime_default(machine="sparc64")  # unknown: libseccomp's native


def test_choices_and_deprecated_paths() -> None:
    assert seccomp_choice(sc()) == (SecurityProfileType.Unconfined, "")  # "" is unconfined (critest)
    assert seccomp_choice(sc(seccomp_profile_path="runtime/default"))[0] == SecurityProfileType.RuntimeDefault
    assert seccomp_choice(sc(seccomp_profile_path="docker/default"))[0] == SecurityProfileType.RuntimeDefault
    assert seccomp_choice(sc(seccomp_profile_path="localhost//p/x.json")) == (SecurityProfileType.Localhost,
                                                                              "/p/x.json")
    assert seccomp_choice(sc(seccomp={"profile_type": 1}, seccomp_profile_path="runtime/default"))[0] == \
        SecurityProfileType.Unconfined  # the field wins over the deprecated path
    with pytest.raises(InvalidArgument, match=r"seccomp_profile_path: '/p/x.json' is not runtime/default"):
        seccomp_choice(sc(seccomp_profile_path="/p/x.json"))
    with pytest.raises(InvalidArgument, match=r"seccomp\.localhost_ref: a Localhost seccomp profile must be an "
                                              r"absolute path, got 'x.json'"):
        seccomp_choice(sc(seccomp={"profile_type": 2, "localhost_ref": "x.json"}))
    with pytest.raises(InvalidArgument, match="only allowed with profile_type Localhost"):
        seccomp_choice(sc(seccomp={"profile_type": 0, "localhost_ref": "/x"}))


def test_unconfined_and_privileged_have_no_filter() -> None:
    for context in (sc(seccomp={"profile_type": 1}), sc(), sc(privileged=True, seccomp={"profile_type": 0})):
        assert seccomp_section(context, bounding=[], machine="x86_64", kernel=(6, 1), localhost_profile=None) is None
    assert localhost_profile_path(sc(privileged=True, seccomp={"profile_type": 2, "localhost_ref": "/x"})) is None


BLOCK_CHMOD = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["chmod"], "action": "SCMP_ACT_ERRNO"}]}


def localhost(path: Path) -> LinuxContainerSecurityContext:
    return sc(seccomp={"profile_type": 2, "localhost_ref": str(path)})


def test_localhost_profile(tmp_path: Path) -> None:
    path = tmp_path / "block-chmod.json"
    path.write_text(json.dumps(BLOCK_CHMOD))
    context = localhost(path)
    assert localhost_profile_path(context) == str(path)
    assert read_localhost_profile(context) == load_profile(str(path)) == path.read_text()
    assert read_localhost_profile(sc(seccomp={"profile_type": 0})) is None  # nothing to read
    section = seccomp_section(context, bounding=[], machine="x86_64", kernel=(6, 1),
                              localhost_profile=read_localhost_profile(context))
    assert section == BLOCK_CHMOD
    deprecated = sc(seccomp_profile_path=f"localhost/{path}")
    assert seccomp_section(deprecated, bounding=[], machine="x86_64", kernel=(6, 1),
                           localhost_profile=read_localhost_profile(deprecated)) == BLOCK_CHMOD
    with pytest.raises(ValueError, match="did not read it"):
        seccomp_section(context, bounding=[], machine="x86_64", kernel=(6, 1), localhost_profile=None)


def test_unreadable_localhost_profiles_name_the_file(tmp_path: Path) -> None:
    big, binary, fifo = tmp_path / "big.json", tmp_path / "binary.json", tmp_path / "fifo.json"
    big.write_text(" " * (MAX_PROFILE_BYTES + 1))
    binary.write_bytes(b"\xff{}")
    os.mkfifo(fifo)  # reading it would block the reader for ever
    cases = {tmp_path / "missing.json": "No such file or directory", tmp_path: "not a regular file",
             fifo: "not a regular file", big: f"larger than {MAX_PROFILE_BYTES} bytes", binary: "not UTF-8 text"}
    for path, problem in cases.items():
        with pytest.raises(InvalidArgument) as caught:
            read_localhost_profile(localhost(path))
        assert str(caught.value) == (f"config.linux.security_context.seccomp: cannot read the Localhost seccomp "
                                     f"profile {path}: {problem}")


def section_of(text: str) -> dict[str, Any] | None:
    context = sc(seccomp={"profile_type": 2, "localhost_ref": "/p.json"})
    return seccomp_section(context, bounding=[], machine="x86_64", kernel=(6, 1), localhost_profile=text)


BAD_PROFILES = {
    # profile: the problem named after "Localhost seccomp profile /p.json"
    "{nope": " is not valid JSON",
    "[]": ": a seccomp profile must be a JSON object, got list",
    '{"defaultAction": "SCMP_ACT_NOPE"}': ": defaultAction: 'SCMP_ACT_NOPE' is not a seccomp action",
    '{"syscalls": [{"names": ["chmod"], "action": "SCMP_ACT_ERRNO"}]}':
        ": defaultAction: is missing, but the profile has syscalls",
    '{"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": -1}': ": defaultErrnoRet: must be a whole number",
    '{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["x86_64"]}': ": architectures[0]: 'x86_64' is not one of",
    '{"defaultAction": "SCMP_ACT_ALLOW", "flags": "SECCOMP_FILTER_FLAG_LOG"}': ": flags: must be a JSON array",
    '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {}}': ": syscalls: must be a JSON array",
    '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": ["chmod"]}': ": syscalls[0]: must be a JSON object",
    '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}':
        ": syscalls[0]: names no syscall",
    '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [1], "action": "SCMP_ACT_ERRNO"}]}':
        ": syscalls[0].names[0]: must be a syscall name, got 1",
    '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["chmod"], "action": "deny"}]}':
        ": syscalls[0].action: 'deny' is not a seccomp action",
    '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["chmod"], "action": "SCMP_ACT_ERRNO", '
    '"errnoRet": "EPERM"}]}': ": syscalls[0].errnoRet: must be a whole number from 0 to 4294967295, got 'EPERM'",
    '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO", '
    '"args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}': ": syscalls[0].args[0].index: must be a whole "
                                                                  "number from 0 to 5, got 6",
    '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO", '
    '"args": [{"index": 0, "value": 0, "op": "=="}]}]}': ": syscalls[0].args[0].op: '==' is not one of",
    '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO", '
    '"includes": {"caps": "CAP_KILL"}}]}': ": syscalls[0].includes.caps: must be a JSON array",
}


@pytest.mark.parametrize("text", BAD_PROFILES)
def test_invalid_localhost_profiles_are_refused_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        section_of(text)
    prefix = "config.linux.security_context.seccomp: Localhost seccomp profile /p.json"
    assert str(caught.value).startswith(prefix + BAD_PROFILES[text]), str(caught.value)


def test_docker_format_localhost_profile_with_errno_and_arch_map() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1,
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
        "syscalls": [{"name": "mkdir", "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "comment": "no new dirs"},
                     {"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO",
                      "args": [{"index": 1, "value": 0o400, "op": "SCMP_CMP_EQ"}]},
                     {"names": ["reboot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_BOOT"]}}],
        "unknownKey": "ignored, as containerd's decoder does",
    }
    assert section_of(json.dumps(profile)) == {
        "defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                     {"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO",
                      "args": [{"index": 1, "value": 0o400, "op": "SCMP_CMP_EQ"}]}]}
    assert section_of("{}") is None  # an empty profile disables seccomp, as moby's loader does


def test_resolve_profile_formats_and_errors() -> None:
    source = "test profile"
    assert resolve_profile({}, bounding=[], machine="x86_64", kernel=(6, 1), source=source) is None
    oci = {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
           "flags": ["SECCOMP_FILTER_FLAG_LOG"],
           "syscalls": [{"name": "read", "action": "SCMP_ACT_ALLOW", "comment": "dropped"},
                        {"names": ["kill"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "5.0"}}]}
    assert resolve_profile(oci, bounding=[], machine="x86_64", kernel=(6, 1), source=source) == {
        "defaultAction": "SCMP_ACT_ERRNO", "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "architectures": ["SCMP_ARCH_X86_64"], "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}
    with pytest.raises(InvalidArgument, match="either 'architectures' or 'archMap'"):
        resolve_profile({**oci, "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}, bounding=[],
                        machine="x86_64", kernel=(6, 1), source=source)
    with pytest.raises(InvalidArgument, match=r"syscalls\[0\]: has both 'name' and 'names'"):
        resolve_profile({"defaultAction": "SCMP_ACT_ALLOW",
                         "syscalls": [{"name": "a", "names": ["b"], "action": "SCMP_ACT_ALLOW"}]},
                        bounding=[], machine="x86_64", kernel=(6, 1), source=source)
    with pytest.raises(InvalidArgument, match="minKernel 'new'"):
        resolve_profile({"defaultAction": "SCMP_ACT_ALLOW",
                         "syscalls": [{"names": ["a"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "new"}}]},
                        bounding=[], machine="x86_64", kernel=(6, 1), source=source)
