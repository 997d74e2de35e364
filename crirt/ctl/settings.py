"""Where ``crirt ctl`` connects: flags, then ``CONTAINER_RUNTIME_ENDPOINT``, then crictl's config file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CRICTL_CONFIG = Path("/etc/crictl.yaml")
DEFAULT_ENDPOINT = "unix:///run/crirt/crirt.sock"


def parse_crictl_config(text: str) -> dict[str, str]:
    """Read crictl's flat ``key: value`` YAML file (comments and blank lines ignored, quotes stripped)."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or ":" not in line:
            continue
        key, value = line.split(":", 1)
        values[key.strip()] = value.strip().strip("'\"")
    return values


@dataclass(frozen=True)
class ClientSettings:
    runtime_endpoint: str
    image_endpoint: str
    timeout: float

    @classmethod
    def resolve(cls, runtime_endpoint: str | None, image_endpoint: str | None, timeout: float | None,
                config: Path | None) -> ClientSettings:
        """Flags win, then the environment variables crictl reads, then the config file, then crirt's socket."""
        path = config or Path(os.environ.get("CRI_CONFIG_FILE", CRICTL_CONFIG))
        file = parse_crictl_config(path.read_text()) if path.is_file() else {}
        runtime = (runtime_endpoint or os.environ.get("CONTAINER_RUNTIME_ENDPOINT")
                   or file.get("runtime-endpoint") or DEFAULT_ENDPOINT)
        image = (image_endpoint or os.environ.get("IMAGE_SERVICE_ENDPOINT") or file.get("image-endpoint")
                 or runtime)
        seconds = timeout if timeout is not None else float(file.get("timeout") or 2)
        return cls(runtime, image, seconds)


def socket_path(endpoint: str) -> str:
    """The filesystem path of a ``unix://`` endpoint (a bare path is accepted too)."""
    if endpoint.startswith("unix://"):
        return endpoint.removeprefix("unix://")
    if "://" in endpoint:
        raise ValueError(f"unsupported endpoint {endpoint!r}: crirt ctl speaks unix:// only")
    return endpoint
