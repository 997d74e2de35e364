"""``crirt ctl version`` and ``crirt ctl info``."""

from __future__ import annotations

import json
from typing import Any

import typer

from crirt._gen.runtime.v1 import StatusRequest, VersionRequest
from crirt.ctl.app import app, call_runtime


@app.command()
def version(ctx: typer.Context) -> None:
    """Print the runtime's name and versions."""
    reply = call_runtime(ctx, lambda stub: stub.version(VersionRequest(version="v1")))
    typer.echo(f"Version:  {reply.version}\nRuntimeName:  {reply.runtime_name}\n"
               f"RuntimeVersion:  {reply.runtime_version}\nRuntimeApiVersion:  {reply.runtime_api_version}")


@app.command()
def info(ctx: typer.Context) -> None:
    """Print the runtime's status, handlers and verbose info as JSON."""
    reply = call_runtime(ctx, lambda stub: stub.status(StatusRequest(verbose=True)))
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
