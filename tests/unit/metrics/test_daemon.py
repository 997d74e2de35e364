"""The /metrics endpoint: served over HTTP from a per-daemon registry, in the format the scraper asks for."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from crirt.metrics.daemon import DaemonMetrics


async def fetch(url: str, accept: str = "") -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url, headers={"Accept": accept}) as response:
        return response.status, response.headers["Content-Type"], await response.text()


def test_two_daemons_serve_their_own_figures_on_free_ports() -> None:
    async def scenario() -> tuple[str, str, str, str]:
        one, two = DaemonMetrics(), DaemonMetrics()
        try:
            one.rpcs.observe("Version", "OK", 0.002)
            url_one, url_two = await one.serve("127.0.0.1:0"), await two.serve("[::1]:0")
            assert url_one.startswith("http://127.0.0.1:") and url_two.startswith("http://[::1]:")
            status, content_type, text_one = await fetch(url_one)
            assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
            _, _, text_two = await fetch(url_two)
            _, open_type, open_text = await fetch(url_one, "application/openmetrics-text; version=1.0.0")
            return text_one, text_two, open_type, open_text
        finally:
            await one.close()
            await two.close()

    text_one, text_two, open_type, open_text = asyncio.run(scenario())
    one = {f.name: f for f in text_string_to_metric_families(text_one)}
    two = {f.name: f for f in text_string_to_metric_families(text_two)}
    calls = [s.value for s in one["crirt_grpc_request_duration_seconds"].samples
             if s.name.endswith("_count") and s.labels == {"method": "Version", "code": "OK"}]
    assert calls == [1]
    assert not two["crirt_grpc_request_duration_seconds"].samples
    collectors = {"process_resident_memory_bytes", "python_info", "python_gc_objects_collected", "crirt_build_info"}
    assert collectors <= set(one)
    assert one["crirt_build_info"].samples[0].labels["version"]
    assert open_type.startswith("application/openmetrics-text")
    assert "crirt_image_pull_bytes" in {f.name for f in openmetrics_families(open_text)}


def test_a_taken_port_is_an_error_and_only_metrics_is_served() -> None:
    async def scenario() -> None:
        first, second = DaemonMetrics(), DaemonMetrics()
        try:
            url = await first.serve("127.0.0.1:0")
            port = url.split(":")[2].split("/")[0]
            with pytest.raises(OSError):
                await second.serve(f"127.0.0.1:{port}")
            status, _, _ = await fetch(url.removesuffix("/metrics") + "/")
            assert status == 404
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())
