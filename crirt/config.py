"""crirt's configuration: one TOML file, ``CRIRT_*`` environment overrides, embedded defaults.

Precedence, highest first: command-line flags, environment (``CRIRT_LOG_LEVEL``, nested keys with ``__`` as in
``CRIRT_CNI__CONF_DIR``), the TOML file, the defaults below. A missing file means "run on the defaults".
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from crirt.images.config import ImagesConfig, RegistryConfig

DEFAULT_CONFIG_FILE = Path("/etc/crirt/config.toml")
MIB = 1024 * 1024


class ConfigError(Exception):
    """The configuration is invalid; ``lines`` holds one message per bad key."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RuntimeHandlerConfig(_Section):
    """One RuntimeClass handler: which shim plugin serves it and with which plugin options."""

    shim: str = Field(min_length=1, description="name of the shim plugin's entry point (group crirt.shims)")
    options: dict[str, Any] = Field(default_factory=dict, description="passed to the plugin as they are")


class CniConfig(_Section):
    """Where CNI network configs and plugin binaries live, and the default network crirt may write."""

    conf_dir: Path = Path("/etc/cni/net.d")
    bin_dirs: list[Path] = Field(default_factory=lambda: [Path("/usr/lib/cni"), Path("/opt/cni/bin")])
    plugin_timeout: float = Field(60.0, gt=0, description="seconds one CNI plugin call may take before it is killed")
    default_network: bool = Field(True, description="write a bridge network when conf_dir holds none at start")
    default_network_name: str = Field("crirt", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
    default_bridge: str = Field("crirt0", pattern=r"^[A-Za-z0-9_.\-]{1,15}$", description="Linux interface name")
    default_subnets: list[str] = Field(default_factory=lambda: ["10.88.0.0/16"], min_length=1, max_length=2)

    @field_validator("default_subnets")
    @classmethod
    def _subnets(cls, value: list[str]) -> list[str]:
        networks = [ipaddress.ip_network(s, strict=True) for s in value]  # ValueError names the bad one
        if len({n.version for n in networks}) != len(networks):
            raise ValueError("at most one IPv4 and one IPv6 subnet")
        return [str(n) for n in networks]


class SandboxesConfig(_Section):
    """How pod sandboxes are set up and torn down."""

    shm_size: int = Field(64 * MIB, ge=4096, description="bytes of each pod's /dev/shm tmpfs")
    infra_binary: Path = Field(Path("/usr/bin/catatonit"), description="static init run as pid: POD infra")


class StatsConfig(_Section):
    """How container and pod stats are collected."""

    collect_interval: float = Field(0.5, ge=0, description="seconds a stats sample is reused for")
    max_concurrency: int = Field(8, ge=1, description="containers sampled at once")
    fs_usage_interval: float = Field(10.0, ge=0, description="seconds filesystem usage (a tree walk) is reused")


class DebugConfig(_Section):
    """Diagnostics that cost something and are off by default."""

    loop_stall_ms: int = Field(0, ge=0, description="log event-loop stalls longer than this (0: off)")


class CdiConfig(_Section):
    """Container Device Interface: the spec files that describe the devices containers may ask for."""

    enabled: bool = Field(True, description="apply the CDI devices a container asks for")
    spec_dirs: list[Path] = Field(default_factory=lambda: [Path("/etc/cdi"), Path("/var/run/cdi")],
                                  description="spec directories, lowest priority first")


class GrpcConfig(_Section):
    """Limits of the gRPC front end (the kubelet's own limit is 16 MiB each way)."""

    max_recv_message_size: int = Field(16 * MIB, ge=1024)
    max_send_message_size: int = Field(16 * MIB, ge=1024)


class StreamingConfig(_Section):
    """The streaming server behind Exec, Attach and PortForward URLs."""

    address: str = Field("127.0.0.1", description="IP address the streaming server listens on")
    port: int = Field(0, ge=0, le=65535, description="TCP port; 0 picks a free one at start")
    tls_cert_file: Path | None = Field(None, description="PEM certificate; with tls_key_file, serve https")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file")
    idle_timeout: float = Field(4 * 3600.0, gt=0, description="seconds a stream connection may stay silent")
    stream_creation_timeout: float = Field(30.0, gt=0, description="seconds a client has to open its streams")
    token_ttl: float = Field(60.0, gt=0, description="seconds a streaming URL stays valid")
    max_tokens: int = Field(1000, ge=1, description="unused streaming URLs kept at most")

    @field_validator("address")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        return str(ipaddress.ip_address(value))  # ValueError names the bad address

    @model_validator(mode="after")
    def _tls_pair(self) -> StreamingConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        return self


class MetricsConfig(_Section):
    """The Prometheus endpoint (crirt.metrics): off by default, as in containerd; opening a port is the operator's
    call."""

    address: str = Field("", description='"ip:port" serving /metrics over HTTP ("[::1]:9338" for IPv6); "" is off')

    @field_validator("address")
    @classmethod
    def _ip_port(cls, value: str) -> str:
        if value:
            split_ip_port(value)  # ValueError says what is wrong
        return value


def split_ip_port(value: str) -> tuple[str, int]:
    """(ip, port) of ``"ip:port"`` or ``"[ipv6]:port"``; ValueError naming the problem otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError("must be ip:port with a port from 0 to 65535, e.g. 127.0.0.1:9338 or [::1]:9338")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return str(ipaddress.ip_address(host)), int(port)  # ValueError names the bad address


class Config(BaseSettings):
    """The whole configuration; ``crirt config`` prints the effective one."""

    model_config = SettingsConfigDict(
        env_prefix="CRIRT_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    address: str = "unix:///run/crirt/crirt.sock"
    root: Path = Path("/var/lib/crirt")
    state: Path = Path("/run/crirt")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object a line (crirt.logs)")
    cgroup_driver: Literal["cgroupfs", "systemd"] = "cgroupfs"
    shutdown_grace_period: float = Field(10.0, ge=0, description="seconds in-flight calls get on SIGTERM")
    event_queue_size: int = Field(1000, ge=1, description="events a slow subscriber may lag before dropped")
    default_runtime: str = Field("runc", min_length=1, description="handler used for the empty handler name")
    runtimes: dict[str, RuntimeHandlerConfig] = Field(
        default_factory=lambda: {"runc": RuntimeHandlerConfig(shim="runc")}
    )
    grpc: GrpcConfig = Field(default_factory=GrpcConfig)
    cni: CniConfig = Field(default_factory=CniConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    registries: dict[str, RegistryConfig] = Field(default_factory=dict, description="per registry host")
    sandboxes: SandboxesConfig = Field(default_factory=SandboxesConfig)
    streaming: StreamingConfig = Field(default_factory=StreamingConfig)
    stats: StatsConfig = Field(default_factory=StatsConfig)
    debug: DebugConfig = Field(default_factory=DebugConfig)
    cdi: CdiConfig = Field(default_factory=CdiConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @field_validator("runtimes", mode="before")
    @classmethod
    def _keep_default_runc(cls, value: Any) -> Any:
        # Like containerd, a config that adds handlers keeps the built-in runc one unless it redefines it.
        return {"runc": {"shim": "runc"}, **value} if isinstance(value, dict) else value

    @field_validator("address")
    @classmethod
    def _unix_address(cls, value: str) -> str:
        if not value.startswith("unix://") or len(value) <= len("unix://"):
            raise ValueError("must be unix:///absolute/path")
        if not value.removeprefix("unix://").startswith("/"):
            raise ValueError("the socket path must be absolute (unix:///run/crirt/crirt.sock)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @property
    def socket_path(self) -> Path:
        return Path(self.address.removeprefix("unix://"))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values come in as init kwargs; the environment overrides them.
        return (env_settings, init_settings)


def load_config(path: Path | None, overrides: dict[str, Any] | None = None,
                default_runtimes: Callable[[], Mapping[str, RuntimeHandlerConfig]] | None = None) -> Config:
    """Read ``path`` (``None``: the default file, if present), apply env and ``overrides``, validate.

    Without a ``[runtimes]`` table (in the file or the environment) the handlers are ``default_runtimes()``
    (the installed plugins' defaults, ``crirt.shim.defaults``), plus the built-in ``runc`` one; ``None`` leaves
    the built-in one alone."""
    file = path or DEFAULT_CONFIG_FILE
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{file}: not valid TOML: {exc}"]) from None
    elif path is not None:
        raise ConfigError([f"{file}: no such config file"])
    try:
        config = Config(**data)
        for key, value in (overrides or {}).items():
            if value is not None:
                setattr(config, key, value)  # validated: validate_assignment is on
        if default_runtimes is not None and "runtimes" not in config.model_fields_set:
            config.runtimes = dict(default_runtimes())  # last: only default_runtime is checked after it
    except ValidationError as exc:
        raise ConfigError([_describe(err) for err in exc.errors()]) from None
    if config.default_runtime not in config.runtimes:
        raise ConfigError([f"default_runtime: {config.default_runtime!r} is not a key of [runtimes] "
                           f"(known: {', '.join(sorted(config.runtimes)) or 'none'})"])
    return config


def _describe(err: Any) -> str:
    key = ".".join(str(part) for part in err["loc"]) or "(top level)"
    message = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
    return f"{key}: {message} (got {err.get('input')!r})" if err["type"] != "missing" else f"{key}: {message}"
