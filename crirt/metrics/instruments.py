"""The instruments crirt's components report to: one small object per area (RPCs, pulls, CNI, streaming).

A component is handed only its own object. Each object registers its metrics on the registry it is given; built
without one it keeps them on a private registry, so a component measures the same way in a unit test and two
daemons in one process never share a series.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Seconds; from a cached query (about a millisecond) to a slow RunPodSandbox or StopContainer's grace period."""
CNI_OPERATIONS = ("ADD", "DEL")
STREAM_KINDS = ("exec", "attach", "portforward")
"""The ``kind`` of crirt.streaming.requests' requests."""
PULL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
"""Seconds; from an image already present to a multi-gigabyte one."""


def _own(registry: CollectorRegistry | None) -> CollectorRegistry:
    return CollectorRegistry() if registry is None else registry


@contextlib.contextmanager
def timed(duration: Histogram, failures: Counter, *labels: str) -> Iterator[None]:
    """Observe the block's seconds in ``duration`` (every attempt) and count it in ``failures`` when it raises an
    exception (a cancellation is not the operation failing)."""
    if labels:
        duration, failures = duration.labels(*labels), failures.labels(*labels)
    start = time.perf_counter()
    try:
        yield
    except Exception:
        failures.inc()
        raise
    finally:
        duration.observe(time.perf_counter() - start)


class RpcMetrics:
    """Latency and outcome of every CRI call, by method and gRPC code; also the source of Status' ``rpcMetrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.duration = Histogram("crirt_grpc_request_duration_seconds",
                                  "Seconds a CRI call took, from its request to its response or error.",
                                  ["method", "code"], registry=_own(registry), buckets=LATENCY_BUCKETS)
        self._series: dict[tuple[str, str], Histogram] = {}
        """Each (method, code)'s histogram, kept: looking it up by labels costs more than the observation."""

    def observe(self, method: str, code: str, seconds: float) -> None:
        """Record one finished call of ``method`` that ended with gRPC status ``code`` (``OK``, ``NOT_FOUND``...)."""
        series = self._series.get((method, code))
        if series is None:
            series = self._series[(method, code)] = self.duration.labels(method, code)
        series.observe(seconds)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per method: calls, errors (calls not ending in OK) and total seconds, read from the histogram."""
        methods: dict[str, dict[str, float]] = {}
        for family in self.duration.collect():
            for sample in family.samples:
                entry = methods.setdefault(sample.labels["method"], {"calls": 0, "errors": 0, "seconds_total": 0.0})
                if sample.name.endswith("_count"):
                    entry["calls"] += sample.value
                    if sample.labels["code"] != "OK":
                        entry["errors"] += sample.value
                elif sample.name.endswith("_sum"):
                    entry["seconds_total"] = round(entry["seconds_total"] + sample.value, 6)
        return dict(sorted(methods.items()))


class PullMetrics:
    """Image pulls: bytes fetched from registries, how long pulls take, and how many fail."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = _own(registry)
        self.bytes = Counter("crirt_image_pull_bytes", "Bytes of layers downloaded from registries.",
                             registry=registry)
        self.duration = Histogram("crirt_image_pull_duration_seconds", "Seconds a PullImage took, failed ones too.",
                                  registry=registry, buckets=PULL_BUCKETS)
        self.failures = Counter("crirt_image_pull_failures", "PullImage calls that failed.", registry=registry)

    def received(self, count: int) -> None:
        """Count ``count`` bytes just read from a registry (called as they arrive, so rates follow a long pull)."""
        self.bytes.inc(count)

    def pull(self) -> contextlib.AbstractContextManager[None]:
        """Time one pull and count it as failed if it raises."""
        return timed(self.duration, self.failures)


class CniMetrics:
    """CNI ADD (attach a pod) and DEL (detach it) over the whole plugin chain: latency and failures."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = _own(registry)
        self.duration = Histogram("crirt_cni_operation_duration_seconds",
                                  "Seconds a CNI ADD or DEL of a pod took over the whole plugin chain.",
                                  ["operation"], registry=registry, buckets=LATENCY_BUCKETS)
        self.failures = Counter("crirt_cni_operation_failures", "CNI ADD or DEL calls that failed.", ["operation"],
                                registry=registry)
        for operation in CNI_OPERATIONS:  # a zero from the start, so a failure rate has a series to rise from
            self.failures.labels(operation)

    def operation(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Time one ``ADD`` or ``DEL`` and count it as failed if it raises."""
        return timed(self.duration, self.failures, name)


class StreamMetrics:
    """Streaming sessions (exec, attach, portforward): open now and started in all."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = _own(registry)
        self.active = Gauge("crirt_streaming_sessions_active", "Streaming sessions open now.", ["kind"],
                            registry=registry)
        self.started = Counter("crirt_streaming_sessions", "Streaming sessions started (upgraded connections).",
                               ["kind"], registry=registry)
        for kind in STREAM_KINDS:  # zeros from the start, so dashboards show every kind
            self.active.labels(kind)
            self.started.labels(kind)

    @contextlib.contextmanager
    def session(self, kind: str) -> Iterator[None]:
        """Count a session of ``kind`` as started, and as open while the block runs."""
        self.started.labels(kind).inc()
        active = self.active.labels(kind)
        active.inc()
        try:
            yield
        finally:
            active.dec()
