"""``crirt ctl runp``, ``pods``, ``inspectp``, ``stopp`` and ``rmp``: crictl's pod verbs, flags and files.

Sandbox and container config files are crictl's: JSON or YAML (by the name's ``.json``, ``.yaml`` or ``.yml``;
otherwise JSON if the text starts with ``{``) with the CRI field names, in crictl's snake_case
(``log_directory``, ``port_mappings``) or protobuf JSON's camelCase (``logDirectory``), keys matched
case-insensitively as Go's decoder does, enums as numbers (``"network": 2``) or names (``"NODE"``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import BaseModel, ValidationError

from crirt._gen.runtime.v1 import (
    ListPodSandboxRequest,
    PodSandbox,
    PodSandboxConfig,
    PodSandboxFilter,
    PodSandboxState,
    PodSandboxStateValue,
    PodSandboxStatusRequest,
    RemovePodSandboxRequest,
    RunPodSandboxRequest,
    StopPodSandboxRequest,
)
from crirt.api.convert import describe_validation_error, to_message
from crirt.ctl.app import ago, allow_slow_calls, app, call_runtime, fail, parse_labels, print_listing
from crirt.model import sandbox as model


class ConfigFileError(ValueError):
    """A sandbox config file that cannot be used; the message names the file and the field."""


def _key(name: str) -> str:
    return name.replace("_", "").lower()


def _inner_types(annotation: Any) -> list[Any]:
    """The concrete types inside an annotation (``X | None``, ``list[X]``, ``dict[str, X]``)."""
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        return [t for arg in typing.get_args(annotation) for t in _inner_types(arg)]
    if origin is typing.Annotated:
        return _inner_types(typing.get_args(annotation)[0])
    return [annotation]


def _normalize_value(value: Any, annotation: Any, where: str) -> Any:
    for kind in _inner_types(annotation):
        origin = typing.get_origin(kind)
        if origin is list and isinstance(value, list):
            (item,) = typing.get_args(kind)
            return [_normalize_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        if origin is dict and isinstance(value, dict):
            return value
        if isinstance(kind, type) and issubclass(kind, BaseModel) and isinstance(value, dict):
            return normalize(value, kind, where)
        if isinstance(kind, type) and issubclass(kind, IntEnum) and isinstance(value, str):
            members = {m.name.lower(): m for m in kind}
            if value.lower() not in members:
                raise ConfigFileError(f"{where}: {value!r} is not one of {', '.join(m.name for m in kind)}")
            return int(members[value.lower()])
    return value


def normalize(data: dict[str, Any], model_type: type[BaseModel], where: str = "") -> dict[str, Any]:
    """Map crictl/protobuf-JSON keys onto the model's field names and enum names onto numbers."""
    fields = {_key(name): name for name in model_type.model_fields}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = fields.get(_key(key))
        path = f"{where}.{key}" if where else key
        if name is None:
            raise ConfigFileError(f"{path}: unknown field (known: {', '.join(model_type.model_fields)})")
        if value is not None:
            out[name] = _normalize_value(value, model_type.model_fields[name].annotation, path)
    return out


M = typing.TypeVar("M", bound=BaseModel)


def load_sandbox_config(path: Path) -> model.PodSandboxConfig:
    """Read and validate a crictl sandbox config file."""
    return load_config(path, model.PodSandboxConfig)


def read_document(path: Path) -> Any:
    """A config file's data: YAML or JSON by the file's suffix, else by its first character; errors name the line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigFileError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: not UTF-8 text") from None
    suffix = path.suffix.lower()
    if suffix == ".json" or (suffix not in (".yaml", ".yml") and text.lstrip().startswith("{")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigFileError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigFileError(f"{path}{line}: not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path}: not valid YAML: {exc}") from None


def load_config(path: Path, model_type: type[M]) -> M:
    """Read and validate a crictl config file (sandbox or container) as ``model_type``."""
    data = read_document(path)
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: must be an object of CRI fields (a JSON object or YAML mapping), "
                              f"not {type(data).__name__}")
    try:
        return model_type.model_validate(normalize(data, model_type))
    except ConfigFileError as exc:
        raise ConfigFileError(f"{path}: {exc}") from None
    except ValidationError as exc:
        raise ConfigFileError(f"{path}: {describe_validation_error(exc)}") from None


@app.command()
def runp(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="pod sandbox config (JSON or YAML, crictl's format)")],
    runtime: Annotated[str, typer.Option("--runtime", "-r", help="runtime handler (RuntimeClass)")] = "",
    cancel_timeout: Annotated[float | None, typer.Option("--cancel-timeout", "-T",
                                                         help="seconds before the request is abandoned")] = None,
) -> None:
    """Run a new pod sandbox and print its id."""
    try:
        sandbox = load_sandbox_config(config)
    except ConfigFileError as exc:
        raise fail(str(exc)) from None
    request = RunPodSandboxRequest(config=to_message(sandbox, PodSandboxConfig), runtime_handler=runtime)
    if cancel_timeout is not None:
        ctx.obj = dataclasses.replace(ctx.obj, timeout=cancel_timeout)
    else:
        allow_slow_calls(ctx)
    reply = call_runtime(ctx, lambda stub: stub.run_pod_sandbox(request))
    typer.echo(reply.pod_sandbox_id)



def _state_name(state: PodSandboxState) -> str:
    return "Ready" if state == PodSandboxState.SANDBOX_READY else "NotReady"


def select_pods(items: list[PodSandbox], name: str, namespace: str, latest: bool, last: int) -> list[PodSandbox]:
    """crictl's client-side filters: name and namespace as regular expressions, newest first, --latest/--last."""
    chosen = [p for p in items
              if (not name or (p.metadata and re.search(name, p.metadata.name)))
              and (not namespace or (p.metadata and re.search(namespace, p.metadata.namespace)))]
    chosen.sort(key=lambda p: p.created_at, reverse=True)
    if latest:
        return chosen[:1]
    if last:
        return chosen[:last]
    return chosen


@app.command()
def pods(
    ctx: typer.Context,
    pod_id: Annotated[str, typer.Option("--id", help="only the pod with this id (or id prefix)")] = "",
    name: Annotated[str, typer.Option("--name", help="regular expression on the pod name")] = "",
    namespace: Annotated[str, typer.Option("--namespace", help="regular expression on the namespace")] = "",
    state: Annotated[str, typer.Option("--state", "-s", help="ready or notready")] = "",
    label: Annotated[list[str] | None, typer.Option("--label", help="key=value, repeatable")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only ids")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json")] = "table",
    latest: Annotated[bool, typer.Option("--latest", "-l", help="only the newest pod")] = False,
    last: Annotated[int, typer.Option("--last", "-n", help="only the N newest pods")] = 0,
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="do not shorten ids")] = False,
) -> None:
    """List pod sandboxes."""
    selector = parse_labels(label or [])
    filter_ = PodSandboxFilter(id=pod_id, label_selector=selector)
    if state:
        wanted = {"ready": PodSandboxState.SANDBOX_READY, "notready": PodSandboxState.SANDBOX_NOTREADY}
        if state.lower() not in wanted:
            raise fail(f"--state {state!r}: expected ready or notready")
        filter_.state = PodSandboxStateValue(state=wanted[state.lower()])
    reply = call_runtime(ctx, lambda stub: stub.list_pod_sandbox(ListPodSandboxRequest(filter=filter_)))
    items = select_pods(list(reply.items), name, namespace, latest, last)

    def row(item: PodSandbox) -> tuple[str, ...]:
        meta = item.metadata
        return (item.id if no_trunc else item.id[:13], ago(item.created_at), _state_name(item.state),
                meta.name if meta else "", meta.namespace if meta else "", str(meta.attempt if meta else 0),
                item.runtime_handler or "(default)")

    print_listing(items, "items", quiet, output, ("POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT",
                                                  "RUNTIME"), row)


@app.command()
def inspectp(
    ctx: typer.Context,
    pod_ids: Annotated[list[str], typer.Argument(help="pod ids (or unique prefixes)")],
    output: Annotated[str, typer.Option("--output", "-o", help="json or table")] = "json",
) -> None:
    """Show the status of pod sandboxes (with the runtime's verbose info) as JSON."""
    for pod_id in pod_ids:
        reply = call_runtime(ctx, lambda stub, pid=pod_id: stub.pod_sandbox_status(
            PodSandboxStatusRequest(pod_sandbox_id=pid, verbose=True)))
        status = reply.status
        if output == "table":
            assert status is not None
            meta = status.metadata
            typer.echo(f"ID: {status.id}\nName: {meta.name if meta else ''}\nUID: {meta.uid if meta else ''}\n"
                       f"Namespace: {meta.namespace if meta else ''}\nAttempt: {meta.attempt if meta else 0}\n"
                       f"Status: {status.state.name}\nCreated: {ago(status.created_at)}\n"
                       f"IP Addresses: {', '.join(_ips(status))}\nLabels: {dict(status.labels)}\n"
                       f"Annotations: {dict(status.annotations)}")
            continue
        if output != "json":
            raise fail(f"--output {output!r}: expected json or table")
        document: dict[str, Any] = {"status": status.to_dict(include_default_values=True) if status else {}}
        for key, value in reply.info.items():
            try:
                document[key] = json.loads(value)
            except ValueError:
                document[key] = value
        typer.echo(json.dumps(document, indent=2))


def _ips(status: Any) -> list[str]:
    network = status.network
    if network is None:
        return []
    return [ip for ip in [network.ip, *(a.ip for a in network.additional_ips)] if ip]


@app.command()
def stopp(
    ctx: typer.Context,
    pod_ids: Annotated[list[str], typer.Argument(help="pod ids (or unique prefixes)")],
) -> None:
    """Stop pod sandboxes (their containers, infra container and network)."""
    allow_slow_calls(ctx)
    for pod_id in pod_ids:
        call_runtime(ctx, lambda stub, pid=pod_id: stub.stop_pod_sandbox(StopPodSandboxRequest(pod_sandbox_id=pid)))
        typer.echo(f"Stopped sandbox {pod_id}")


@app.command()
def rmp(
    ctx: typer.Context,
    pod_ids: Annotated[list[str] | None, typer.Argument(help="pod ids (or unique prefixes)")] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="remove ready pods too (stopping them)")] = False,
    all_pods: Annotated[bool, typer.Option("--all", "-a", help="remove every pod")] = False,
) -> None:
    """Remove pod sandboxes; a ready pod needs --force, as with crictl."""
    allow_slow_calls(ctx)
    ids = list(pod_ids or [])
    if all_pods:
        ids = [p.id for p in call_runtime(ctx, lambda stub: stub.list_pod_sandbox(ListPodSandboxRequest())).items]
    if not ids:
        raise fail("give pod ids, or --all")
    for pod_id in ids:
        if not force:
            reply = call_runtime(ctx, lambda stub, pid=pod_id: stub.pod_sandbox_status(
                PodSandboxStatusRequest(pod_sandbox_id=pid)))
            if reply.status and reply.status.state == PodSandboxState.SANDBOX_READY:
                raise fail(f"pod sandbox {pod_id} is ready: stop it first (stopp) or use --force")
        else:
            call_runtime(ctx, lambda stub, pid=pod_id: stub.stop_pod_sandbox(
                StopPodSandboxRequest(pod_sandbox_id=pid)))
        call_runtime(ctx, lambda stub, pid=pod_id: stub.remove_pod_sandbox(
            RemovePodSandboxRequest(pod_sandbox_id=pid)))
        typer.echo(f"Removed sandbox {pod_id}")
