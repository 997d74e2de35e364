"""HTTP/2 settings of the gRPC front end that grpclib does not expose."""

from __future__ import annotations

from h2.connection import H2Connection

CLOSED_STREAMS_KEPT = 1024
"""Closed streams each connection remembers (h2's default is 65536)."""


def bound_closed_streams(kept: int = CLOSED_STREAMS_KEPT) -> None:
    """h2 remembers the closed streams of a connection, up to ``MAX_CLOSED_STREAMS``, to answer late frames on
    them. The kubelet keeps one connection for the node's lifetime and opens a stream per call, so with h2's
    default the daemon grows by about 6 MiB over its first hours of polling. Only recent streams get late
    frames; one on a forgotten stream is answered with RST_STREAM."""
    H2Connection.MAX_CLOSED_STREAMS = kept
