"""The crirt daemon: wires config, store, bus, shim registry and front end, and serves on a unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.health.v1 import health_pb2
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server

from crirt import __version__
from crirt._gen.google_proto_descriptor_pool import default_google_proto_descriptor_pool
from crirt.api.codec import PassThroughCodec
from crirt.api.encoders import hot_path_encoders
from crirt.api.frontend import Frontend, Limits
from crirt.api.http2 import bound_closed_streams
from crirt.bus import Bus, durable, logging_middleware
from crirt.cdi.registry import CdiRegistry
from crirt.config import Config
from crirt.containers.metrics import MetricsService
from crirt.containers.queries import ContainerQueries
from crirt.containers.service import ContainerService
from crirt.containers.stats import StatsService
from crirt.images.service import ImageService
from crirt.metrics.daemon import DaemonMetrics
from crirt.reload import Reloader
from crirt.sandboxes.queries import SandboxQueries
from crirt.sandboxes.service import SandboxService
from crirt.sdnotify import Notifier
from crirt.shim.registry import HandlerSpec, PluginConflict, ShimRegistry
from crirt.stalls import StallWatch
from crirt.status import RuntimeInfo
from crirt.store import Store
from crirt.streaming.service import StreamingService

log = logging.getLogger(__name__)

SHUTDOWN_WAIT = 30.0
"""Seconds crirt waits at shutdown for pod teardowns still running whose callers have gone."""


class StartupError(Exception):
    """crirt cannot start; the message says why."""


@dataclass
class App:
    """Everything a running crirt holds."""

    config: Config
    store: Store
    bus: Bus
    registry: ShimRegistry
    metrics: DaemonMetrics
    frontend: Frontend
    sandboxes: SandboxService
    images: ImageService
    containers: ContainerService
    streaming: StreamingService
    stalls: StallWatch | None


def build_app(config: Config) -> App:
    """Load the shim plugins, open the store and register every implemented command's handler."""
    metrics = DaemonMetrics()
    try:
        registry = ShimRegistry.load(
            [HandlerSpec(name, rt.shim, rt.options) for name, rt in config.runtimes.items()],
            default=config.default_runtime, root=config.root, state=config.state, calls=metrics.runtime,
        )
    except PluginConflict as exc:
        raise StartupError(str(exc)) from None
    store = Store(config.root / "crirt.db")
    bus = Bus(subscriber_queue_size=config.event_queue_size, middleware=[logging_middleware, durable(store)])
    stalls = StallWatch(config.debug.loop_stall_ms / 1000) if config.debug.loop_stall_ms else None
    cdi = CdiRegistry(config.cdi)
    RuntimeInfo(config, registry, metrics.rpcs, store, stalls, cdi).register(bus)
    ContainerQueries(store).register(bus)
    SandboxQueries(store).register(bus)
    sandboxes = SandboxService(config, store, bus, registry, metrics.cni)
    sandboxes.register(bus)
    images = ImageService(config, store, metrics.pulls)
    images.register(bus)
    containers = ContainerService(config, store, bus, registry, sandboxes, images, cdi)
    containers.register(bus)
    stats = StatsService(containers, registry, sandboxes, images.snapshots, config.stats)
    stats.register(bus)
    MetricsService(stats).register(bus)
    streaming = StreamingService(config.streaming, containers, sandboxes, metrics.streams)
    streaming.register(bus)
    limits = Limits(max_recv=config.grpc.max_recv_message_size, max_send=config.grpc.max_send_message_size)
    frontend = Frontend(bus, limits, hot_path_encoders(), metrics.rpcs)
    metrics.count_records(sandboxes.records, containers.records, registry)
    return App(config, store, bus, registry, metrics, frontend, sandboxes, images, containers, streaming, stalls)


async def _socket_is_live(path: Path) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _prepare_socket(path: Path) -> None:
    """Create the socket's directory; replace a stale socket; refuse when a live server answers on it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if await _socket_is_live(path):
            raise StartupError(f"another server is already answering on {path}; stop it or choose another --address")
        if not path.is_socket():
            raise StartupError(f"{path} exists and is not a socket; refusing to replace it")
        log.info("removing stale socket %s", path)
        path.unlink()


def _services(app: App, serving: ServiceStatus) -> list[object]:
    cri = app.frontend.services()
    health = Health({service: [serving] for service in cri})
    pool = default_google_proto_descriptor_pool
    with contextlib.suppress(TypeError):  # already added by an earlier App in this process
        pool.AddSerializedFile(health_pb2.DESCRIPTOR.serialized_pb)
    return ServerReflection.extend([*cri, health], pool=pool)


async def serve(config: Config, setup: Callable[[App], None] | None = None,
                reread: Callable[[], Config] | None = None) -> None:
    """Run crirt until SIGTERM or SIGINT, then drain in-flight calls for the grace period and stop.

    ``setup`` may adjust the app before it serves (used by tests to add handlers); ``reread`` reads the
    configuration again, on each SIGHUP (``crirt.reload``)."""
    notifier = Notifier.from_environment()  # before any child process could inherit $NOTIFY_SOCKET
    config.root.mkdir(parents=True, exist_ok=True)
    config.state.mkdir(parents=True, exist_ok=True)
    socket_path = config.socket_path
    await _prepare_socket(socket_path)
    app = build_app(config)
    if setup is not None:
        setup(app)
    loop = asyncio.get_running_loop()
    server: Server | None = None
    reloader = None
    try:  # whatever fails from here on, what was started is stopped again (mounts, tasks, listeners)
        server, serving = await _start(app)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if reread is not None:
            reloader = Reloader(app.config, app.sandboxes, app.images, app.registry, reread)
            loop.add_signal_handler(signal.SIGHUP, reloader.request)
        log.info("crirt %s serving CRI on unix://%s (root %s, state %s)", __version__, socket_path, config.root,
                 config.state)
        await notifier.send("READY=1", f"STATUS=serving CRI on unix://{socket_path}")
        await stop.wait()
        await notifier.send("STOPPING=1")
        serving.set(False)
        log.info("shutting down: draining %d in-flight call(s) for up to %.1fs", app.frontend.in_flight,
                 config.shutdown_grace_period)
        if not await app.frontend.drain(config.shutdown_grace_period):
            log.warning("grace period over; cancelling %d call(s) still in flight", app.frontend.in_flight)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if reloader is not None:
            await reloader.close()
        if server is not None:
            server.close()
            await server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                socket_path.unlink()
        await _stop(app)
        log.info("crirt stopped")


async def _start(app: App) -> tuple[Server, ServiceStatus]:
    """Start every part of a built app and serve the CRI socket; the server and its health status."""
    config = app.config
    if app.stalls is not None:
        app.stalls.start(asyncio.get_running_loop())
    app.metrics.loop.start()
    await app.registry.probe_features()
    await app.sandboxes.start()  # default network, then finish what a crash left, before serving
    await app.containers.resume()
    await asyncio.to_thread(app.containers.cdi.refresh)  # so Status counts the devices before any is asked for
    try:
        await app.streaming.start()  # Exec/Attach/PortForward hand out its URLs from the first call on
    except OSError as exc:
        raise StartupError(f"cannot start the streaming server on {config.streaming.address} port "
                           f"{config.streaming.port}: {exc.strerror or exc}") from None
    if config.metrics.address:
        try:
            await app.metrics.serve(config.metrics.address)
        except OSError as exc:
            raise StartupError(f"cannot serve metrics on {config.metrics.address}: {exc.strerror or exc}") from None
    serving = ServiceStatus()
    serving.set(True)
    bound_closed_streams()
    server = Server(_services(app, serving), codec=PassThroughCodec())
    old_umask = os.umask(0o117)  # the socket is born 0660, never briefly world-accessible
    try:
        await server.start(path=str(config.socket_path))
    finally:
        os.umask(old_umask)
    os.chown(config.socket_path, 0, 0)
    os.chmod(config.socket_path, 0o660)
    return server, serving


async def _stop(app: App) -> None:
    """Stop every part of the app, also one that started only in part."""
    await app.metrics.close()
    await app.streaming.close()  # ends every session: exec processes are killed, attaches detached
    await app.bus.finish(SHUTDOWN_WAIT)  # pod teardowns whose callers went away
    await app.containers.close()
    await app.sandboxes.close()
    await app.registry.close()
    app.store.close()
    if app.stalls is not None:
        app.stalls.stop()


def run(config: Config, setup: Callable[[App], None] | None = None,
        reread: Callable[[], Config] | None = None) -> None:
    """Serve on uvloop when it is installed, else on the default asyncio loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config, setup, reread))
    else:
        uvloop.run(serve(config, setup, reread))
