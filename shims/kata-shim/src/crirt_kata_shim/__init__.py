"""crirt's Kata Containers shim plugin: pods in lightweight VMs, run by ``containerd-shim-kata-v2``.

All the work is done by crirt's shim v2 driver (``crirt.shim.taskv2``): one Kata shim (and so one VM) per
pod, driven over the containerd task API. This plugin validates its options, tells the shim which Kata
configuration to use and forwards the contract's calls to the driver.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from crirt.shim import DelegatingShim, HandlerFeatures, ShimContext, check_known, executable, missing_programs
from crirt.shim.taskv2 import ShimV2Runtime, cri_runtime_options

__version__ = "0.1.0"

OPTIONS = ("binary", "config_path", "env")
DEFAULT_BINARY = "containerd-shim-kata-v2"
CONFIG_ENV = "KATA_CONF_FILE"
"""The environment variable Kata's shims (Go and runtime-rs) read their configuration path from."""


def config_path(value: Any) -> Path | None:
    """The ``config_path`` option: an existing file, or None for Kata's default search."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"option 'config_path' must be an absolute path, not {value!r}")
    if not Path(value).is_file():
        raise ValueError(f"option 'config_path': Kata configuration {value} does not exist")
    return Path(value)


def extra_env(value: Any) -> dict[str, str]:
    """The ``env`` option: a table of strings given to the shim's environment."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and k and isinstance(v, str)
                                              for k, v in value.items()):
        raise ValueError(f"option 'env' must be a table of strings, not {value!r}")
    return dict(value)


class KataShim(DelegatingShim):
    """The ``kata`` shim plugin. Options (all optional):

    - ``binary``: the shim v2 binary, a name on PATH or a path (default ``"containerd-shim-kata-v2"``)
    - ``config_path``: Kata's ``configuration.toml`` (default: Kata's own search path)
    - ``env``: extra environment variables for the shim process
    """

    api_version = "2.1"
    needs_infra_container = True
    """Kata makes the pod's VM for the pod's sandbox container, which the other containers then join."""
    default_handlers: ClassVar[Mapping[str, Mapping[str, Any]]] = {"kata": {}}

    @classmethod
    def available(cls, options: Mapping[str, Any]) -> str | None:
        """Kata's shim v2 binary must be installed."""
        return missing_programs(options.get("binary", DEFAULT_BINARY))

    def __init__(self, context: ShimContext, options: Mapping[str, Any]) -> None:
        check_known(options, OPTIONS, "kata")
        super().__init__(context, options)
        binary = executable("binary", options.get("binary", DEFAULT_BINARY),
                            "Kata Containers is not installed: install it or set the handler's options.binary")
        config = config_path(options.get("config_path"))
        env = extra_env(options.get("env", {}))
        if config is not None:
            env[CONFIG_ENV] = str(config)
        self.runtime = ShimV2Runtime(binary=binary, state_dir=context.state, env=env,
                                     create_options=cri_runtime_options(str(config)) if config is not None else None)

    async def features(self) -> HandlerFeatures:
        """Nothing beyond the basics is claimed: mounts and user namespaces are the guest kernel's business."""
        await self.runtime.recover()
        return HandlerFeatures()

