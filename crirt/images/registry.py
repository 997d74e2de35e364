"""The registry client: distribution API v2 over aiohttp, with mirrors, TLS settings, auth and resumable blobs.

Endpoints of a reference, in the order they are tried: the mirrors configured for its registry, then the
registry itself unless ``fallback_to_origin = false``. Docker Hub's origin is ``registry-1.docker.io``.
A registry on a loopback address is spoken to over plain HTTP unless configured otherwise; any other over
HTTPS, verified against the system CAs plus the registry's ``ca_file``, with an optional client certificate.

Every request follows at most ``MAX_REDIRECTS`` redirects itself (dropping ``Authorization`` when a redirect
leaves the origin), answers one 401 by obtaining credentials for the challenge, and maps failures to
crirt's errors: 404 -> NOT_FOUND, refused credentials -> FAILED_PRECONDITION, 5xx, connection failures,
redirect loops and stalls -> UNAVAILABLE. A stall is ``stall_timeout`` seconds without a byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

from crirt import __version__
from crirt.errors import CrirtError, FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from crirt.images.auth import Authorizer, Credentials
from crirt.images.config import ImagesConfig, RegistryConfig
from crirt.images.manifest import Descriptor
from crirt.images.reference import DOCKER_HUB, Reference, is_loopback_host

log = logging.getLogger(__name__)

DOCKER_HUB_ORIGIN = "https://registry-1.docker.io"
DEFAULT_KEY = "*"
MAX_REDIRECTS = 5
CHUNK = 1 << 20
MAX_ERROR_BODY = 64 * 1024
_REDIRECTS = (301, 302, 303, 307, 308)
_DROPPED = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)


@dataclass(frozen=True)
class Endpoint:
    """Where a repository can be fetched from: a base URL, a namespace prefix (a mirror URL's path)."""

    base: str
    host: str
    prefix: str = ""
    mirror: bool = False

    def url(self, repository: str, kind: str, name: str) -> str:
        return f"{self.base}/v2/{self.prefix}{repository}/{kind}/{name}"

    def __str__(self) -> str:
        return self.base + ("/" + self.prefix.rstrip("/") if self.prefix else "")


def _host_of(url: URL) -> str:
    host = url.raw_host or ""
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{url.explicit_port}" if url.explicit_port else host


@dataclass
class Registries:
    """Per-registry configuration: endpoints, TLS contexts and configured credentials."""

    config: dict[str, RegistryConfig]
    _ssl: dict[str, ssl.SSLContext] = field(default_factory=dict)

    def settings(self, host: str) -> RegistryConfig:
        """The table of ``host``, else the ``"*"`` table, else the defaults."""
        for key in (host, DEFAULT_KEY):
            if key in self.config:
                return self.config[key]
        return RegistryConfig()

    def endpoints(self, ref: Reference) -> list[Endpoint]:
        settings = self.settings(ref.domain)
        if settings.blocked:
            key = ref.domain if ref.domain in self.config else DEFAULT_KEY
            raise FailedPrecondition(f"pulling from {ref.domain} is blocked by the configuration "
                                     f"([registries.\"{key}\"] blocked = true)")
        endpoints = []
        for mirror in settings.mirrors:
            url = URL(mirror)
            prefix = url.path.strip("/")
            endpoints.append(Endpoint(f"{url.scheme}://{_host_of(url)}", _host_of(url),
                                      f"{prefix}/" if prefix else "", mirror=True))
        if settings.fallback_to_origin:
            endpoints.append(self.origin(ref.domain, settings))
        return endpoints

    @staticmethod
    def origin(domain: str, settings: RegistryConfig) -> Endpoint:
        if domain == DOCKER_HUB:
            return Endpoint(DOCKER_HUB_ORIGIN, DOCKER_HUB)
        hostname = domain[1 : domain.index("]")] if domain.startswith("[") else domain.rsplit(":", 1)[0]
        plain = settings.plain_http if settings.plain_http is not None else is_loopback_host(hostname)
        return Endpoint(f"{'http' if plain else 'https'}://{domain}", domain)

    def ssl_context(self, host: str) -> ssl.SSLContext:
        """The TLS client context for ``host`` (``name:port``), built once from its registry config."""
        if host not in self._ssl:
            settings = self.settings(host)
            context = ssl.create_default_context()
            try:
                if settings.ca_file is not None:
                    context.load_verify_locations(cafile=settings.ca_file)  # in addition to the system CAs
                if settings.cert_file is not None and settings.key_file is not None:
                    context.load_cert_chain(settings.cert_file, settings.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise FailedPrecondition(f"the TLS files configured for {host} cannot be used: {exc}") from None
            if settings.insecure_skip_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._ssl[host] = context
        return self._ssl[host]

    def configured_credentials(self, host: str) -> Credentials | None:
        settings = self.settings(host)
        return Credentials.build(settings.username, settings.password.get_secret_value(),
                                 settings.auth.get_secret_value(), settings.identity_token.get_secret_value())


@dataclass
class RegistryClient:
    """HTTP to registries; one aiohttp session, opened while at least one pull uses it."""

    registries: Registries
    settings: ImagesConfig
    _session: aiohttp.ClientSession | None = None
    _users: int = 0
    authorizer: Authorizer = field(init=False)

    def __post_init__(self) -> None:
        self.authorizer = Authorizer(self._token_request)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        """Keep the HTTP session (and its pooled connections) open for the duration of the block."""
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.settings.connect_timeout,
                                            sock_read=self.settings.stall_timeout)
            self._session = aiohttp.ClientSession(
                timeout=timeout, auto_decompress=False, trust_env=True, read_bufsize=CHUNK,
                headers={"User-Agent": f"crirt/{__version__}", "Accept-Encoding": "identity"},
                connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=60),
            )
        self._users += 1
        try:
            yield
        finally:
            self._users -= 1
            if not self._users and self._session is not None:
                session, self._session = self._session, None
                await session.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("RegistryClient used outside session()")
        return self._session

    def _ssl_for(self, url: URL) -> ssl.SSLContext | bool:
        return self.registries.ssl_context(_host_of(url)) if url.scheme == "https" else False

    async def _send(self, method: str, url: str, headers: dict[str, str],
                    form: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        """One request, following redirects ourselves so the hop count and the credentials stay ours."""
        target = URL(url, encoded=True)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = await self.http.request(method, target, headers=headers, data=form,
                                                   allow_redirects=False, ssl=self._ssl_for(target))
            except aiohttp.ClientConnectorCertificateError as exc:
                raise Unavailable(f"TLS verification of {target.host} failed ({exc.certificate_error}); "
                                  "set ca_file (or insecure_skip_verify) for it under [registries]") from None
            except aiohttp.ClientSSLError as exc:
                raise Unavailable(f"TLS with {target.host} failed: {exc}") from None
            except aiohttp.ClientConnectorError as exc:
                raise Unavailable(f"cannot connect to {_host_of(target)}: {exc.os_error}") from None
            except TimeoutError:
                raise Unavailable(f"{_host_of(target)} sent nothing for {self.settings.stall_timeout:.0f}s "
                                  "(images.stall_timeout)") from None
            except aiohttp.ClientError as exc:
                raise Unavailable(f"request to {_host_of(target)} failed: {exc}") from None
            if response.status not in _REDIRECTS:
                return response
            location = response.headers.get("Location", "")
            response.release()
            if not location:
                raise Unavailable(f"{target} answered a redirect without a Location")
            following = target.join(URL(location))
            if following.origin() != target.origin():
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            target = following
            if response.status == 303:
                method, form = "GET", None
        raise Unavailable(f"{url}: more than {MAX_REDIRECTS} redirects (a redirect loop?)")

    async def _token_request(self, method: str, url: str, headers: dict[str, str],
                             form: dict[str, str] | None) -> tuple[int, bytes]:
        async with await self._send(method, url, headers, form) as response:
            return response.status, await _read_limited(response, MAX_ERROR_BODY, f"token from {url}")

    async def request(self, endpoint: Endpoint, url: str, scope: str, credentials: Credentials | None,
                      headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        """GET ``url`` of ``endpoint``, answering one authentication challenge; raises for error statuses."""
        headers = dict(headers or {})
        cached = self.authorizer.cached(endpoint.host, scope, credentials)
        if cached:
            headers["Authorization"] = cached
        response = await self._send("GET", url, headers)
        if response.status == 401 and not (credentials and credentials.registry_token):
            challenges = response.headers.getall("WWW-Authenticate", [])
            response.release()
            headers["Authorization"] = await self.authorizer.answer(endpoint.host, challenges, scope, credentials)
            response = await self._send("GET", url, headers)
        if response.status in (200, 206):
            return response
        async with response:
            raise await _status_error(response, endpoint)


async def _read_limited(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    if response.content_length is not None and response.content_length > limit:
        raise ResourceExhausted(f"{what} is {response.content_length} bytes, over the {limit}-byte limit")
    data = bytearray()
    try:
        async for chunk in response.content.iter_chunked(CHUNK):
            data += chunk
            if len(data) > limit:
                raise ResourceExhausted(f"{what} is over the {limit}-byte limit")
    except TimeoutError:
        raise Unavailable(f"{what}: the registry stopped sending") from None
    except aiohttp.ClientError as exc:
        raise Unavailable(f"{what}: connection failed: {exc}") from None
    return bytes(data)


async def _status_error(response: aiohttp.ClientResponse, endpoint: Endpoint) -> CrirtError:
    """The crirt error for an unsuccessful answer, with the registry's own error message if it sent one."""
    detail = ""
    with contextlib.suppress(Exception):
        body = json.loads(await _read_limited(response, MAX_ERROR_BODY, "error"))
        detail = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}" for e in body["errors"][:3])
    where = f"{endpoint} answered HTTP {response.status} for {response.url.path}" + (f" ({detail})" if detail else "")
    if response.status == 404:
        return NotFound(where)
    if response.status in (401, 403):
        return FailedPrecondition(f"{where}: access denied (the repository does not exist, or it needs "
                                  "credentials that were not given or were refused)")
    if response.status == 416:
        return FailedPrecondition(f"{where}: the blob is shorter than its descriptor says")
    return Unavailable(where)


@dataclass
class Repository:
    """One repository of one image reference, reached through its endpoints in order."""

    client: RegistryClient
    ref: Reference
    endpoints: list[Endpoint]
    credentials: Credentials | None
    preferred: Endpoint | None = None

    @property
    def scope(self) -> str:
        return f"repository:{self.ref.path}:pull"

    def _credentials(self, endpoint: Endpoint) -> Credentials | None:
        # CRI credentials are for the image's own registry; a mirror gets only what is configured for it.
        if not endpoint.mirror and self.credentials is not None:
            return self.credentials
        return self.client.registries.configured_credentials(endpoint.host)

    async def _each_endpoint(self, attempt: Callable[[Endpoint], Awaitable[object]]) -> object:
        """Run ``attempt`` on each endpoint in turn (the one that served the manifest first) until one
        succeeds; the last endpoint's error is raised, mentioning the earlier ones."""
        order = self.endpoints if self.preferred is None else [
            self.preferred, *(e for e in self.endpoints if e != self.preferred)]
        failures: list[str] = []
        for endpoint in order:
            try:
                result = await attempt(endpoint)
            except (NotFound, Unavailable, FailedPrecondition) as exc:
                if endpoint is order[-1]:
                    if failures:
                        raise type(exc)(f"{exc} (before that: {'; '.join(failures)})") from None
                    raise
                log.info("%s: %s; trying the next endpoint", self.ref, exc)
                failures.append(str(exc))
                continue
            self.preferred = self.preferred or endpoint
            return result
        raise Unavailable(f"{self.ref}: no endpoint is configured")

    async def manifest(self, name: str, accept: str, limit: int) -> tuple[bytes, str, str]:
        """(body, content type, Docker-Content-Digest header) of the manifest ``name`` (a tag or digest)."""

        async def attempt(endpoint: Endpoint) -> tuple[bytes, str, str]:
            url = endpoint.url(self.ref.path, "manifests", name)
            response = await self.client.request(endpoint, url, self.scope, self._credentials(endpoint),
                                                 {"Accept": accept})
            async with response:
                body = await _read_limited(response, limit, f"manifest {self.ref.name}:{name}")
                return (body, response.headers.get("Content-Type", ""),
                        response.headers.get("Docker-Content-Digest", ""))

        return await self._each_endpoint(attempt)  # type: ignore[return-value]

    async def blob(self, descriptor: Descriptor, limit: int) -> bytes:
        """A small blob (an image config) in memory."""
        if descriptor.size > limit:
            raise ResourceExhausted(f"blob {descriptor.digest} is {descriptor.size} bytes, over the {limit}-byte "
                                    "limit (images.max_manifest_size)")

        async def attempt(endpoint: Endpoint) -> bytes:
            url = endpoint.url(self.ref.path, "blobs", descriptor.digest)
            response = await self.client.request(endpoint, url, self.scope, self._credentials(endpoint))
            async with response:
                return await _read_limited(response, limit, f"blob {descriptor.digest}")

        return await self._each_endpoint(attempt)  # type: ignore[return-value]

    async def stream_blob(self, descriptor: Descriptor, sink: Callable[[bytes], Awaitable[None]],
                          progress: Callable[[int], None]) -> None:
        """Send a blob's bytes to ``sink`` in order, resuming with a Range request after a dropped
        connection (up to ``max_retries`` times), and on the next endpoint (a mirror's origin) at the byte the
        failed one stopped at. Never sends more than the descriptor's size."""
        received = 0
        failures = 0
        settings = self.client.settings
        what = f"blob {descriptor.digest}"

        async def counted(chunk: bytes) -> None:
            nonlocal received
            await sink(chunk)
            received += len(chunk)

        async def attempt(endpoint: Endpoint) -> None:
            nonlocal failures
            while True:
                try:
                    await self._receive(endpoint, descriptor, received, counted, progress, what)
                    return
                except _Resumed as partial:
                    cause = partial.cause
                failures += 1
                if failures > settings.max_retries:
                    raise Unavailable(f"{what} from {endpoint}: connection dropped {failures} times, last at byte "
                                      f"{received} of {descriptor.size} ({cause})")
                log.warning("%s from %s: %s at byte %d of %d; resuming (retry %d of %d)", what, endpoint, cause,
                            received, descriptor.size, failures, settings.max_retries)
                await asyncio.sleep(min(0.1 * 2**failures, 3))

        await self._each_endpoint(attempt)

    async def _receive(self, endpoint: Endpoint, descriptor: Descriptor, start: int,
                       sink: Callable[[bytes], Awaitable[None]], progress: Callable[[int], None], what: str) -> None:
        received = start
        try:
            url = endpoint.url(self.ref.path, "blobs", descriptor.digest)
            headers = {"Range": f"bytes={start}-"} if start else {}
            response = await self.client.request(endpoint, url, self.scope, self._credentials(endpoint), headers)
            async with response:
                skip = 0
                if start and response.status == 200:
                    skip = start  # the server ignored the Range header: drop what we already have
                elif start and not response.headers.get("Content-Range", "").startswith(f"bytes {start}-"):
                    raise Unavailable(f"{what}: {endpoint} answered a resume with the wrong range "
                                      f"{response.headers.get('Content-Range')!r}")
                async for chunk in response.content.iter_chunked(CHUNK):
                    if skip:
                        dropped = min(skip, len(chunk))
                        chunk, skip = chunk[dropped:], skip - dropped
                        if not chunk:
                            continue
                    if received + len(chunk) > descriptor.size:
                        raise FailedPrecondition(f"{what} is larger than the {descriptor.size} bytes its "
                                                 "descriptor says")
                    await sink(chunk)
                    received += len(chunk)
                    progress(len(chunk))
        except TimeoutError:
            raise Unavailable(f"{what}: {endpoint} sent nothing for {self.client.settings.stall_timeout:.0f}s "
                              "(images.stall_timeout); giving up") from None
        except _DROPPED as exc:
            raise _Resumed(f"{type(exc).__name__}: {exc}") from None
        if received < descriptor.size:
            raise _Resumed("the connection closed early")


class _Resumed(Exception):
    """A transfer stopped early; the caller may resume from the bytes its sink got."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause
