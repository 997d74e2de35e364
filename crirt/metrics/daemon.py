"""One daemon's metrics: its own registry with every instrument and collector on it, and the ``/metrics`` endpoint.

The registry is per daemon (never prometheus_client's global one), so several daemons in one process keep apart.
The endpoint is an aiohttp server on the daemon's own loop: a scrape reads the records the loop owns without any
locking, and encoding a few hundred series takes well under a millisecond.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, Info, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

from crirt import __version__
from crirt.config import split_ip_port
from crirt.containers.records import ContainerRecord
from crirt.metrics.instruments import CniMetrics, PullMetrics, RpcMetrics, StreamMetrics
from crirt.metrics.lag import LoopLag
from crirt.metrics.records import RecordsCollector
from crirt.metrics.runtime import RuntimeMetrics
from crirt.sandboxes.records import SandboxRecord
from crirt.shim.registry import ShimRegistry

log = logging.getLogger(__name__)


class DaemonMetrics:
    """Every metric one crirt exports; ``serve`` publishes them over HTTP."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpcs = RpcMetrics(self.registry)
        self.pulls = PullMetrics(self.registry)
        self.cni = CniMetrics(self.registry)
        self.runtime = RuntimeMetrics(self.registry)
        self.streams = StreamMetrics(self.registry)
        self.loop = LoopLag(self.registry)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        Info("crirt_build", "The running crirt's version.", registry=self.registry).info({"version": __version__})
        self._runner: web.AppRunner | None = None

    def count_records(self, pods: Iterable[SandboxRecord], containers: Iterable[ContainerRecord],
                      registry: ShimRegistry) -> None:
        """Export pods and containers by state and handler, read from these records at each scrape."""
        self.registry.register(RecordsCollector(pods, containers, registry))

    async def serve(self, address: str) -> str:
        """Serve ``/metrics`` on ``address`` (``ip:port``; port 0 picks a free one); returns the URL.

        Raises OSError when the address cannot be bound."""
        host, port = split_ip_port(address)
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        runner = web.AppRunner(app, access_log=None)  # a scrape every few seconds is not worth a log line
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}/metrics"
        log.info("serving Prometheus metrics on %s", url)
        return url

    async def _scrape(self, request: web.Request) -> web.Response:
        """The registry in the format the scraper asks for (OpenMetrics or the Prometheus text format)."""
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self.registry), headers={"Content-Type": content_type})

    async def close(self) -> None:
        """Stop serving (if serving) and stop measuring the loop."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.loop.stop()
