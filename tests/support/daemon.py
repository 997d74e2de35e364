"""Run a real crirt daemon for a test: private socket, root, state and CNI dirs under a temp dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

CRIRT = [sys.executable, "-m", "crirt"]


@dataclass
class Daemon:
    """A crirt process serving on a private socket, root and state dir."""

    proc: subprocess.Popen[bytes]
    socket: Path
    root: Path
    log: Path
    config: Path

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def channel(self, **options: int) -> grpc.Channel:
        return grpc.insecure_channel(self.endpoint, options=list(options.items()))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


NO_REGISTRIES = '[registries."*"]\nblocked = true\n'
"""Refuses every pull from a registry the test did not configure, so no test daemon ever reaches (or even
resolves the name of) a registry outside this machine."""


def write_config(path: Path, base: Path, extra: str = "", cni_extra: str = "default_network = false\n",
                 registries: str = NO_REGISTRIES) -> Path:
    """A config file that keeps every directory of the daemon under ``base``.

    ``cni_extra`` goes into ``[cni]``; by default the daemon writes no default network, so a generic test
    daemon never creates bridges or allocates addresses on the host (pod network tests bring their own).
    ``registries`` holds ``[registries."<host>"]`` tables; by default every pull is refused."""
    (base / "cni").mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'address = "unix://{base}/crirt.sock"\nroot = "{base}/root"\nstate = "{base}/state"\n'
        f'log_level = "debug"\n{extra}\n{registries}\n[cni]\nconf_dir = "{base}/cni"\n{cni_extra}'
    )
    return path


def start_daemon(base: Path, extra_config: str = "", argv: list[str] | None = None,
                 env: dict[str, str] | None = None, cni_config: str = "default_network = false\n",
                 registries: str = NO_REGISTRIES) -> Daemon:
    """Start ``crirt serve`` (or ``argv``) with a private config under ``base`` and wait until it answers."""
    base.mkdir(parents=True, exist_ok=True)
    config = write_config(base / "config.toml", base, extra_config, cni_config, registries)
    log = base / "daemon.log"
    command = argv or [*CRIRT, "serve"]
    with log.open("wb") as out:
        proc = subprocess.Popen([*command, "--config", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    daemon = Daemon(proc, base / "crirt.sock", base / "root", log, config)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"crirt exited with {proc.returncode} while starting:\n{daemon.log_text()}")
        if daemon.socket.exists():
            with daemon.channel() as channel:
                try:
                    grpc.channel_ready_future(channel).result(timeout=1)
                    return daemon
                except grpc.FutureTimeoutError:
                    pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"crirt did not start within 30s:\n{daemon.log_text()}")
