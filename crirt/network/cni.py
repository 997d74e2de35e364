"""CNI over the exec protocol (CNI spec 1.0): network configs, plugin calls, chaining, cached results.

What crirt does for one pod:
- ``ADD``: the pod network's plugin chain on ``eth0`` (``lo`` is brought up by crirt itself, see
  ``crirt.network.netns.loopback_up``): each plugin gets its config with ``name``/``cniVersion`` injected,
  the previous plugin's result as ``prevResult`` and the ``runtimeConfig`` keys its ``capabilities`` ask for
  (``portMappings``, ``dns``, ``io.kubernetes.cri.pod-annotations``).
- Before the first ``ADD`` the attachment (network config, args, runtimeConfig) is written to a cache file under
  the root dir, and the final result after it. ``DEL`` reads that cache, so it always runs with the config and
  the result of the ``ADD`` (even after the conf dir changed, or after a crash in the middle of ``ADD``), runs
  the chain in reverse order, and deletes the cache only when every plugin succeeded.
- A plugin's error JSON (``code``/``msg``/``details``) becomes a ``CniError`` naming the plugin and the command.
- Version basics: once per plugin binary crirt asks ``VERSION`` and refuses a config whose ``cniVersion`` the
  plugin does not support, naming both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crirt import proc
from crirt.errors import CrirtError
from crirt.metrics.instruments import CniMetrics

CONFIG_SUFFIXES = (".conf", ".conflist", ".json")
POD_IFNAME = "eth0"
KNOWN_CAPABILITIES = ("portMappings", "dns", "io.kubernetes.cri.pod-annotations")
CACHE_FORMAT = 1


class CniError(CrirtError):
    """A CNI plugin failed, timed out, or is missing; answered as gRPC UNKNOWN (what containerd does)."""


class NetworkConfigError(Exception):
    """A network configuration file is not valid; the message names the file and the problem."""


@dataclass(frozen=True)
class NetworkConfig:
    """One CNI network: a conflist (a single-plugin ``.conf`` is wrapped into one)."""

    name: str
    cni_version: str
    plugins: tuple[Mapping[str, Any], ...]
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"cniVersion": self.cni_version, "name": self.name, "plugins": [dict(p) for p in self.plugins]}


def parse_network(text: str, source: str = "") -> NetworkConfig:
    """Parse a ``.conflist`` (``plugins`` list) or a single-plugin ``.conf``; raise NetworkConfigError."""
    where = source or "network config"
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise NetworkConfigError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise NetworkConfigError(f"{where}: must be a JSON object")
    name, version = data.get("name"), data.get("cniVersion")
    if not isinstance(name, str) or not name:
        raise NetworkConfigError(f"{where}: 'name' must be a non-empty string")
    if not isinstance(version, str) or not version:
        raise NetworkConfigError(f"{where}: 'cniVersion' must be a non-empty string")
    if "plugins" in data:
        plugins = data["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise NetworkConfigError(f"{where}: 'plugins' must be a non-empty list")
    else:
        plugins = [{k: v for k, v in data.items() if k not in ("name", "cniVersion")}]
    for index, plugin in enumerate(plugins):
        if not isinstance(plugin, dict):
            raise NetworkConfigError(f"{where}: plugins[{index}] must be a JSON object")
        kind = plugin.get("type")
        if not isinstance(kind, str) or not kind or "/" in kind or kind in (".", ".."):
            raise NetworkConfigError(f"{where}: plugins[{index}].type must be a plugin binary name")
    return NetworkConfig(name=name, cni_version=version, plugins=tuple(plugins), source=source)


def config_files(conf_dir: Path) -> list[Path]:
    """The network config files of ``conf_dir`` in the order CNI users consider them (by file name)."""
    try:
        return sorted(p for p in conf_dir.iterdir() if p.suffix in CONFIG_SUFFIXES and p.is_file())
    except OSError:
        return []


def load_network(conf_dir: Path) -> tuple[NetworkConfig | None, list[str]]:
    """The pod network: the first valid config file by name (containerd's and CRI-O's choice), and the
    problems of the invalid files before it."""
    problems = []
    for path in config_files(conf_dir):
        try:
            return parse_network(path.read_text(), str(path)), problems
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: cannot read: {exc}")
        except NetworkConfigError as exc:
            problems.append(str(exc))
    return None, problems


def network_problem(conf_dir: Path) -> str | None:
    """Why pods cannot get a network from ``conf_dir`` right now, or None when they can."""
    network, problems = load_network(conf_dir)
    if network is not None:
        return None
    if problems:
        return f"no valid CNI network config in {conf_dir}: " + "; ".join(problems)
    return f"no CNI network config (*.conf, *.conflist, *.json) in {conf_dir}"


def plugin_config(network: NetworkConfig, plugin: Mapping[str, Any], prev_result: Mapping[str, Any] | None,
                  runtime_config: Mapping[str, Any]) -> dict[str, Any]:
    """What one plugin of a chain reads on stdin (CNI spec: "Network configuration format", "runtimeConfig")."""
    conf = dict(plugin)
    conf["name"] = network.name
    conf["cniVersion"] = network.cni_version
    if prev_result is not None:
        conf["prevResult"] = prev_result
    capabilities = plugin.get("capabilities")
    if isinstance(capabilities, dict):
        wanted = {key: value for key, value in runtime_config.items() if capabilities.get(key) is True}
        if wanted:
            conf["runtimeConfig"] = {**(conf.get("runtimeConfig") or {}), **wanted}
    return conf


def cni_args(pairs: Sequence[tuple[str, str]]) -> str:
    """``CNI_ARGS``: ``IgnoreUnknown=1`` first so plugins accept the Kubernetes keys they do not know."""
    return ";".join(f"{key}={value}" for key, value in [("IgnoreUnknown", "1"), *pairs])


def pod_ips(result: Mapping[str, Any] | None) -> list[str]:
    """The addresses a result gives the pod's own interfaces (not the host-side veth or bridge), IPv4 first.

    Understands CNI >= 0.3.0 results (``ips``/``interfaces``) and 0.1/0.2 ones (``ip4``/``ip6``)."""
    if not result:
        return []
    interfaces = result.get("interfaces") or []
    addresses: list[str] = []
    for entry in result.get("ips") or []:
        index = entry.get("interface")
        if isinstance(index, int) and 0 <= index < len(interfaces) and not interfaces[index].get("sandbox"):
            continue
        address = str(entry.get("address", "")).split("/", 1)[0]
        if address:
            addresses.append(address)
    for key in ("ip4", "ip6"):
        legacy = result.get(key)
        if isinstance(legacy, dict) and legacy.get("ip"):
            addresses.append(str(legacy["ip"]).split("/", 1)[0])
    unique = list(dict.fromkeys(addresses))
    return sorted(unique, key=lambda a: ":" in a)  # stable: IPv4 before IPv6


def describe_error(plugin: str, command: str, code: int | None, stdout: bytes, stderr: bytes) -> str:
    """A one-line description of a failed plugin call from its error JSON (or its raw output)."""
    prefix = f"CNI plugin {plugin!r} failed on {command}"
    try:
        error = json.loads(stdout)
    except ValueError:
        error = None
    if isinstance(error, dict) and ("msg" in error or "code" in error):
        message = str(error.get("msg") or "no message")
        if error.get("details"):
            message += f": {error['details']}"
        return f"{prefix}: {message} (CNI error code {error.get('code')})"
    output = (stderr or stdout).decode(errors="replace").strip()
    tail = output[-500:] if output else "no output"
    return f"{prefix} with exit code {code}: {tail}"


@dataclass(frozen=True)
class Attachment:
    """Who is attached where: the pod's id (CNI_CONTAINERID), its netns path and its Kubernetes identity."""

    container_id: str
    netns: str
    pod_name: str = ""
    pod_namespace: str = ""
    pod_uid: str = ""
    ifname: str = POD_IFNAME

    @property
    def args(self) -> list[tuple[str, str]]:
        return [("K8S_POD_NAMESPACE", self.pod_namespace), ("K8S_POD_NAME", self.pod_name),
                ("K8S_POD_INFRA_CONTAINER_ID", self.container_id), ("K8S_POD_UID", self.pod_uid)]


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Cni:
    """Runs CNI plugins for pods; one instance per daemon."""

    def __init__(self, bin_dirs: Sequence[Path], cache_dir: Path, timeout: float = 60.0,
                 metrics: CniMetrics | None = None) -> None:
        self.bin_dirs = list(bin_dirs)
        self.cache_dir = cache_dir
        self.timeout = timeout
        self.metrics = CniMetrics() if metrics is None else metrics
        self._versions: dict[tuple[str, int], asyncio.Future[list[str]]] = {}

    # ---- plugin binaries -------------------------------------------------------------------------------

    def find_plugin(self, kind: str) -> Path:
        """The plugin binary ``kind`` from the first bin dir that has it."""
        for directory in self.bin_dirs:
            candidate = directory / kind
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
        raise CniError(f"CNI plugin {kind!r} not found in {', '.join(map(str, self.bin_dirs))}")

    def _env(self, command: str, attachment: Attachment, ifname: str) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": attachment.container_id,
            "CNI_NETNS": attachment.netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": ":".join(map(str, self.bin_dirs)),
            "CNI_ARGS": cni_args(attachment.args),
        }

    async def _exec(self, kind: str, command: str, env: Mapping[str, str], stdin: Mapping[str, Any]) -> bytes:
        """Run one plugin; its stdout on success, CniError otherwise.

        If the caller is cancelled (a passed deadline), the plugin is allowed to finish its step (up to the
        timeout) before the cancellation goes on: cleanup that follows must not race a half-done ADD."""
        path = self.find_plugin(kind)
        # stdin is a memfd holding the whole config, not a pipe we write to: a plugin may exit without reading
        # it (VERSION), and nothing can block on a full pipe.
        stdin_fd = os.memfd_create(f"cni-{kind}", os.MFD_CLOEXEC)
        try:
            data = memoryview(json.dumps(stdin).encode())
            while data:
                data = data[os.write(stdin_fd, data):]
            os.lseek(stdin_fd, 0, os.SEEK_SET)
            done = await proc.run([str(path)], env=env, stdin=stdin_fd, time_limit=self.timeout,
                                  grace=self.timeout)
        except proc.ProcessTimeout:
            raise CniError(f"CNI plugin {kind!r} timed out on {env['CNI_COMMAND']} after {self.timeout:g}s "
                           "and was killed") from None
        except OSError as exc:
            raise CniError(f"CNI plugin {kind!r} ({path}) could not be started: {exc.strerror or exc}") from None
        finally:
            os.close(stdin_fd)
        if done.returncode != 0:
            raise CniError(describe_error(kind, command, done.returncode, done.stdout, done.stderr))
        return done.stdout

    async def supported_versions(self, kind: str) -> list[str]:
        """The CNI spec versions a plugin binary supports (asked once per binary and modification time)."""
        path = self.find_plugin(kind)
        key = (str(path), path.stat().st_mtime_ns)
        future = self._versions.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._versions[key] = future
            try:
                env = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": "VERSION"}
                out = await self._exec(kind, "VERSION", env, {"cniVersion": "0.1.0"})
                answer = json.loads(out)
                versions = answer.get("supportedVersions") if isinstance(answer, dict) else None
                future.set_result([str(v) for v in versions or []])
            except BaseException as exc:
                del self._versions[key]
                future.set_exception(CniError(f"CNI plugin {kind!r} did not answer VERSION: {exc}"))
                future.exception()  # retrieved: no "never retrieved" warning when nobody else waits
                if not isinstance(exc, Exception):
                    raise
        return await asyncio.shield(future)

    async def check_versions(self, network: NetworkConfig) -> None:
        """Refuse a network whose cniVersion one of its plugins does not support."""
        for plugin in network.plugins:
            kind = str(plugin["type"])
            versions = await self.supported_versions(kind)
            if versions and network.cni_version not in versions:
                raise CniError(f"network {network.name!r} ({network.source or 'config'}) asks for CNI version "
                               f"{network.cni_version}, but plugin {kind!r} supports {', '.join(versions)}")

    # ---- the result cache ----------------------------------------------------------------------------------

    def cache_path(self, container_id: str) -> Path:
        return self.cache_dir / f"{container_id}.json"

    def cached(self, container_id: str) -> dict[str, Any] | None:
        """The cached attachment of a pod (None when it is not attached)."""
        try:
            data = json.loads(self.cache_path(container_id).read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # a torn write cannot happen (atomic rename); treat garbage as absent
        return data if isinstance(data, dict) else None

    def _write_cache(self, attachment: Attachment, network: NetworkConfig, runtime_config: Mapping[str, Any],
                     result: Mapping[str, Any] | None) -> None:
        entry = {"format": CACHE_FORMAT, "containerId": attachment.container_id, "netns": attachment.netns,
                 "ifName": attachment.ifname, "cniArgs": attachment.args, "network": network.to_dict(),
                 "source": network.source, "runtimeConfig": dict(runtime_config), "result": result}
        write_atomically(self.cache_path(attachment.container_id), json.dumps(entry).encode())

    def cached_ids(self) -> list[str]:
        try:
            return sorted(p.stem for p in self.cache_dir.glob("*.json"))
        except OSError:
            return []

    # ---- ADD / DEL -------------------------------------------------------------------------------------------

    async def setup(self, network: NetworkConfig, attachment: Attachment,
                    runtime_config: Mapping[str, Any]) -> dict[str, Any]:
        """Attach the pod to ``network``; returns the chain's final result.

        On failure the pod may be partly attached: call ``teardown`` (the cache says what to undo)."""
        with self.metrics.operation("ADD"):
            await self.check_versions(network)
            await asyncio.to_thread(self._write_cache, attachment, network, runtime_config, None)  # fsyncs
            result = await self._add_chain(network, attachment, runtime_config)
            await asyncio.to_thread(self._write_cache, attachment, network, runtime_config, result)
        return result

    async def _add_chain(self, network: NetworkConfig, attachment: Attachment,
                         runtime_config: Mapping[str, Any]) -> dict[str, Any]:
        env = self._env("ADD", attachment, attachment.ifname)
        result: dict[str, Any] | None = None
        for plugin in network.plugins:
            out = await self._exec(str(plugin["type"]), "ADD", env,
                                   plugin_config(network, plugin, result, runtime_config))
            try:
                parsed = json.loads(out)
            except ValueError:
                raise CniError(f"CNI plugin {plugin['type']!r} returned no valid JSON result on ADD: "
                               f"{out[:200]!r}") from None
            if not isinstance(parsed, dict):
                raise CniError(f"CNI plugin {plugin['type']!r} returned a non-object result on ADD")
            result = parsed
        return result or {}

    async def teardown(self, container_id: str, netns: str | None = None) -> bool:
        """DEL the pod from the network it was attached to (from the cache), in reverse chain order.

        Every plugin is called even when one fails; the cache goes only when all succeeded. Returns False
        when nothing was attached. ``netns`` overrides the cached path (pass one that exists or is absent)."""
        entry = self.cached(container_id)
        if entry is None:
            return False
        with self.metrics.operation("DEL"):
            await self._del_chain(container_id, entry, netns)
        return True

    async def _del_chain(self, container_id: str, entry: Mapping[str, Any], netns: str | None) -> None:
        """DEL every plugin of the cached chain, last first; drop the cache entry when all succeeded."""
        network = parse_network(json.dumps(entry["network"]), str(entry.get("source") or ""))
        attachment = Attachment(container_id=container_id, netns=entry.get("netns", "") if netns is None else netns,
                                ifname=entry.get("ifName") or POD_IFNAME)
        env = self._env("DEL", attachment, attachment.ifname)
        env["CNI_ARGS"] = cni_args([(str(k), str(v)) for k, v in entry.get("cniArgs") or []])
        errors = []
        for plugin in reversed(network.plugins):
            try:
                await self._exec(str(plugin["type"]), "DEL", env,
                                 plugin_config(network, plugin, entry.get("result"), entry.get("runtimeConfig") or {}))
            except CniError as exc:
                errors.append(str(exc))
        if errors:
            raise CniError("; ".join(errors))
        with contextlib.suppress(FileNotFoundError):
            self.cache_path(container_id).unlink()
