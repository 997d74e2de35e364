"""Real registries for tests: Debian's docker-registry on 127.0.0.1, plus the HTTP helpers around it.

- ``start_registry``: plain, htpasswd basic auth, TLS (with optional client certificates), or token auth.
- ``TestCA``: a CA made in the test, with server and client certificates for 127.0.0.1.
- ``TokenServer``: the token service of a token-auth registry (JWTs signed with a key whose certificate
  the registry trusts): anonymous pulls of public repositories, basic credentials, identity tokens.
- ``FaultProxy``: sits in front of a real registry and misbehaves on request (5xx, redirect loops, garbage,
  dropped, truncated, corrupted or stalled blobs), recording every request.

Everything listens on 127.0.0.1 only, on ports the kernel picks, and is stopped by its owner.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import re
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

LISTENING = re.compile(r"listening on (127\.0\.0\.1:\d+)")


@dataclass
class Registry:
    """A docker-registry process serving ``host`` (``127.0.0.1:<port>``)."""

    proc: subprocess.Popen[bytes]
    host: str
    root: Path
    log: Path
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_registry(base: Path, *, htpasswd: Path | None = None, tls: tuple[Path, Path] | None = None,
                   client_ca: Path | None = None, token: dict[str, str] | None = None) -> Registry:
    """Start docker-registry with its storage under ``base``; returns once it answers on /v2/."""
    base.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(base / "data")}, "delete": {"enabled": True}},
        "http": {"addr": "127.0.0.1:0", "secret": uuid.uuid4().hex},
    }
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "test", "path": str(htpasswd)}}
    if token is not None:
        config["auth"] = {"token": token}
    if tls is not None:
        config["http"]["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
        if client_ca is not None:
            config["http"]["tls"]["clientcas"] = [str(client_ca)]
    (base / "config.yml").write_text(json.dumps(config))  # JSON is YAML
    log = base / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["docker-registry", "serve", str(base / "config.yml")], stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = LISTENING.search(log.read_text(errors="replace"))
        if found:
            return Registry(proc, found.group(1), base, log, "https" if tls else "http")
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"docker-registry did not start:\n{log.read_text(errors='replace')}")


def htpasswd_file(path: Path, users: dict[str, str]) -> Path:
    """An htpasswd file with bcrypt hashes (the only kind docker-registry accepts)."""
    path.write_text("".join(f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(4)).decode()}\n"
                            for user, pw in users.items()))
    return path


@dataclass
class RemoteRegistry:
    """A registry with one test image (``image``) and what a daemon needs to reach it."""

    registry: Registry
    image: str
    image_id: str
    config: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# --- certificates --------------------------------------------------------------------------------------------


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write(path: Path, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> tuple[Path, Path]:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                                           serialization.NoEncryption()))
    return path.with_suffix(".crt"), path.with_suffix(".key")


def _builder(subject: str, issuer: str, public_key: Any) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2)))


@dataclass
class TestCA:
    """A certificate authority for one test session, writing PEM files under ``directory``."""

    directory: Path
    key: rsa.RSAPrivateKey = field(default_factory=_key)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.cert = (_builder("crirt test CA", "crirt test CA", self.key.public_key())
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.cert_file, _ = _write(self.directory / "ca", self.cert, self.key)

    def issue(self, name: str, server: bool) -> tuple[Path, Path]:
        """(certificate, key) files for a server on 127.0.0.1/localhost, or for a client."""
        key = _key()
        builder = _builder(name, "crirt test CA", key.public_key())
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return _write(self.directory / name, builder.sign(self.key, hashes.SHA256()), key)


# --- asyncio services on a background loop --------------------------------------------------------------------


class ServiceLoop:
    """An event loop in a daemon thread that hosts aiohttp test servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="test-services")
        self.thread.start()
        self.runners: list[web.AppRunner] = []

    def run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)  # type: ignore[arg-type]

    def serve(self, app: web.Application, address: str = "127.0.0.1") -> str:
        """Serve ``app`` on a loopback ``address`` and return ``<address>:<port>`` (IPv6 in brackets)."""
        async def start() -> str:
            runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
            await runner.setup()
            site = web.TCPSite(runner, address, 0)
            await site.start()
            self.runners.append(runner)
            host, port = runner.addresses[0][:2]
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

        return self.run(start())

    def close(self) -> None:
        """Stop every server and every request still being handled (a stalled blob sleeps), then the loop."""
        async def stop() -> None:
            for runner in self.runners:
                await runner.cleanup()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """Issues registry tokens: pull on public repositories for anyone; everything for known users."""

    directory: Path
    users: dict[str, str]
    identity_tokens: dict[str, str]
    public: set[str]
    issuer: str = "crirt-test-issuer"
    service: str = "crirt-test-registry"
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    host: str = ""

    def __post_init__(self) -> None:
        self.key = _key()
        self.cert = _builder("token signer", "token signer", self.key.public_key()).sign(self.key, hashes.SHA256())
        self.cert_file, _ = _write(self.directory / "token-signer", self.cert, self.key)

    def registry_config(self) -> dict[str, str]:
        return {"realm": f"http://{self.host}/token", "service": self.service, "issuer": self.issuer,
                "rootcertbundle": str(self.cert_file)}

    def start(self, services: ServiceLoop) -> None:
        app = web.Application()
        app.router.add_get("/token", self._get)
        app.router.add_post("/token", self._post)
        self.host = services.serve(app)

    def _jwt(self, user: str, scope: str) -> str:
        access = []
        for part in scope.split(" ") if scope else []:
            kind, name, actions = part.split(":")
            allowed = [a for a in actions.split(",") if user or (a == "pull" and name in self.public)]
            access.append({"type": kind, "name": name, "actions": allowed})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256",
                  "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": self.issuer, "sub": user, "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    async def _get(self, request: web.Request) -> web.Response:
        user = ""
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if self.users.get(name) != password:
                self.requests.append(("GET", name, "refused"))
                return web.Response(status=401)
            user = name
        self.requests.append(("GET", user or "anonymous", request.query.get("scope", "")))
        return web.json_response({"token": self._jwt(user, request.query.get("scope", "")), "expires_in": 300})

    async def _post(self, request: web.Request) -> web.Response:
        form = await request.post()
        user = self.identity_tokens.get(str(form.get("refresh_token", "")))
        self.requests.append(("POST", user or "refused", str(form.get("scope", ""))))
        if form.get("grant_type") != "refresh_token" or user is None:
            return web.Response(status=401)
        return web.json_response({"access_token": self._jwt(user, str(form.get("scope", ""))), "expires_in": 300})


# --- a misbehaving proxy ------------------------------------------------------------------------------------

_COPIED = ("Content-Type", "Docker-Content-Digest", "Content-Range", "WWW-Authenticate", "Accept-Ranges")


@dataclass
class Faults:
    """What the proxy does wrong; all off by default (it then forwards faithfully)."""

    status: int = 0
    redirect_loop: bool = False
    manifest: tuple[bytes, str] | None = None
    drop_blob_after: int = 0
    truncate_blob_at: int = 0
    blob_start_delay: float = 0.0
    """Seconds every blob download waits before its first byte (so that concurrent ones overlap)."""
    corrupt_blobs_over: int = -1
    """Flip the first byte of every blob larger than this many bytes."""
    stall_blob_after: int = -1
    blob_delay: float = 0.0


@dataclass
class FaultProxy:
    """Forwards to ``upstream`` (a registry URL) and injects ``faults``; records every request."""

    upstream: str
    faults: Faults = field(default_factory=Faults)
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    host: str = ""
    most_blobs_in_flight: int = 0
    """The most blob downloads served at the same time since the last ``reset``."""
    _in_flight: dict[int, int] = field(default_factory=dict)
    _epoch: int = 0
    _dropped: set[str] = field(default_factory=set)

    def start(self, services: ServiceLoop, address: str = "127.0.0.1") -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.host = services.serve(app, address)

    def reset(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self.requests.clear()
        self._dropped.clear()
        self.most_blobs_in_flight = 0
        self._epoch += 1  # downloads still hanging from before (a stall) no longer count

    def blob_gets(self) -> list[str]:
        return [path for method, path, _ in self.requests if method == "GET" and "/blobs/" in path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path, request.headers.get("Range", "")))
        faults = self.faults
        if faults.status:
            return web.Response(status=faults.status, text="injected failure")
        if faults.redirect_loop:
            raise web.HTTPFound(location=str(request.rel_url))
        if faults.manifest is not None and "/manifests/" in request.path:
            body, content_type = faults.manifest
            return web.Response(body=body, headers={"Content-Type": content_type})
        headers = {k: v for k, v in request.headers.items() if k in ("Accept", "Authorization", "Range")}
        async with aiohttp.ClientSession(auto_decompress=False) as session, session.request(
                request.method, self.upstream + str(request.rel_url), headers=headers,
                allow_redirects=True) as upstream:
            out_headers = {k: upstream.headers[k] for k in _COPIED if k in upstream.headers}
            if "/blobs/" not in request.path or request.method != "GET" or upstream.status >= 300:
                body = await upstream.read()
                return web.Response(status=upstream.status, body=body, headers=out_headers)
            return await self._blob(request, upstream, out_headers)

    async def _blob(self, request: web.Request, upstream: aiohttp.ClientResponse,
                    headers: dict[str, str]) -> web.StreamResponse:
        faults = self.faults
        start = int(request.headers.get("Range", "bytes=0-")[6:].split("-")[0] or 0)
        response = web.StreamResponse(status=upstream.status, headers=headers)
        if upstream.content_length is not None and not faults.truncate_blob_at:
            response.content_length = upstream.content_length
        epoch = self._epoch
        self._in_flight[epoch] = self._in_flight.get(epoch, 0) + 1
        self.most_blobs_in_flight = max(self.most_blobs_in_flight, self._in_flight[epoch])
        try:
            await asyncio.sleep(self.faults.blob_start_delay)
            await response.prepare(request)
            await self._stream(request, response, upstream, start)
        except ConnectionResetError:
            pass  # the client hung up, as crirt does when it refuses a blob
        finally:
            self._in_flight[epoch] -= 1
        return response

    async def _stream(self, request: web.Request, response: web.StreamResponse, upstream: aiohttp.ClientResponse,
                      start: int) -> None:
        faults = self.faults
        offset = start
        first = not start and request.path not in self._dropped
        async for chunk in upstream.content.iter_chunked(16384):
            if faults.blob_delay:
                await asyncio.sleep(faults.blob_delay)
            if faults.truncate_blob_at and offset + len(chunk) > faults.truncate_blob_at:
                chunk = chunk[: max(faults.truncate_blob_at - offset, 0)]
                await response.write(chunk)
                break
            if 0 <= faults.corrupt_blobs_over < (upstream.content_length or 0) and offset == 0 and chunk:
                chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
            if faults.stall_blob_after >= 0 and offset + len(chunk) > faults.stall_blob_after:
                await response.write(chunk[: faults.stall_blob_after - offset])
                await asyncio.sleep(3600)
            if faults.drop_blob_after and first and offset + len(chunk) > faults.drop_blob_after:
                self._dropped.add(request.path)
                await response.write(chunk[: faults.drop_blob_after - offset])
                assert request.transport is not None
                request.transport.abort()  # the connection dies mid-body
                return
            await response.write(chunk)
            offset += len(chunk)
        await response.write_eof()


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A plain GET (for checks in tests), returning status and body even for error statuses."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def put_manifest(registry_url: str, repository: str, tag: str, body: bytes, media_type: str) -> None:
    """PUT a manifest as it is (for documents skopeo would refuse to copy)."""
    request = urllib.request.Request(f"{registry_url}/v2/{repository}/manifests/{tag}", data=body, method="PUT",
                                     headers={"Content-Type": media_type})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201, response.status

