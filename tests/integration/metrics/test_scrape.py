"""crirt's /metrics scraped over HTTP from a real daemon while a pod, a container, a pull, an exec session and CNI
run through the CRI; and the Grafana dashboard, whose every query must name a metric that scrape exports."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import grpc
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from support.containers import ContainerEnv, container_env
from support.daemon import start_daemon
from support.network import runc_shim_installed
from support.pods import pod_config, remove_pod, run_container

pytestmark = pytest.mark.skipif(not runc_shim_installed(), reason="the runc shim plugin is not installed")

DASHBOARD = Path(__file__).resolve().parents[3] / "contrib" / "grafana" / "crirt.json"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, pb: ModuleType) -> Iterator[tuple[ContainerEnv, str]]:
    """A daemon with a bridge network, a registry serving busybox and metrics on a free port; and its URL."""
    port = free_port()
    config = f'[metrics]\naddress = "127.0.0.1:{port}"\n'
    with container_env(tmp_path_factory.mktemp("metrics"), pb, config) as made:
        yield made, f"http://127.0.0.1:{port}/metrics"


def scrape(url: str) -> dict[str, Metric]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return {family.name: family for family in text_string_to_metric_families(response.read().decode())}


def value(families: dict[str, Metric], family: str, sample: str = "", **labels: str) -> float:
    """The value of the one sample of ``family`` named ``sample`` (default: the family's name) with ``labels``."""
    found = [s.value for s in families[family].samples
             if s.name == (sample or family) and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, f"{sample or family} {labels}: {found}"
    return found[0]


async def exec_echo(url: str) -> bytes:
    """Run the exec a URL stands for over the Kubernetes WebSocket protocol; what it printed on stdout."""
    out = b""
    async with aiohttp.ClientSession() as session, session.ws_connect(url, protocols=("v4.channel.k8s.io",)) as ws:
        async for message in ws:
            if message.type == aiohttp.WSMsgType.BINARY and message.data[:1] == b"\x01":
                out += message.data[1:]
    return out


def test_figures_move_with_the_work_done_through_the_cri(env: tuple[ContainerEnv, str], tmp_path: Path) -> None:
    cri, url = env
    pb, runtime = cri.pb, cri.runtime
    before = scrape(url)
    assert value(before, "crirt_pods", state="ready", handler="runc") == 0
    assert value(before, "crirt_image_pull_bytes", "crirt_image_pull_bytes_total") == 0
    assert value(before, "process_resident_memory_bytes") > 0
    assert value(before, "crirt_event_loop_lag_seconds", "crirt_event_loop_lag_seconds_count") > 0

    cri.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=cri.image)), timeout=60)
    sandbox_id = runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config(pb, "metrics", tmp_path)),
                                       timeout=60).pod_sandbox_id
    try:
        container_id = run_container(runtime, pb, sandbox_id, cri.image, "sleeper", "exec sleep 1000")
        exec_url = runtime.Exec(pb.ExecRequest(container_id=container_id, cmd=["echo", "streamed"], stdout=True),
                                timeout=10).url
        assert asyncio.run(exec_echo(exec_url)) == b"streamed\n"
        with pytest.raises(grpc.RpcError) as missing:
            runtime.ContainerStatus(pb.ContainerStatusRequest(container_id="no-such-container"), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        during = scrape(url)
        status = runtime.Status(pb.StatusRequest(verbose=True), timeout=10)
    finally:
        remove_pod(runtime, pb, sandbox_id)
    after = scrape(url)

    rpc = "crirt_grpc_request_duration_seconds"
    assert value(during, rpc, f"{rpc}_count", method="RunPodSandbox", code="OK") == 1
    assert value(during, rpc, f"{rpc}_count", method="PullImage", code="OK") == 1
    assert value(during, rpc, f"{rpc}_count", method="ContainerStatus", code="NOT_FOUND") == 1
    assert value(during, rpc, f"{rpc}_bucket", method="RunPodSandbox", code="OK", le="+Inf") == 1
    summary = json.loads(status.info["rpcMetrics"])  # Status reads the same histogram
    assert summary["RunPodSandbox"]["calls"] == 1 and summary["ContainerStatus"]["errors"] == 1
    assert summary["RunPodSandbox"]["seconds_total"] == pytest.approx(
        value(during, rpc, f"{rpc}_sum", method="RunPodSandbox", code="OK"), abs=1e-5)

    assert value(during, "crirt_pods", state="ready", handler="runc") == 1
    assert value(during, "crirt_containers", state="running", handler="runc") == 1
    assert value(after, "crirt_pods", state="ready", handler="runc") == 0
    assert value(after, "crirt_containers", state="running", handler="runc") == 0

    assert value(during, "crirt_image_pull_bytes", "crirt_image_pull_bytes_total") > 100_000  # busybox's layer
    assert value(during, "crirt_image_pull_duration_seconds", "crirt_image_pull_duration_seconds_count") == 1
    assert value(during, "crirt_image_pull_failures", "crirt_image_pull_failures_total") == 0

    cni = "crirt_cni_operation_duration_seconds"
    assert value(during, cni, f"{cni}_count", operation="ADD") == 1
    assert value(after, cni, f"{cni}_count", operation="DEL") == 1
    assert value(after, "crirt_cni_operation_failures", "crirt_cni_operation_failures_total", operation="ADD") == 0

    calls = "crirt_runtime_call_duration_seconds"
    assert value(during, calls, f"{calls}_count", handler="runc", operation="create") >= 1
    assert value(during, calls, f"{calls}_count", handler="runc", operation="start") >= 1
    assert value(during, calls, f"{calls}_count", handler="runc", operation="exec_interactive") == 1
    assert value(after, calls, f"{calls}_count", handler="runc", operation="kill") >= 1

    assert value(during, "crirt_streaming_sessions", "crirt_streaming_sessions_total", kind="exec") == 1
    assert value(during, "crirt_streaming_sessions_active", kind="exec") == 0  # the exec ended
    assert value(after, "crirt_event_loop_lag_seconds", "crirt_event_loop_lag_seconds_count") > \
        value(before, "crirt_event_loop_lag_seconds", "crirt_event_loop_lag_seconds_count")


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords, label names
    (inside ``{...}`` or ``by (...)``), strings, durations or Grafana variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)  # label matchers, range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    names = set()
    for match in re.finditer(r"(?<![$\w.])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        if match.group(2) is None and match.group(1).lower() not in PROMQL_WORDS:
            names.add(match.group(1))
    return names


def dashboard_queries(node: Any) -> Iterator[str]:
    """Every PromQL expression of the dashboard: panel targets and query variables."""
    if isinstance(node, dict):
        for key, child in node.items():
            if key in ("expr", "definition") and isinstance(child, str):
                yield re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", child)
            else:
                yield from dashboard_queries(child)
    elif isinstance(node, list):
        for child in node:
            yield from dashboard_queries(child)


def exported_names(families: dict[str, Metric]) -> set[str]:
    """Every series name a scrape offers: sample names, plus each family's own name with its type's suffixes (a
    labelled family may have no sample yet)."""
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "summary": ("_sum", "_count")}
    names = {sample.name for family in families.values() for sample in family.samples}
    for family in families.values():
        names |= {family.name, *(family.name + suffix for suffix in suffixes.get(family.type, ()))}
    return names


def test_metric_names_finds_only_metric_names() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, method) (rate(a_bucket{instance=~"$instance", code!="OK"}'
            '[$__rate_interval]))) / ignoring(x) b_total > 0 and on(y) c')
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def test_every_dashboard_query_names_an_exported_metric(env: tuple[ContainerEnv, str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = list(dashboard_queries(dashboard))
    used = set().union(*(metric_names(q) for q in queries))
    unknown = used - exported_names(scrape(env[1]))
    assert not unknown, f"{DASHBOARD.name} queries metrics crirt does not export: {sorted(unknown)}"
    required = {"crirt_grpc_request_duration_seconds_bucket", "crirt_grpc_request_duration_seconds_count",
                "crirt_pods", "crirt_containers", "crirt_image_pull_bytes_total",
                "crirt_cni_operation_duration_seconds_bucket", "crirt_runtime_call_duration_seconds_bucket",
                "crirt_event_loop_lag_seconds_bucket"}
    assert required <= used, f"the dashboard shows none of {sorted(required - used)}"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p["targets"] and p["datasource"]["uid"] == "${datasource}" for p in panels)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_every_exported_crirt_metric_is_documented(env: tuple[ContainerEnv, str]) -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "metrics.md").read_text()
    exported = {f.name + ("_total" if f.type == "counter" else "") for f in scrape(env[1]).values()
                if f.name.startswith("crirt_") and not f.name.endswith("_created")}
    assert len(exported) >= 13
    assert not {name for name in exported if f"`{name}`" not in doc}, "undocumented metrics in docs/metrics.md"


def test_a_metrics_port_in_use_stops_the_daemon_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(AssertionError, match=f"cannot serve metrics on {address}: .*address already in use"):
            start_daemon(tmp_path / "crirt", f'[metrics]\naddress = "{address}"\n')
    mounts = [line.split(" ")[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    assert not [m for m in mounts if m.startswith(f"{tmp_path}/")]  # a failed start undoes what it set up
