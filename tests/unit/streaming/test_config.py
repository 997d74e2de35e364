"""The ``[streaming]`` options: defaults, overrides and the errors a bad value gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from crirt.config import ConfigError, load_config


def test_streaming_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("[streaming]\naddress = \"::1\"\nidle_timeout = 60\n")
    monkeypatch.setenv("CRIRT_STREAMING__PORT", "10010")
    streaming = load_config(file).streaming
    assert (streaming.address, streaming.port, streaming.idle_timeout) == ("::1", 10010, 60.0)
    assert (streaming.stream_creation_timeout, streaming.token_ttl, streaming.max_tokens) == (30.0, 60.0, 1000)
    assert streaming.tls_cert_file is None


@pytest.mark.parametrize(("table", "problem"), [
    ('address = "localhost"', "streaming.address"),
    ("port = 70000", "streaming.port"),
    ('tls_cert_file = "/etc/crirt/cert.pem"', "must be set together"),
    ("token_ttl = 0", "streaming.token_ttl"),
    ("bogus = 1", "streaming.bogus: unknown option"),
])
def test_bad_streaming_options(tmp_path: Path, table: str, problem: str) -> None:
    file = tmp_path / "c.toml"
    file.write_text(f"[streaming]\n{table}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    assert problem in str(caught.value)
