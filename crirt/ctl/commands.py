"""The ``crirt ctl`` verbs. Output follows crictl's so scripts written for one work with the other."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from crirt._gen.runtime.v1 import RuntimeServiceStub, StatusRequest, VersionRequest
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


def _call(ctx: typer.Context, call: Callable[[RuntimeServiceStub], Awaitable[T]]) -> T:
    settings: ClientSettings = ctx.obj

    async def run() -> T:
        channel = Channel(path=socket_path(settings.runtime_endpoint))
        try:
            return await call(RuntimeServiceStub(channel, timeout=settings.timeout))
        finally:
            channel.close()

    try:
        return asyncio.run(run())
    except GRPCError as exc:
        typer.echo(f"crirt ctl: {exc.status.name}: {exc.message}", err=True)
        raise typer.Exit(1) from None
    except (OSError, TimeoutError) as exc:
        typer.echo(f"crirt ctl: cannot reach {settings.runtime_endpoint}: {exc or type(exc).__name__}", err=True)
        raise typer.Exit(1) from None


@app.command()
def version(ctx: typer.Context) -> None:
    """Print the runtime's name and versions."""
    reply = _call(ctx, lambda stub: stub.version(VersionRequest(version="v1")))
    typer.echo(f"Version:  {reply.version}\nRuntimeName:  {reply.runtime_name}\n"
               f"RuntimeVersion:  {reply.runtime_version}\nRuntimeApiVersion:  {reply.runtime_api_version}")


@app.command()
def info(ctx: typer.Context) -> None:
    """Print the runtime's status, handlers and verbose info as JSON."""
    reply = _call(ctx, lambda stub: stub.status(StatusRequest(verbose=True)))
    document: dict[str, Any] = {
        "status": {"conditions": [c.to_dict(include_default_values=True)
                                  for c in (reply.status.conditions if reply.status else [])]},
        "runtimeHandlers": [h.to_dict(include_default_values=True) for h in reply.runtime_handlers],
    }
    for key, value in reply.info.items():
        try:
            document[key] = json.loads(value)
        except ValueError:
            document[key] = value
    typer.echo(json.dumps(document, indent=2, sort_keys=False))
