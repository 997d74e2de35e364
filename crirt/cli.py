"""The ``crirt`` command: ``serve``, ``config``, ``ctl`` and ``--version``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from crirt import __version__, logs
from crirt.config import Config, ConfigError, RuntimeHandlerConfig, load_config
from crirt.ctl import app as ctl_app
from crirt.shim.defaults import DefaultHandlers, find_default_handlers

log = logging.getLogger(__name__)

app = typer.Typer(help="crirt: a Kubernetes CRI container runtime.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.add_typer(ctl_app, name="ctl")

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file [default: "
                                                   "/etc/crirt/config.toml if present]")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"crirt {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """crirt: a Kubernetes CRI container runtime."""


def _runtimes_of(defaults: DefaultHandlers) -> dict[str, RuntimeHandlerConfig]:
    """The ``[runtimes]`` table of the default handlers found."""
    return {name: RuntimeHandlerConfig(shim=spec.plugin, options=dict(spec.options))
            for name, spec in defaults.enabled.items()}


def _load(config: Path | None, **overrides: object) -> tuple[Config, DefaultHandlers | None]:
    """The effective configuration, and the default handlers looked for when it has no ``[runtimes]`` table
    (``None`` otherwise), whose left-out lines the caller reports."""
    looked: list[DefaultHandlers] = []

    def default_runtimes() -> dict[str, RuntimeHandlerConfig]:
        looked.append(find_default_handlers())
        return _runtimes_of(looked[0])

    try:
        return load_config(config, overrides, default_runtimes), (looked[0] if looked else None)
    except ConfigError as exc:
        for line in exc.lines:
            typer.echo(f"crirt: config error: {line}", err=True)
        for line in looked[0].left_out if looked else []:  # the error is default_runtime's: say what is missing
            typer.echo(f"crirt: {line}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOption = None,
    address: Annotated[str | None, typer.Option(help="unix:///path of the CRI socket")] = None,
    root: Annotated[Path | None, typer.Option(help="persistent state directory")] = None,
    state: Annotated[Path | None, typer.Option(help="runtime state directory (tmpfs)")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error")] = None,
) -> None:
    """Serve the CRI on a unix socket until SIGTERM or SIGINT."""
    from crirt.server import StartupError, run

    overrides = {"address": address, "root": root, "state": state, "log_level": log_level}
    cfg, defaults = _load(config, **overrides)
    logs.configure(cfg.log_level, cfg.log_format)
    if defaults is not None:
        log.info("no [runtimes] in the configuration; serving the default runtime handlers %s",
                 ", ".join(map(repr, cfg.runtimes)))
        for line in defaults.left_out:
            log.warning("%s", line)
    try:
        run(cfg, reread=lambda: load_config(config, overrides, lambda: _runtimes_of(find_default_handlers())))
    except StartupError as exc:
        typer.echo(f"crirt: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command("config")
def show_config(config: ConfigOption = None) -> None:
    """Print the effective configuration (file, environment and defaults merged) as JSON; on stderr, the
    default runtime handlers left out and why."""
    cfg, defaults = _load(config)
    typer.echo(cfg.model_dump_json(indent=2))
    for line in defaults.left_out if defaults is not None else []:
        typer.echo(f"crirt: {line}", err=True)

