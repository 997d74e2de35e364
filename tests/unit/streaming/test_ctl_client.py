"""The pure parts of ``crirt ctl``'s streaming client: reading the final status, parsing port specs."""

from __future__ import annotations

import pytest
import typer

from crirt.ctl.streaming import exit_status, parse_port_spec
from crirt.streaming.channels import status_message


def test_exit_status_reads_what_the_server_sends() -> None:
    assert exit_status(b"") == (0, "")
    assert exit_status(status_message("v5.channel.k8s.io", exit_code=0)) == (0, "")
    assert exit_status(status_message("v5.channel.k8s.io", exit_code=130, command=["sh"])) == (130, "")
    code, message = exit_status(status_message("v4.channel.k8s.io", error="container c is not running"))
    assert code == 1 and "container c is not running" in message
    assert exit_status(b"plain text error") == (1, "plain text error")


def test_port_specs() -> None:
    assert parse_port_spec("8080") == (8080, 8080)
    assert parse_port_spec("0:80") == (0, 80)
    assert parse_port_spec("9000:80") == (9000, 80)
    for bad in ("x", "1:2:3", "80:0", "70000", "-1:80"):
        with pytest.raises(typer.Exit):
            parse_port_spec(bad)
