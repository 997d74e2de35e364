"""The front end's bound on the closed streams h2 keeps per connection, on an in-memory h2 connection pair."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection

from crirt.api.http2 import CLOSED_STREAMS_KEPT, bound_closed_streams

HEADERS = [(":method", "POST"), (":scheme", "http"), (":authority", "crirt"), (":path", "/x")]


@pytest.fixture
def bounded() -> Iterator[None]:
    default = H2Connection.MAX_CLOSED_STREAMS
    bound_closed_streams()
    yield
    H2Connection.MAX_CLOSED_STREAMS = default


def calls(count: int) -> H2Connection:
    """A server connection after ``count`` complete request/response exchanges on one client connection."""
    client = H2Connection(H2Configuration(client_side=True))
    server = H2Connection(H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    for n in range(count):
        stream = 1 + 2 * n
        client.send_headers(stream, HEADERS, end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(stream, [(":status", "200")], end_stream=True)
        client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    assert server.open_inbound_streams == 0  # (h2 moves streams to its closed ones as it counts the open ones)
    return server


def test_a_long_lived_connection_remembers_a_bounded_number_of_closed_streams(bounded: None) -> None:
    assert len(calls(CLOSED_STREAMS_KEPT + 500)._closed_streams) == CLOSED_STREAMS_KEPT


def test_h2_default_keeps_them_all() -> None:
    assert H2Connection.MAX_CLOSED_STREAMS == 2**16  # what crirt bounds: h2 keeps every one of these calls
    assert len(calls(1500)._closed_streams) == 1500
