"""Configuration: defaults, the TOML file, environment overrides, flags, and error lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from crirt.config import Config, ConfigError, RuntimeHandlerConfig, load_config


def test_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("crirt.config.DEFAULT_CONFIG_FILE", tmp_path / "absent.toml")
    config = load_config(None)
    assert config.address == "unix:///run/crirt/crirt.sock"
    assert config.socket_path == Path("/run/crirt/crirt.sock")
    assert (config.root, config.state) == (Path("/var/lib/crirt"), Path("/run/crirt"))
    assert config.default_runtime == "runc" and config.runtimes["runc"].shim == "runc"
    assert config.grpc.max_recv_message_size == config.grpc.max_send_message_size == 16 * 1024 * 1024


def test_precedence_flags_over_env_over_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('log_level = "error"\ncgroup_driver = "systemd"\nroot = "/from/file"\n'
                    '[runtimes.runsc]\nshim = "gvisor"\noptions = { platform = "systrap" }\n')
    monkeypatch.setenv("CRIRT_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("CRIRT_ROOT", "/from/env")
    config = load_config(file, {"root": Path("/from/flag"), "state": None})
    assert config.log_level == "warning"  # env beats file
    assert config.cgroup_driver == "systemd"  # file beats default
    assert config.root == Path("/from/flag")  # flag beats env
    assert config.state == Path("/run/crirt")  # an unset flag changes nothing
    assert config.runtimes["runsc"].options == {"platform": "systrap"}


def test_every_bad_key_gets_its_own_line(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('address = "tcp://0.0.0.0:1"\nevent_queue_size = 0\ntypo = true\n[runtimes.x]\nshim = ""\n')
    with pytest.raises(ConfigError) as info:
        load_config(file)
    keys = sorted(line.split(":", 1)[0] for line in info.value.lines)
    assert keys == ["address", "event_queue_size", "runtimes.x.shim", "typo"]


def test_default_runtime_must_be_configured(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('default_runtime = "kata"\n')
    with pytest.raises(ConfigError, match="default_runtime: 'kata' is not a key of \\[runtimes\\]"):
        load_config(file)


GVISOR = {"runsc": RuntimeHandlerConfig(shim="gvisor")}


def _offer_gvisor() -> dict[str, RuntimeHandlerConfig]:
    return GVISOR


def _no_offers_expected() -> dict[str, RuntimeHandlerConfig]:
    raise AssertionError("the default handlers were looked for although [runtimes] is configured")


def test_without_a_runtimes_table_the_default_handlers_are_served(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('default_runtime = "runsc"\n')  # may name a default handler
    config = load_config(file, default_runtimes=_offer_gvisor)
    assert config.runtimes == {"runc": RuntimeHandlerConfig(shim="runc"), **GVISOR}  # built-in runc kept
    assert config.default_runtime == "runsc"


def test_a_default_handler_may_replace_the_built_in_runc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("crirt.config.DEFAULT_CONFIG_FILE", tmp_path / "absent.toml")
    offered = {"runc": RuntimeHandlerConfig(shim="runc", options={"binary": "/usr/sbin/runc"})}
    config = load_config(None, default_runtimes=lambda: offered)
    assert config.runtimes == offered


def test_a_runtimes_table_is_served_as_written(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('[runtimes.fast]\nshim = "runc"\n')
    config = load_config(file, default_runtimes=_no_offers_expected)
    assert sorted(config.runtimes) == ["fast", "runc"]  # with the built-in runc, as ever
    monkeypatch.setattr("crirt.config.DEFAULT_CONFIG_FILE", tmp_path / "absent.toml")
    monkeypatch.setenv("CRIRT_RUNTIMES", '{"env": {"shim": "kata"}}')  # a table from the environment counts too
    assert sorted(load_config(None, default_runtimes=_no_offers_expected).runtimes) == ["env", "runc"]


def test_default_runtime_must_be_a_served_default_handler(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('default_runtime = "kata"\n')
    with pytest.raises(ConfigError, match=r"'kata' is not a key of \[runtimes\] \(known: runc, runsc\)"):
        load_config(file, default_runtimes=_offer_gvisor)


def test_bad_flag_values_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="address"):
        load_config(None, {"address": "unix://relative.sock"})


def test_not_toml(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(file)


def test_config_model_round_trips_through_json() -> None:
    config = Config()
    assert Config.model_validate_json(config.model_dump_json()) == config


def test_metrics_address_is_off_by_default_and_must_be_ip_port(tmp_path: Path) -> None:
    assert Config().metrics.address == ""
    good = tmp_path / "good.toml"
    good.write_text('[metrics]\naddress = "[::1]:9338"\n')
    assert load_config(good).metrics.address == "[::1]:9338"
    for bad, problem in [("localhost:9338", "does not appear to be an IPv4 or IPv6 address"),
                         ("127.0.0.1", "must be ip:port"), ("127.0.0.1:70000", "must be ip:port")]:
        path = tmp_path / "bad.toml"
        path.write_text(f'[metrics]\naddress = "{bad}"\n')
        with pytest.raises(ConfigError, match=f"metrics.address: .*{problem}"):
            load_config(path)
