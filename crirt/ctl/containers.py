"""``crirt ctl create``, ``start``, ``ps``, ``inspect``, ``logs``, ``exec``, ``stop`` and ``rm``: crictl's
container verbs, flags and files.

Container config files are crictl's JSON, read like sandbox configs (snake_case or camelCase keys, enums
by number or name): see ``crirt/ctl/sandboxes.py``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import deque
from pathlib import Path
from typing import Annotated, Any

import typer

from crirt._gen.runtime.v1 import (
    Container,
    ContainerConfig,
    ContainerFilter,
    ContainerState,
    ContainerStateValue,
    ContainerStatusRequest,
    CreateContainerRequest,
    ExecSyncRequest,
    ListContainersRequest,
    PodSandboxConfig,
    RemoveContainerRequest,
    StartContainerRequest,
    StopContainerRequest,
)
from crirt.api.convert import to_message
from crirt.ctl.app import ago, allow_slow_calls, app, call_runtime, fail, parse_labels, print_listing
from crirt.ctl.sandboxes import ConfigFileError, load_config, load_sandbox_config
from crirt.ctl.streaming import TransportOption, exec_stream, transport_for
from crirt.model import container as model

STATES = {"created": ContainerState.CONTAINER_CREATED, "running": ContainerState.CONTAINER_RUNNING,
          "exited": ContainerState.CONTAINER_EXITED, "unknown": ContainerState.CONTAINER_UNKNOWN}


def _state_name(state: ContainerState) -> str:
    """crictl's STATE column: ``Running``, ``Exited``, ..."""
    return ContainerState(state).name.removeprefix("CONTAINER_").capitalize()


@app.command()
def create(
    ctx: typer.Context,
    pod_id: Annotated[str, typer.Argument(help="the pod sandbox to create the container in")],
    container_config: Annotated[Path, typer.Argument(help="container config (JSON or YAML, crictl's format)")],
    pod_config: Annotated[Path, typer.Argument(help="the pod's sandbox config (JSON or YAML, crictl's format)")],
    no_pull: Annotated[bool, typer.Option("--no-pull", help="accepted for crictl compatibility: crirt ctl "
                                                            "never pulls; pull the image first")] = False,
) -> None:
    """Create a container in a pod sandbox and print its id (the image must already be pulled)."""
    del no_pull
    try:
        config = load_config(container_config, model.ContainerConfig)
        sandbox = load_sandbox_config(pod_config)
    except ConfigFileError as exc:
        raise fail(str(exc)) from None
    request = CreateContainerRequest(pod_sandbox_id=pod_id, config=to_message(config, ContainerConfig),
                                     sandbox_config=to_message(sandbox, PodSandboxConfig))
    allow_slow_calls(ctx)
    reply = call_runtime(ctx, lambda stub: stub.create_container(request))
    typer.echo(reply.container_id)


@app.command()
def start(
    ctx: typer.Context,
    container_ids: Annotated[list[str], typer.Argument(help="container ids")],
) -> None:
    """Start created containers."""
    allow_slow_calls(ctx)
    for cid in container_ids:
        call_runtime(ctx, lambda stub, c=cid: stub.start_container(StartContainerRequest(container_id=c)))
        typer.echo(cid)


@app.command()
def ps(
    ctx: typer.Context,
    all_states: Annotated[bool, typer.Option("--all", "-a", help="all containers, not only running ones")] = False,
    container_id: Annotated[str, typer.Option("--id", help="only the container with this id (or prefix)")] = "",
    pod: Annotated[str, typer.Option("--pod", "-p", help="only containers of this pod")] = "",
    state: Annotated[str, typer.Option("--state", help="created, running, exited or unknown")] = "",
    label: Annotated[list[str] | None, typer.Option("--label", help="key=value, repeatable")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only ids")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json")] = "table",
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="do not shorten ids")] = False,
) -> None:
    """List containers (running ones unless --all or --state)."""
    selector = parse_labels(label or [])
    filter_ = ContainerFilter(id=container_id, pod_sandbox_id=pod, label_selector=selector)
    if state:
        if state.lower() not in STATES:
            raise fail(f"--state {state!r}: expected one of {', '.join(STATES)}")
        filter_.state = ContainerStateValue(state=STATES[state.lower()])
    elif not all_states:
        filter_.state = ContainerStateValue(state=ContainerState.CONTAINER_RUNNING)
    reply = call_runtime(ctx, lambda stub: stub.list_containers(ListContainersRequest(filter=filter_)))
    items: list[Container] = sorted(reply.containers, key=lambda c: c.created_at, reverse=True)
    short = (lambda s: s) if no_trunc else (lambda s: s[:13])

    def row(item: Container) -> tuple[str, ...]:
        meta = item.metadata
        image = item.image.image if item.image and item.image.image else item.image_ref
        return (short(item.id), image if no_trunc or not image.startswith("sha256:") else image[7:20],
                ago(item.created_at), _state_name(item.state), meta.name if meta else "",
                str(meta.attempt if meta else 0), short(item.pod_sandbox_id))

    print_listing(items, "containers", quiet, output,
                  ("CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID"), row)


@app.command()
def inspect(
    ctx: typer.Context,
    container_ids: Annotated[list[str], typer.Argument(help="container ids")],
    output: Annotated[str, typer.Option("--output", "-o", help="json or table")] = "json",
) -> None:
    """Show the status of containers (with the runtime's verbose info) as JSON."""
    if output not in ("json", "table"):
        raise fail(f"--output {output!r}: expected json or table")
    for cid in container_ids:
        reply = call_runtime(ctx, lambda stub, c=cid: stub.container_status(
            ContainerStatusRequest(container_id=c, verbose=output == "json")))
        status = reply.status
        if output == "table":
            assert status is not None
            meta = status.metadata
            typer.echo(f"ID: {status.id}\nName: {meta.name if meta else ''}\n"
                       f"State: {status.state.name}\nCreated: {ago(status.created_at)}\n"
                       f"Exit Code: {status.exit_code}\nImage: {status.image.image if status.image else ''}")
            continue
        document: dict[str, Any] = {"status": status.to_dict(include_default_values=True) if status else {}}
        for key, value in reply.info.items():
            try:
                document[key] = json.loads(value)
            except ValueError:
                document[key] = value
        typer.echo(json.dumps(document, indent=2))


def read_cri_log(path: Path, tail: int = -1) -> list[tuple[str, str]]:
    """The (stream, message) entries of a CRI-format log file, partial (``P``) lines joined to their end."""
    entries: deque[tuple[str, str]] = deque(maxlen=tail if tail >= 0 else None)
    pending: dict[str, list[str]] = {}
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            parts = line.rstrip("\n").split(" ", 3)
            if len(parts) < 3:
                continue
            stream, tag = parts[1], parts[2]
            message = parts[3] if len(parts) == 4 else ""
            pending.setdefault(stream, []).append(message)
            if not tag.startswith("P"):
                entries.append((stream, "".join(pending.pop(stream))))
    return list(entries)


@app.command()
def logs(
    ctx: typer.Context,
    container_id: Annotated[str, typer.Argument(help="container id")],
    tail: Annotated[int, typer.Option("--tail", help="only the last N lines (-1: all)")] = -1,
) -> None:
    """Print a container's log (read from its log file, as crictl does): stdout and stderr to theirs."""
    reply = call_runtime(ctx, lambda stub: stub.container_status(ContainerStatusRequest(container_id=container_id)))
    log_path = reply.status.log_path if reply.status else ""
    if not log_path:
        raise fail(f"container {container_id} has no log file")
    try:
        entries = read_cri_log(Path(log_path), tail)
    except OSError as exc:
        raise fail(f"{log_path}: {exc.strerror}") from None
    for stream, message in entries:
        (sys.stderr if stream == "stderr" else sys.stdout).write(message + "\n")
    sys.stdout.flush()
    sys.stderr.flush()


@app.command(name="exec", context_settings={"allow_interspersed_args": False})
def exec_(
    ctx: typer.Context,
    container_id: Annotated[str, typer.Argument(help="container id")],
    cmd: Annotated[list[str], typer.Argument(help="the command and its arguments")],
    sync: Annotated[bool, typer.Option("--sync", "-s", help="run synchronously (ExecSync)")] = False,
    timeout: Annotated[int, typer.Option("--timeout", help="seconds the command may run (0: no limit)")] = 0,
    interactive: Annotated[bool, typer.Option("--interactive", "-i", help="pass stdin to the command")] = False,
    tty: Annotated[bool, typer.Option("--tty", "-t", help="run the command in a terminal")] = False,
    transport: TransportOption = "spdy",
) -> None:
    """Run a command in a container (streamed; -s: ExecSync). Exits with its exit code."""
    if not sync:
        raise typer.Exit(exec_stream(ctx, transport_for(transport), container_id, cmd, stdin=interactive, tty=tty))
    if interactive or tty:
        raise fail("-i and -t need a streamed exec: drop -s (--sync)")
    wanted = max(ctx.obj.timeout, 60.0, timeout + 10.0)
    ctx.obj = dataclasses.replace(ctx.obj, timeout=wanted)
    reply = call_runtime(ctx, lambda stub: stub.exec_sync(
        ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout)))
    sys.stdout.buffer.write(reply.stdout)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(reply.stderr)
    sys.stderr.buffer.flush()
    raise typer.Exit(reply.exit_code)


@app.command()
def stop(
    ctx: typer.Context,
    container_ids: Annotated[list[str], typer.Argument(help="container ids")],
    timeout: Annotated[int, typer.Option("--timeout", "-t", help="seconds before the container is killed")] = 0,
) -> None:
    """Stop running containers."""
    ctx.obj = dataclasses.replace(ctx.obj, timeout=max(ctx.obj.timeout, 60.0, timeout + 30.0))
    for cid in container_ids:
        call_runtime(ctx, lambda stub, c=cid: stub.stop_container(StopContainerRequest(container_id=c,
                                                                                       timeout=timeout)))
        typer.echo(cid)


@app.command()
def rm(
    ctx: typer.Context,
    container_ids: Annotated[list[str], typer.Argument(help="container ids")],
    force: Annotated[bool, typer.Option("--force", "-f", help="stop running containers first")] = False,
) -> None:
    """Remove containers; a running one needs --force, as with crictl."""
    allow_slow_calls(ctx)
    for cid in container_ids:
        reply = call_runtime(ctx, lambda stub, c=cid: stub.container_status(ContainerStatusRequest(container_id=c)))
        if reply.status and reply.status.state == ContainerState.CONTAINER_RUNNING:
            if not force:
                raise fail(f"container {cid} is running: stop it first or use --force")
            call_runtime(ctx, lambda stub, c=cid: stub.stop_container(StopContainerRequest(container_id=c)))
        call_runtime(ctx, lambda stub, c=cid: stub.remove_container(RemoveContainerRequest(container_id=c)))
        typer.echo(cid)
