"""The CDI devices the node's spec directories define, and the edits a container's requested devices need.

``CdiRegistry.edits_for`` blocks (it lists the spec directories, and reads the spec files and the host's device
nodes): CreateContainer calls it in a thread, and only for a container that asks for CDI devices. The spec files
are read again only when a directory's listing or a file's mtime, size or inode changed since the last time.
Status reports the last reading and reads nothing.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crirt.cdi.schema import CLASS, DEVICE_NAME, VENDOR, ContainerEdits, Device, DeviceNode, Spec, SpecError, parse_spec
from crirt.config import CdiConfig
from crirt.errors import InvalidArgument
from crirt.model.container import ContainerConfig

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = "cdi.k8s.io/"
"""Annotations whose value lists CDI device names (the form older device plugins use)."""
SUFFIXES = (".json", ".yaml")
MAX_SPEC_BYTES = 1 << 20
NODE_TYPES = {stat.S_IFCHR: "c", stat.S_IFBLK: "b", stat.S_IFIFO: "p"}


@dataclass(frozen=True)
class Entry:
    """A device and the spec file that defines it."""

    file: str
    spec: Spec
    device: Device


@dataclass(frozen=True)
class Catalog:
    """What the spec directories held when they were last read."""

    devices: Mapping[str, Entry] = field(default_factory=dict)
    """By fully qualified name (``vendor.com/class=name``)."""
    conflicts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Names defined by more than one file of the same directory (and by no later directory): the files."""
    errors: tuple[str, ...] = ()
    """One message per refused spec file."""


def catalog(directories: Sequence[Sequence[tuple[str, Spec]]], errors: Sequence[str] = ()) -> Catalog:
    """The devices of the valid spec files of each directory (earliest first): a later directory's definition
    replaces an earlier one's; two definitions in one directory are a conflict."""
    devices: dict[str, Entry] = {}
    conflicts: dict[str, tuple[str, ...]] = {}
    for specs in directories:
        here: dict[str, list[Entry]] = {}
        for file, spec in specs:
            for device in spec.devices:
                here.setdefault(f"{spec.kind}={device.name}", []).append(Entry(file, spec, device))
        for name, entries in here.items():
            if len(entries) == 1:
                devices[name] = entries[0]
                conflicts.pop(name, None)
            else:
                devices.pop(name, None)
                conflicts[name] = tuple(e.file for e in entries)
    return Catalog(devices, conflicts, tuple(errors))


def is_qualified(name: str) -> bool:
    """Whether ``name`` is a fully qualified CDI device name, ``vendor/class=name``."""
    kind, equals, device = name.partition("=")
    vendor, slash, cls = kind.partition("/")
    return bool(equals and slash and VENDOR.fullmatch(vendor) and CLASS.fullmatch(cls)
                and DEVICE_NAME.fullmatch(device))


def requested_devices(config: ContainerConfig) -> dict[str, str]:
    """The CDI devices a container asks for, in order, each with the request field that names it: its
    ``CDI_devices``, then the comma-separated lists of its ``cdi.k8s.io/*`` annotations (by key)."""
    asked = [(d.name, f"config.CDI_devices[{i}].name") for i, d in enumerate(config.CDI_devices)]
    for key, value in sorted(config.annotations.items()):
        if key.startswith(ANNOTATION_PREFIX):
            asked += [(part.strip(), f"config.annotations[{key!r}]") for part in value.split(",")]
    found: dict[str, str] = {}
    for name, source in asked:
        if not is_qualified(name):
            raise InvalidArgument(f"{source}: {name!r} is not a fully qualified CDI device name "
                                  "(vendor.com/class=name)")
        found.setdefault(name, source)
    return found


def _node_from_host(node: DeviceNode, where: str) -> DeviceNode:
    """``node`` with its type, numbers and mode taken from the host's node where the spec left them out."""
    if node.type and (node.major or node.type == "p"):
        return node
    host = node.host_path or node.path
    try:
        info = os.stat(host)
    except OSError as exc:
        raise InvalidArgument(f"{where} {host}: {exc.strerror}") from None
    kind = NODE_TYPES.get(stat.S_IFMT(info.st_mode))
    if kind is None:
        raise InvalidArgument(f"{where} {host}: not a device node")
    if node.type and node.type != kind:
        raise InvalidArgument(f"{where} {host}: the spec says type {node.type!r}, the host node is {kind!r}")
    update: dict[str, Any] = {"type": kind}
    if kind != "p" and not (node.major or node.minor):
        update |= {"major": os.major(info.st_rdev), "minor": os.minor(info.st_rdev)}
    if node.file_mode is None:
        update["file_mode"] = stat.S_IMODE(info.st_mode)
    return node.model_copy(update=update)


def _resolved(edits: ContainerEdits, where: str) -> ContainerEdits:
    """``edits`` with every device node completed from the host; InvalidArgument for edits crirt cannot make."""
    if edits.net_devices or edits.intel_rdt is not None:
        what = "netDevices" if edits.net_devices else "intelRdt"
        raise InvalidArgument(f"{where}.{what}: crirt does not support {what} edits")
    nodes = [_node_from_host(n, f"{where}.deviceNodes[{i}]") for i, n in enumerate(edits.device_nodes)]
    return edits.model_copy(update={"device_nodes": nodes})


def edits_in_order(found: Catalog, requested: Mapping[str, str], dirs: Sequence[Path]) -> list[tuple[str, Entry]]:
    """For each requested device, its entry; InvalidArgument naming the first device that cannot be resolved."""
    entries = []
    for name, source in requested.items():
        entry = found.devices.get(name)
        if entry is not None:
            entries.append((source, entry))
            continue
        if name in found.conflicts:
            raise InvalidArgument(f"{source}: CDI device {name!r} is defined by more than one spec file of the "
                                  f"same directory: {', '.join(found.conflicts[name])}")
        refused = f"; refused spec files: {' | '.join(found.errors)}" if found.errors else ""
        raise InvalidArgument(f"{source}: CDI device {name!r} is unresolvable: no spec file in "
                              f"{', '.join(map(str, dirs))} defines it{refused}")
    return entries


class CdiRegistry:
    """The node's CDI spec directories, read again when they change."""

    def __init__(self, config: CdiConfig) -> None:
        self.config = config
        self.catalog = Catalog()
        self._signature: tuple[Any, ...] | None = None
        self._lock = threading.Lock()

    def status(self) -> dict[str, Any]:
        """Status' verbose ``cdi`` entry, from the last reading."""
        return {"enabled": self.config.enabled, "specDirs": [str(d) for d in self.config.spec_dirs],
                "devices": len(self.catalog.devices), "conflicts": sorted(self.catalog.conflicts),
                "errors": list(self.catalog.errors)}

    def refresh(self) -> Catalog:
        """Read the spec files again if the directories changed (blocking)."""
        with self._lock:
            signature, files = self._scan()
            if signature != self._signature:
                self.catalog = self._load(files)
                self._signature = signature
            return self.catalog

    def edits_for(self, config: ContainerConfig) -> tuple[ContainerEdits, ...]:
        """The edits the container's CDI devices need, in the order they apply: each spec's own edits before
        those of its first requested device, then each device's (as the CDI reference implementation does).
        Blocking; nothing is read for a container that asks for no CDI device."""
        requested = requested_devices(config)
        if not requested:
            return ()
        if not self.config.enabled:
            source = next(iter(requested.values()))
            raise InvalidArgument(f"{source}: CDI devices are requested but [cdi] enabled is false on this node")
        found = self.refresh()
        ordered: list[ContainerEdits] = []
        seen: set[str] = set()
        for source, entry in edits_in_order(found, requested, self.config.spec_dirs):
            name = f"CDI device {entry.spec.kind}={entry.device.name} ({source})"
            if entry.file not in seen:
                seen.add(entry.file)
                ordered.append(_resolved(entry.spec.container_edits, f"{name}: {entry.file}: containerEdits"))
            index = entry.spec.devices.index(entry.device)
            ordered.append(_resolved(entry.device.container_edits,
                                     f"{name}: {entry.file}: devices[{index}].containerEdits"))
        return tuple(ordered)

    def _scan(self) -> tuple[tuple[Any, ...], list[list[Path]]]:
        """A cheap fingerprint of the spec directories and their spec files, per directory."""
        signature: list[Any] = []
        files: list[list[Path]] = []
        for directory in self.config.spec_dirs:
            try:
                names = sorted(n for n in os.listdir(directory) if n.endswith(SUFFIXES))
            except OSError:
                names = []
            found = []
            for name in names:
                path = directory / name
                try:
                    info = path.stat()
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.append(path)
                    signature.append((str(path), info.st_mtime_ns, info.st_size, info.st_ino))
            files.append(found)
        return tuple(signature), files

    def _load(self, files: list[list[Path]]) -> Catalog:
        directories: list[list[tuple[str, Spec]]] = []
        errors: list[str] = []
        for paths in files:
            specs = []
            for path in paths:
                try:
                    specs.append((str(path), _read_spec(path)))
                except SpecError as exc:
                    log.warning("CDI spec refused: %s", exc)
                    errors.append(str(exc))
            directories.append(specs)
        found = catalog(directories, errors)
        for name, files_ in found.conflicts.items():
            log.warning("CDI device %s is defined by more than one spec file: %s", name, ", ".join(files_))
        log.info("CDI: %d device(s) from %s", len(found.devices), ", ".join(map(str, self.config.spec_dirs)))
        return found


def _read_spec(path: Path) -> Spec:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{path}: {exc.strerror}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not UTF-8 text") from None
    return parse_spec(str(path), text)
