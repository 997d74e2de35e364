"""Helpers that build protobuf requests generically from descriptors (for sweeping all 41 RPCs)."""

from __future__ import annotations

from types import ModuleType

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

IMPLEMENTED = {"Version", "Status", "RuntimeConfig", "UpdateRuntimeConfig", "ListContainers", "StreamContainers",
               "ListPodSandbox", "StreamPodSandboxes", "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox",
               "PodSandboxStatus", "UpdatePodSandboxResources",
               "PullImage", "ImageStatus", "ListImages", "StreamImages", "RemoveImage", "ImageFsInfo",
               "CreateContainer", "StartContainer", "StopContainer", "RemoveContainer", "ContainerStatus",
               "ExecSync", "ReopenContainerLog", "GetContainerEvents", "UpdateContainerResources",
               "Exec", "Attach", "PortForward",
               "ContainerStats", "ListContainerStats", "PodSandboxStats", "ListPodSandboxStats",
               "StreamContainerStats", "StreamPodSandboxStats", "ListMetricDescriptors", "ListPodSandboxMetrics",
               "StreamPodSandboxMetrics"}


def all_rpcs(pb: ModuleType) -> list[tuple[str, str, bool, type[Message], type[Message]]]:
    """(path, name, server_streaming, request class, response class) for every CRI RPC."""
    rpcs = []
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            rpcs.append((f"/{service.full_name}/{method.name}", method.name, method.server_streaming,
                         getattr(pb, method.input_type.name), getattr(pb, method.output_type.name)))
    return rpcs


def filled(cls: type[Message], depth: int = 0) -> Message:
    """A valid request with every field set: ids "x", numbers 1, flags off, nested messages present.

    Exec and Attach must ask for at least one stream, so those get stdout."""
    message = cls()
    _fill(message, message.DESCRIPTOR, depth)
    if "stdout" in message.DESCRIPTOR.fields_by_name:
        message.stdout = True
    return message


def _fill(message: Message, descriptor: Descriptor, depth: int) -> None:
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is None:
                getattr(message, field.name)["k"] = _scalar(value_field)
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 4:
                continue
            if field.is_repeated:
                _fill(getattr(message, field.name).add(), field.message_type, depth + 1)
            else:
                _fill(getattr(message, field.name), field.message_type, depth + 1)
                getattr(message, field.name).SetInParent()
        elif field.is_repeated:
            getattr(message, field.name).append(_scalar(field))
        else:
            setattr(message, field.name, _scalar(field))


def _scalar(field: FieldDescriptor) -> object:
    if field.type == FieldDescriptor.TYPE_STRING:
        return "x"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return b"x"
    if field.type == FieldDescriptor.TYPE_BOOL:
        return False
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 1.0
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values[0].number
    return 1
