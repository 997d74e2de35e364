"""Port-forward end to end: busybox httpd in the pod's network namespace, reached through the streaming server."""

from __future__ import annotations

import time

import grpc
import pytest

from .conftest import StreamEnv, needs_clients, node

pytestmark = needs_clients

GET = "GET / HTTP/1.0\r\nHost: pod\r\n\r\n"


def serve(port: int, body: str) -> str:
    """A script serving ``body`` at / on ``port`` (on every address of the pod, loopback included)."""
    return (f"mkdir -p /tmp/www{port} && echo {body} > /tmp/www{port}/index.html && "
            f"exec /bin/busybox httpd -f -p {port} -h /tmp/www{port}")


@pytest.fixture(scope="module")
def servers(env: StreamEnv) -> dict[int, str]:
    """Two HTTP servers in the pod, one per port."""
    ports = {8080: "hello-from-8080", 8081: "hello-from-8081"}
    for port, body in ports.items():
        env.container(serve(port, body))
    time.sleep(1)  # let httpd bind
    return ports


def test_spdy_port_forward_to_two_ports_and_several_connections(env: StreamEnv, servers: dict[int, str]) -> None:
    forwards = [{"port": port, "send": GET} for port in (8080, 8081, 8080, 8081, 8080)]
    result = node("spdy", env.port_forward_url(), {"protocols": ["portforward.k8s.io"], "forward": forwards})
    assert result["protocol"] == "portforward.k8s.io"
    for forward in result["results"]:
        assert forward["data"].startswith("HTTP/1.") and " 200 " in forward["data"].splitlines()[0], forward
        assert forward["data"].rstrip().endswith(servers[forward["port"]])
        assert forward["error"] == ""


def test_spdy_port_forward_errors_reach_the_error_stream(env: StreamEnv, servers: dict[int, str]) -> None:
    result = node("spdy", env.port_forward_url([8080]),
                  {"protocols": ["portforward.k8s.io"],
                   "forward": [{"port": 9999, "send": GET}, {"port": 8080, "send": GET}]})
    refused, served = result["results"]
    assert refused["data"] == "" and "port 9999 was not requested" in refused["error"]
    assert served["data"].rstrip().endswith("hello-from-8080")
    result = node("spdy", env.port_forward_url(), {"protocols": ["portforward.k8s.io"],
                                                   "forward": [{"port": 9999, "send": GET}]})
    assert "error forwarding port 9999" in result["results"][0]["error"]


def test_websocket_port_forward(env: StreamEnv, servers: dict[int, str]) -> None:
    url = env.port_forward_url() + "?port=8081"
    result = node("ws", url, {"protocols": ["v4.channel.k8s.io"], "forward": True, "send": [GET]})
    assert result["firsts"][:2] == [{"channel": 0, "length": 2, "hex": "911f"},
                                    {"channel": 1, "length": 2, "hex": "911f"}]  # 8081, little-endian
    assert result["channels"]["0"].rstrip().endswith("hello-from-8081")
    assert result["closeCode"] == 1000


def test_port_forward_requests_are_validated(env: StreamEnv) -> None:
    pb = env.pb
    with pytest.raises(grpc.RpcError) as caught:
        env.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id="no-such-pod"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        env.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=env.pod, port=[70000]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
