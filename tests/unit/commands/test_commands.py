"""The commands, results and mirror models match the generated CRI bindings and validate requests.

The mirror check walks each command/result next to its request/response message class,
field by field and recursively, so a renamed, missing or mistyped field anywhere in the
tree fails here rather than at conversion time.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import types
import typing
from typing import Any

import betterproto2
import grpclib.const
import pytest
from pydantic import BaseModel, ValidationError

import crirt._gen.runtime.v1 as gen
from crirt.commands import ALL_COMMANDS
from crirt.commands.base import Command, Result
from crirt.model import enums
from crirt.model.common import ImageSpec, Mount
from crirt.model.container import ContainerConfig, ContainerMetadata
from crirt.model.types import Bytes, Double, Int32, Int64, RequiredId, Text, UInt32, UInt64

MODEL_MODULES = ("common", "container", "sandbox", "image", "stats", "runtime")

SCALARS: dict[str, tuple[Any, ...]] = {
    "string": (Text, RequiredId),
    "bytes": (Bytes,),
    "bool": (bool,),
    "int32": (Int32,),
    "uint32": (UInt32,),
    "int64": (Int64,),
    "uint64": (UInt64,),
    "double": (Double,),
}

ACCEPT_EMPTY_REQUEST = {
    "Version",
    "Status",
    "UpdateRuntimeConfig",
    "RuntimeConfig",
    "GetContainerEvents",
    "ListPodSandbox",
    "StreamPodSandboxes",
    "ListContainers",
    "StreamContainers",
    "ListContainerStats",
    "StreamContainerStats",
    "ListPodSandboxStats",
    "StreamPodSandboxStats",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "StreamPodSandboxMetrics",
    "ListImages",
    "StreamImages",
    "ImageFsInfo",
}


def service_handlers() -> dict[str, grpclib.const.Handler]:
    """Every RPC of the generated RuntimeService and ImageService, by RPC name."""
    handlers: dict[str, grpclib.const.Handler] = {}
    for service in (gen.RuntimeServiceBase, gen.ImageServiceBase):
        for path, handler in service.__mapping__(object.__new__(service)).items():
            handlers[path.rsplit("/", 1)[1]] = handler
    return handlers


HANDLERS = service_handlers()


def unwrap(hint: Any) -> tuple[str, Any]:
    """Strip optional/list/map wrappers (and the bounds on them) off a type hint: (shape, leaf type)."""
    shape = "single"
    while True:
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin is typing.Annotated and typing.get_origin(args[0]) in (list, dict):
            hint = args[0]
        elif origin is list:
            shape, hint = "list", args[0]
        elif origin is dict:
            shape, hint = "map", args[1]
        elif origin is types.UnionType:
            (hint,) = [arg for arg in args if arg is not types.NoneType]
        else:
            return shape, hint


def assert_same_enum(model_enum: type, message_enum: type, where: str) -> None:
    """The mirror enum is a plain IntEnum with the generated enum's members and values."""
    assert issubclass(model_enum, enum.IntEnum), where
    assert not issubclass(model_enum, betterproto2.Enum), where
    assert [(m.name, m.value) for m in model_enum] == [(m.name, m.value) for m in message_enum], where


def assert_mirrors(model: type[BaseModel], message: type[betterproto2.Message], path: str) -> None:
    """Walk a model and a message class together, checking names, shapes and types of every field."""
    model_hints = typing.get_type_hints(model, include_extras=True)
    message_hints = typing.get_type_hints(message)
    message_fields = {field.name: field.metadata["betterproto"] for field in dataclasses.fields(message)}
    assert set(model.model_fields) == set(message_fields), path
    for name, meta in message_fields.items():
        where = f"{path}.{name}"
        model_shape, model_leaf = unwrap(model_hints[name])
        message_shape, message_leaf = unwrap(message_hints[name])
        assert model_shape == message_shape, where
        if meta.proto_type == "message":
            assert issubclass(model_leaf, BaseModel), where
            assert_mirrors(model_leaf, message_leaf, where)
        elif meta.proto_type == "enum":
            assert_same_enum(model_leaf, message_leaf, where)
        elif meta.proto_type == "map":
            assert model_leaf in SCALARS[meta.map_meta[1].proto_type], where
        else:
            assert model_leaf in SCALARS[meta.proto_type], where


def test_all_commands_cover_exactly_the_service_rpcs():
    assert len(HANDLERS) == 41
    assert set(ALL_COMMANDS) == set(HANDLERS)


@pytest.mark.parametrize("rpc", sorted(HANDLERS))
def test_command_declares_its_rpc(rpc: str):
    command = ALL_COMMANDS[rpc]
    assert issubclass(command, Command)
    assert command.__name__ == f"{rpc}Command"
    assert command.rpc == rpc
    assert issubclass(command.result, Result)
    assert command.result.__name__ == f"{rpc}Result"
    assert command.streaming == (HANDLERS[rpc].cardinality is grpclib.const.Cardinality.UNARY_STREAM)


@pytest.mark.parametrize("rpc", sorted(HANDLERS))
def test_command_and_result_mirror_request_and_response(rpc: str):
    command = ALL_COMMANDS[rpc]
    assert_mirrors(command, HANDLERS[rpc].request_type, command.__name__)
    assert_mirrors(command.result, HANDLERS[rpc].reply_type, command.result.__name__)


def test_every_data_message_has_a_mirror_model():
    models = {
        name: value
        for module in MODEL_MODULES
        for name, value in vars(importlib.import_module(f"crirt.model.{module}")).items()
        if isinstance(value, type) and issubclass(value, BaseModel)
    }
    for name in gen.__all__:
        message = getattr(gen, name)
        if not (isinstance(message, type) and issubclass(message, betterproto2.Message)):
            continue
        if name.endswith(("Request", "Response")):
            continue
        proto_name = message.DESCRIPTOR.name
        assert proto_name in models, proto_name
        assert_mirrors(models[proto_name], message, proto_name)


def test_every_enum_is_mirrored():
    generated = {
        name: value
        for name in gen.__all__
        if isinstance(value := getattr(gen, name), type) and issubclass(value, betterproto2.Enum)
    }
    renamed = {"SecurityProfileProfileType": "SecurityProfileType"}
    for name, message_enum in generated.items():
        assert_same_enum(getattr(enums, renamed.get(name, name)), message_enum, name)


@pytest.mark.parametrize("rpc", sorted(HANDLERS))
def test_empty_request_is_rejected_only_where_an_id_is_required(rpc: str):
    command = ALL_COMMANDS[rpc]
    if rpc in ACCEPT_EMPTY_REQUEST:
        command.model_validate({})
    else:
        with pytest.raises(ValidationError):
            command.model_validate({})


@pytest.mark.parametrize("bad_id", ["", " ", "a b", "a\x00b", "x" * 1025])
def test_required_id_rejects_bad_ids(bad_id: str):
    with pytest.raises(ValidationError):
        ALL_COMMANDS["StopContainer"](container_id=bad_id)
    with pytest.raises(ValidationError):
        ALL_COMMANDS["StopPodSandbox"](pod_sandbox_id=bad_id)
    with pytest.raises(ValidationError):
        ALL_COMMANDS["PullImage"](image=ImageSpec(image=bad_id))


def test_nested_required_fields():
    create = ALL_COMMANDS["CreateContainer"]
    with pytest.raises(ValidationError):
        create(pod_sandbox_id="p1", config=ContainerConfig())
    with pytest.raises(ValidationError):
        create(pod_sandbox_id="p1", config=ContainerConfig(metadata=ContainerMetadata()))
    created = create(pod_sandbox_id="p1", config={"metadata": {"name": "app"}})
    assert created.config.metadata.name == "app"
    with pytest.raises(ValidationError):
        ALL_COMMANDS["RunPodSandbox"](config={"metadata": {"name": "pod", "uid": "u1"}})
    ALL_COMMANDS["RunPodSandbox"](config={"metadata": {"name": "pod", "uid": "u1", "namespace": "ns"}})


@pytest.mark.parametrize("log_path", ["/tmp/x.log", "../x.log", "a/../../x.log", "..", ".", "a/..", "a\x00.log"])
def test_a_log_path_outside_the_log_directory_is_refused(log_path: str):
    with pytest.raises(ValidationError) as error:
        ALL_COMMANDS["CreateContainer"](pod_sandbox_id="p1", config={"metadata": {"name": "app"},
                                                                     "log_path": log_path})
    assert [e["loc"] for e in error.value.errors()] == [("config", "log_path")]


@pytest.mark.parametrize("log_path", ["", "app/0.log", "app.log", "a/../b/0.log", "./app/1.log"])
def test_a_log_path_inside_the_log_directory_is_accepted(log_path: str):
    created = ALL_COMMANDS["CreateContainer"](pod_sandbox_id="p1", config={"metadata": {"name": "app"},
                                                                           "log_path": log_path})
    assert created.config.log_path == log_path


def test_exec_needs_a_command_and_a_stream():
    with pytest.raises(ValidationError):
        ALL_COMMANDS["ExecSync"](container_id="c1", cmd=[])
    ALL_COMMANDS["ExecSync"](container_id="c1", cmd=["true"])
    with pytest.raises(ValidationError, match="one of stdin, stdout, or stderr"):
        ALL_COMMANDS["Exec"](container_id="c1", cmd=["sh"])
    with pytest.raises(ValidationError, match="tty and stderr"):
        ALL_COMMANDS["Attach"](container_id="c1", tty=True, stdout=True, stderr=True)
    ALL_COMMANDS["Exec"](container_id="c1", cmd=["sh"], tty=True, stdin=True, stdout=True)


def test_integers_are_range_checked():
    stop = ALL_COMMANDS["StopContainer"]
    assert stop(container_id="c1", timeout=2**63 - 1).timeout == 2**63 - 1
    assert stop(container_id="c1", timeout=-(2**63)).timeout == -(2**63)
    for bad in (2**63, -(2**63) - 1, True, "5", 1.0):
        with pytest.raises(ValidationError):
            stop(container_id="c1", timeout=bad)
    with pytest.raises(ValidationError):
        ContainerMetadata(attempt=-1)
    with pytest.raises(ValidationError):
        ContainerMetadata(attempt=2**32)


def test_unknown_enum_values_are_rejected():
    assert ContainerConfig(stop_signal=23).stop_signal is enums.Signal.SIGTERM
    with pytest.raises(ValidationError):
        ContainerConfig(stop_signal=66)
    with pytest.raises(ValidationError):
        Mount(propagation=-1)


def test_lists_and_maps_are_bounded():
    with pytest.raises(ValidationError):
        ContainerConfig(command=["x"] * 100_001)
    with pytest.raises(ValidationError):
        ContainerConfig(labels={str(i): "" for i in range(100_001)})


@pytest.mark.parametrize(
    ("rpc", "data", "keys"),
    [
        ("StartContainer", {"container_id": "c1"}, ("container:c1",)),
        ("StopContainer", {"container_id": "c1"}, ("container:c1",)),
        ("RemoveContainer", {"container_id": "c1"}, ("container:c1",)),
        ("CreateContainer", {"pod_sandbox_id": "p1", "config": {"metadata": {"name": "a"}}}, ("sandbox:p1",)),
        ("StopPodSandbox", {"pod_sandbox_id": "p1"}, ("sandbox:p1",)),
        ("RemovePodSandbox", {"pod_sandbox_id": "p1"}, ("sandbox:p1",)),
        ("PullImage", {"image": {"image": "busybox:1.36"}}, ("image:busybox:1.36",)),
        ("RemoveImage", {"image": {"image": "busybox:1.36"}}, ("image:busybox:1.36",)),
        ("ContainerStatus", {"container_id": "c1"}, ()),
        ("ExecSync", {"container_id": "c1", "cmd": ["true"]}, ()),
        ("ListContainers", {}, ()),
        ("Version", {}, ()),
    ],
)
def test_lock_keys(rpc: str, data: dict[str, Any], keys: tuple[str, ...]):
    assert ALL_COMMANDS[rpc].model_validate(data).lock_keys() == keys
