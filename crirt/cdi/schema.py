"""The CDI spec file format (``cdiVersion`` 0.1.0 to 1.1.0), checked field by field.

A spec file is written by a device plugin or driver installer; a typo in it must be an error that names the
file and the field, not a container that silently lacks its device. So unknown fields are refused, names are
checked against the CDI grammar, and a spec that uses a field newer than its ``cdiVersion`` is refused too.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0")
"""The released CDI spec versions, oldest first."""
HOOK_NAMES = frozenset({"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"})
VENDOR = re.compile(r"[A-Za-z](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?")
CLASS = re.compile(r"[A-Za-z](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?")
DEVICE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.:-]*[A-Za-z0-9])?")
MAX_U32 = 2**32 - 1


class SpecError(Exception):
    """A spec file is unreadable or invalid; the message names the file and the field."""


def _version(value: str) -> str:
    if value not in VERSIONS:
        raise ValueError(f"{value!r} is not a CDI version crirt knows ({VERSIONS[0]} to {VERSIONS[-1]})")
    return value


def _kind(value: str) -> str:
    vendor, slash, cls = value.partition("/")
    if not (slash and VENDOR.fullmatch(vendor) and CLASS.fullmatch(cls)):
        raise ValueError(f"{value!r} is not vendor/class (e.g. vendor.com/gpu)")
    return value


def _device_name(value: str) -> str:
    if not DEVICE_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a device name (letters, digits, '_', '-', '.', ':', starting and "
                         "ending with a letter or digit)")
    return value


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path")
    return value


def _env(value: str) -> str:
    if value.find("=") <= 0:
        raise ValueError(f"{value!r} is not NAME=VALUE")
    return value


def _permissions(value: str) -> str:
    if value != "none" and not set(value) <= set("rwm"):
        raise ValueError(f"{value!r} is not a combination of r, w and m (or 'none')")
    return value


def _node_type(value: str) -> str:
    if value not in ("", "b", "c", "u", "p"):
        raise ValueError(f"{value!r} is not a device type (b, c, u or p)")
    return value


def _hook_name(value: str) -> str:
    if value not in HOOK_NAMES:
        raise ValueError(f"{value!r} is not an OCI hook ({', '.join(sorted(HOOK_NAMES))})")
    return value


AbsPath = Annotated[str, AfterValidator(_absolute)]
Env = list[Annotated[str, AfterValidator(_env)]]
U32 = Annotated[int, Field(ge=0, le=MAX_U32)]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, alias_generator=to_camel,
                              populate_by_name=True)


class DeviceNode(_Part):
    """A device node to create in the container; type, numbers and mode come from the host node when missing."""

    path: AbsPath
    host_path: Annotated[str, AfterValidator(lambda v: _absolute(v) if v else v)] = ""
    type: Annotated[str, AfterValidator(_node_type)] = ""
    major: int = Field(0, ge=0)
    minor: int = Field(0, ge=0)
    file_mode: int | None = Field(None, ge=0, le=0o7777)
    permissions: Annotated[str, AfterValidator(_permissions)] = ""
    uid: U32 | None = None
    gid: U32 | None = None


class Mount(_Part):
    host_path: Annotated[str, Field(min_length=1)]
    container_path: AbsPath
    options: list[str] = Field(default_factory=list)
    type: str = ""


class Hook(_Part):
    hook_name: Annotated[str, AfterValidator(_hook_name)]
    path: AbsPath
    args: list[str] = Field(default_factory=list)
    env: Env = Field(default_factory=list)
    timeout: int | None = Field(None, gt=0)


class IntelRdt(_Part):
    clos_id: str = Field("", alias="closID")
    l3_cache_schema: str = ""
    mem_bw_schema: str = ""
    schemata: list[str] = Field(default_factory=list)
    enable_monitoring: bool = False
    enable_cmt: bool = Field(False, alias="enableCMT")
    enable_mbm: bool = Field(False, alias="enableMBM")


class NetDevice(_Part):
    host_interface_name: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]


class ContainerEdits(_Part):
    """Edits to a container's OCI spec, made when a device of the spec is requested."""

    env: Env = Field(default_factory=list)
    device_nodes: list[DeviceNode] = Field(default_factory=list)
    net_devices: list[NetDevice] = Field(default_factory=list)
    hooks: list[Hook] = Field(default_factory=list)
    mounts: list[Mount] = Field(default_factory=list)
    intel_rdt: IntelRdt | None = None
    additional_gids: list[U32] = Field(default_factory=list)


class Device(_Part):
    name: Annotated[str, AfterValidator(_device_name)]
    annotations: dict[str, str] = Field(default_factory=dict)
    container_edits: ContainerEdits = Field(default_factory=ContainerEdits)


class Spec(_Part):
    """One CDI spec file: a vendor/class and the devices it defines."""

    cdi_version: Annotated[str, AfterValidator(_version)]
    kind: Annotated[str, AfterValidator(_kind)]
    annotations: dict[str, str] = Field(default_factory=dict)
    devices: Annotated[list[Device], Field(min_length=1)]
    container_edits: ContainerEdits = Field(default_factory=ContainerEdits)


def _edits_needs(where: str, edits: ContainerEdits) -> list[tuple[str, str]]:
    """(field, the first version that has it) for each versioned field ``edits`` uses."""
    needs = [(f"{where}.mounts[{i}].type", "0.4.0") for i, m in enumerate(edits.mounts) if m.type]
    needs += [(f"{where}.deviceNodes[{i}].hostPath", "0.5.0") for i, n in enumerate(edits.device_nodes)
              if n.host_path]
    if edits.additional_gids:
        needs.append((f"{where}.additionalGids", "0.7.0"))
    if edits.intel_rdt is not None:
        needs.append((f"{where}.intelRdt", "0.7.0"))
        if edits.intel_rdt.schemata or edits.intel_rdt.enable_monitoring:
            needs.append((f"{where}.intelRdt", "1.1.0"))
    if edits.net_devices:
        needs.append((f"{where}.netDevices", "1.1.0"))
    return needs


def version_needs(spec: Spec) -> list[tuple[str, str]]:
    """Every field ``spec`` uses that an older ``cdiVersion`` lacks, with the version that added it."""
    needs = _edits_needs("containerEdits", spec.container_edits)
    if spec.annotations:
        needs.append(("annotations", "0.6.0"))
    if "." in spec.kind.partition("/")[2]:
        needs.append(("kind", "0.6.0"))
    for i, device in enumerate(spec.devices):
        if device.name[0].isdigit():
            needs.append((f"devices[{i}].name", "0.5.0"))
        if device.annotations:
            needs.append((f"devices[{i}].annotations", "0.6.0"))
        needs += _edits_needs(f"devices[{i}].containerEdits", device.container_edits)
    return needs


def _field(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "(top level)"


def _message(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field"
    return str(error["msg"]).removeprefix("Value error, ")


def parse_spec(path: str, text: str) -> Spec:
    """The spec in ``text`` (JSON for ``*.json``, else YAML), read from ``path``; SpecError naming the file and
    the field when it is not a valid CDI spec."""
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a CDI spec is an object with cdiVersion, kind and devices")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_field(e['loc'])}: {_message(e)}" for e in exc.errors()]
        raise SpecError(f"{path}: {'; '.join(problems)}") from None
    names = [d.name for d in spec.devices]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise SpecError(f"{path}: devices[{i}].name: device {name!r} is defined twice")
    for field, needed in version_needs(spec):
        if VERSIONS.index(needed) > VERSIONS.index(spec.cdi_version):
            raise SpecError(f"{path}: {field}: needs cdiVersion {needed} or later (the spec says "
                            f"{spec.cdi_version})")
    return spec
