"""The ``crirt ctl`` application: global flags (crictl's) and the helper that runs one call.

Each family of verbs lives in its own module (``crirt/ctl/runtime.py``, ...) and registers on ``app``;
``crirt/ctl/__init__.py`` imports them all."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from crirt._gen.runtime.v1 import ImageServiceStub, RuntimeServiceStub
from crirt.ctl.settings import ClientSettings, socket_path

app = typer.Typer(help="A CRI client with crictl's verbs (talks to crirt or any CRI runtime).",
                  no_args_is_help=True)
T = TypeVar("T")


@app.callback()
def options(
    ctx: typer.Context,
    runtime_endpoint: Annotated[
        str | None, typer.Option("--runtime-endpoint", "-r", help="CRI endpoint, e.g. unix:///run/crirt/crirt.sock")
    ] = None,
    image_endpoint: Annotated[str | None, typer.Option("--image-endpoint", "-i")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", "-t", help="seconds per call")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="crictl config file")] = None,
) -> None:
    ctx.obj = ClientSettings.resolve(runtime_endpoint, image_endpoint, timeout, config)


def call_runtime(ctx: typer.Context, call: Callable[[RuntimeServiceStub], Awaitable[T]]) -> T:
    """Run one RuntimeService call; print a gRPC or connection error crictl-style and exit 1."""
    settings: ClientSettings = ctx.obj
    return _run(settings.runtime_endpoint, settings.timeout, lambda ch: call(RuntimeServiceStub(ch)))


def call_images(ctx: typer.Context, call: Callable[[ImageServiceStub], Awaitable[T]],
                timeout: float | None = None) -> T:
    """Run one ImageService call on the image endpoint (``timeout`` overrides the global one, e.g. for pulls)."""
    settings: ClientSettings = ctx.obj
    return _run(settings.image_endpoint, timeout or settings.timeout, lambda ch: call(ImageServiceStub(ch)))


def _run(endpoint: str, timeout: float, call: Callable[[Channel], Awaitable[T]]) -> T:
    async def run() -> T:
        channel = Channel(path=socket_path(endpoint))
        try:
            return await asyncio.wait_for(call(channel), timeout)
        finally:
            channel.close()

    try:
        return asyncio.run(run())
    except GRPCError as exc:
        typer.echo(f"crirt ctl: {exc.status.name}: {exc.message}", err=True)
        raise typer.Exit(1) from None
    except (OSError, TimeoutError) as exc:
        typer.echo(f"crirt ctl: cannot reach {endpoint}: {exc or type(exc).__name__}", err=True)
        raise typer.Exit(1) from None


def fail(message: str) -> typer.Exit:
    """Print a usage or input error crictl-style; raise the returned Exit (code 1)."""
    typer.echo(f"crirt ctl: {message}", err=True)
    return typer.Exit(1)


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    """Turn repeated ``--label key=value`` flags into a label selector."""
    selector: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"--label {item!r}: expected key=value")
        selector[key] = value
    return selector


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    """Print rows as left-aligned columns separated by three spaces, as crictl does."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def print_listing(items: Sequence[Any], json_key: str, quiet: bool, output: str, header: tuple[str, ...],
                  row: Callable[[Any], tuple[str, ...]]) -> None:
    """Print listed objects as crictl does: ids only (-q), JSON (-o json) or a table (-o table)."""
    if quiet:
        for item in items:
            typer.echo(item.id)
        return
    if output == "json":
        typer.echo(json.dumps({json_key: [i.to_dict(include_default_values=True) for i in items]}, indent=2))
        return
    if output != "table":
        raise fail(f"--output {output!r}: expected table or json")
    print_table([header, *(row(item) for item in items)])

def allow_slow_calls(ctx: typer.Context) -> None:
    """Creating, stopping and removing a pod may take longer than crictl's 2 s default timeout allows
    (CNI plugins, grace periods): give those calls at least a minute."""
    if ctx.obj.timeout < 60:
        ctx.obj = dataclasses.replace(ctx.obj, timeout=60.0)


def ago(created_at_ns: int, now: float | None = None) -> str:
    """crictl's CREATED column: a rounded age, "About a minute ago" style."""
    seconds = max(0.0, (now or time.time()) - created_at_ns / 1e9)
    if seconds < 1:
        return "Less than a second ago"
    if seconds < 60:
        return f"{int(seconds)} seconds ago"
    minutes = round(seconds / 60)
    if minutes == 1:
        return "About a minute ago"
    if minutes < 60:
        return f"{minutes} minutes ago"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour ago"
    if hours < 48:
        return f"{hours} hours ago"
    return f"{round(seconds / 86400)} days ago"


def human_size(size: float, digits: int = 3) -> str:
    """A byte count as crictl prints it: decimal units, ``digits`` significant digits (images 3, stats 4)."""
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    unit = 0
    while size >= 1000 and unit < len(units) - 1:
        size /= 1000
        unit += 1
    return f"{size:.{digits}g}{units[unit]}"
