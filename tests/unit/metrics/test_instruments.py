"""The per-area instruments: what they record, what counts as a failure, and Status' summary of the RPC histogram."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from crirt.metrics.instruments import CniMetrics, PullMetrics, RpcMetrics, StreamMetrics


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_rpc_summary_is_read_from_the_histogram() -> None:
    registry = CollectorRegistry()
    rpcs = RpcMetrics(registry)
    rpcs.observe("RunPodSandbox", "OK", 0.5)
    rpcs.observe("RunPodSandbox", "OK", 0.25)
    rpcs.observe("RunPodSandbox", "NOT_FOUND", 0.125)
    rpcs.observe("Version", "OK", 0.001)
    assert rpcs.summary() == {"RunPodSandbox": {"calls": 3, "errors": 1, "seconds_total": 0.875},
                              "Version": {"calls": 1, "errors": 0, "seconds_total": 0.001}}
    assert value(registry, "crirt_grpc_request_duration_seconds_count", method="RunPodSandbox", code="OK") == 2
    assert value(registry, "crirt_grpc_request_duration_seconds_bucket", method="RunPodSandbox", code="OK",
                 le="0.25") == 1


def test_a_failed_operation_is_timed_and_counted_but_a_cancelled_one_is_not_a_failure() -> None:
    registry = CollectorRegistry()
    cni = CniMetrics(registry)
    assert value(registry, "crirt_cni_operation_failures_total", operation="DEL") == 0  # there before any call
    with cni.operation("ADD"):
        pass
    with pytest.raises(RuntimeError), cni.operation("ADD"):
        raise RuntimeError("plugin failed")
    with pytest.raises(asyncio.CancelledError), cni.operation("DEL"):
        raise asyncio.CancelledError
    assert value(registry, "crirt_cni_operation_duration_seconds_count", operation="ADD") == 2
    assert value(registry, "crirt_cni_operation_failures_total", operation="ADD") == 1
    assert value(registry, "crirt_cni_operation_duration_seconds_count", operation="DEL") == 1
    assert value(registry, "crirt_cni_operation_failures_total", operation="DEL") == 0


def test_pull_bytes_add_up_and_a_failed_pull_counts() -> None:
    registry = CollectorRegistry()
    pulls = PullMetrics(registry)
    with pulls.pull():
        pulls.received(1000)
        pulls.received(24)
    with pytest.raises(LookupError), pulls.pull():
        raise LookupError("manifest unknown")
    assert value(registry, "crirt_image_pull_bytes_total") == 1024
    assert value(registry, "crirt_image_pull_duration_seconds_count") == 2
    assert value(registry, "crirt_image_pull_failures_total") == 1


def test_streaming_sessions_are_open_only_while_they_run() -> None:
    registry = CollectorRegistry()
    streams = StreamMetrics(registry)
    assert value(registry, "crirt_streaming_sessions_total", kind="portforward") == 0
    with streams.session("exec"):
        assert value(registry, "crirt_streaming_sessions_active", kind="exec") == 1
        with pytest.raises(ConnectionError), streams.session("exec"):
            assert value(registry, "crirt_streaming_sessions_active", kind="exec") == 2
            raise ConnectionError("client went away")
    assert value(registry, "crirt_streaming_sessions_active", kind="exec") == 0
    assert value(registry, "crirt_streaming_sessions_total", kind="exec") == 2


def test_instruments_built_without_a_registry_keep_their_own() -> None:
    one, two = RpcMetrics(), RpcMetrics()  # the same metric names twice: no "Duplicated timeseries" error
    one.observe("Version", "OK", 0.1)
    assert two.summary() == {}
