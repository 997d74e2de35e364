"""The shape of a seccomp profile (Docker's format, which includes plain OCI ``linux.seccomp``), checked field by
field against the values the OCI runtime spec allows.

A Localhost profile is a file on the node that anyone may have written: a wrong action name or a string where
a number belongs is INVALID_ARGUMENT naming the file and the field at CreateContainer, not a runc failure later.
Keys the format does not know are ignored, as containerd's JSON decoding does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crirt.errors import InvalidArgument

ACTIONS = frozenset({
    "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP", "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY",
})
OPERATORS = frozenset({
    "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ",
})
ARCHITECTURES = frozenset({
    "SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64", "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390", "SCMP_ARCH_S390X",
    "SCMP_ARCH_PARISC", "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64",
})
FLAGS = frozenset({
    "SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
})
MAX_ARG_INDEX = 5
"""A syscall has at most six arguments."""
MAX_U64 = 2**64 - 1


def _problem(source: str, field: str, what: str) -> InvalidArgument:
    return InvalidArgument(f"{source}: {field}: {what}")


def _object(value: Any, source: str, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _problem(source, field, f"must be a JSON object, got {value!r}")
    return value


def _list(value: Any, source: str, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _problem(source, field, f"must be a JSON array, got {value!r}")
    return value


def _number(value: Any, source: str, field: str, top: int = MAX_U64) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise _problem(source, field, f"must be a whole number from 0 to {top}, got {value!r}")


def _text(value: Any, source: str, field: str) -> None:
    if not isinstance(value, str):
        raise _problem(source, field, f"must be a string, got {value!r}")


def _names(value: Any, allowed: frozenset[str], source: str, field: str) -> None:
    for index, item in enumerate(_list(value, source, field)):
        if item not in allowed:
            raise _problem(source, f"{field}[{index}]", f"{item!r} is not one of {', '.join(sorted(allowed))}")


def _action(value: Any, source: str, field: str) -> None:
    if value not in ACTIONS:
        raise _problem(source, field, f"{value!r} is not a seccomp action ({', '.join(sorted(ACTIONS))})")


def _condition(value: Any, source: str, field: str) -> None:
    """moby's ``includes``/``excludes``: arches (Go names, e.g. ``amd64``), capabilities, a minimum kernel."""
    condition = _object(value, source, field)
    for key in ("arches", "caps"):
        for index, item in enumerate(_list(condition.get(key), source, f"{field}.{key}")):
            _text(item, source, f"{field}.{key}[{index}]")
    if "minKernel" in condition:
        _text(condition["minKernel"], source, f"{field}.minKernel")


def _syscall(rule: Any, source: str, field: str) -> None:
    rule = _object(rule, source, field)
    if "name" in rule and "names" in rule:
        raise _problem(source, field, "has both 'name' and 'names'")
    names = [rule["name"]] if "name" in rule else _list(rule.get("names"), source, f"{field}.names")
    if not names:
        raise _problem(source, field, "names no syscall ('names' is missing or empty)")
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise _problem(source, f"{field}.names[{index}]", f"must be a syscall name, got {name!r}")
    _action(rule.get("action"), source, f"{field}.action")
    if "errnoRet" in rule:
        _number(rule["errnoRet"], source, f"{field}.errnoRet", 2**32 - 1)
    for index, arg in enumerate(_list(rule.get("args"), source, f"{field}.args")):
        where = f"{field}.args[{index}]"
        arg = _object(arg, source, where)
        _number(arg.get("index"), source, f"{where}.index", MAX_ARG_INDEX)
        _number(arg.get("value"), source, f"{where}.value")
        if "valueTwo" in arg:
            _number(arg["valueTwo"], source, f"{where}.valueTwo")
        if arg.get("op") not in OPERATORS:
            raise _problem(source, f"{where}.op", f"{arg.get('op')!r} is not one of {', '.join(sorted(OPERATORS))}")
    for key in ("includes", "excludes"):
        if rule.get(key) is not None:
            _condition(rule[key], source, f"{field}.{key}")


def check_profile(profile: Any, source: str) -> None:
    """Raise INVALID_ARGUMENT (``source`` names the profile) at the first field the OCI spec does not allow.
    An empty profile passes: it means no filter."""
    if not isinstance(profile, Mapping):
        raise InvalidArgument(f"{source}: a seccomp profile must be a JSON object, got {type(profile).__name__}")
    if profile.get("syscalls") and not profile.get("defaultAction"):
        raise _problem(source, "defaultAction", "is missing, but the profile has syscalls")
    if profile.get("defaultAction"):
        _action(profile["defaultAction"], source, "defaultAction")
    if "defaultErrnoRet" in profile:
        _number(profile["defaultErrnoRet"], source, "defaultErrnoRet", 2**32 - 1)
    _names(profile.get("architectures"), ARCHITECTURES, source, "architectures")
    for index, entry in enumerate(_list(profile.get("archMap"), source, "archMap")):
        entry = _object(entry, source, f"archMap[{index}]")
        if entry.get("architecture") not in ARCHITECTURES:
            raise _problem(source, f"archMap[{index}].architecture",
                           f"{entry.get('architecture')!r} is not one of {', '.join(sorted(ARCHITECTURES))}")
        _names(entry.get("subArchitectures"), ARCHITECTURES, source, f"archMap[{index}].subArchitectures")
    _names(profile.get("flags"), FLAGS, source, "flags")
    for key in ("listenerPath", "listenerMetadata"):
        if key in profile:
            _text(profile[key], source, key)
    for index, rule in enumerate(_list(profile.get("syscalls"), source, "syscalls")):
        _syscall(rule, source, f"syscalls[{index}]")
