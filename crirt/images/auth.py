"""Registry authentication: credentials, ``WWW-Authenticate`` challenges, and bearer tokens.

A registry that wants authentication answers 401 with a challenge. ``Basic`` gets the username and
password. ``Bearer`` names a token service (realm, service, scope): crirt asks it for a token, with no
credentials (anonymous pulls from public repositories), with the username and password (HTTP basic), or
with an identity token (OAuth2 refresh-token grant, as ``docker login`` stores them). A registry token from
the CRI ``AuthConfig`` is sent as the bearer token as it is. Tokens are cached until shortly before they
expire, per registry host, scope and credentials.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from crirt.errors import FailedPrecondition, InvalidArgument, Unavailable

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_SCHEME = re.compile(rf"\s*({_TOKEN})")
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|{_TOKEN})\s*(?:,|$)')
DEFAULT_TOKEN_LIFETIME = 60
TOKEN_MARGIN = 10
"""Seconds before its expiry at which a cached token is no longer used."""


@dataclass(frozen=True)
class Credentials:
    """What crirt may present to a registry; secrets stay out of ``repr``."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)

    @classmethod
    def build(cls, username: str = "", password: str = "", auth: str = "", identity_token: str = "",
              registry_token: str = "") -> Credentials | None:
        """From CRI ``AuthConfig`` or config fields; ``auth`` is base64 of ``user:password``. None if empty."""
        if auth and not username:
            try:
                username, _, password = base64.b64decode(auth, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise InvalidArgument("auth: not base64 of 'username:password'") from None
        if not (username or password or identity_token or registry_token):
            return None
        return cls(username, password, identity_token, registry_token)

    @property
    def key(self) -> str:
        """Tells credentials apart in caches without keeping the secrets in the key."""
        secret = "\0".join((self.username, self.password, self.identity_token, self.registry_token))
        return hashlib.sha256(secret.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Challenge:
    scheme: str
    params: dict[str, str]


def parse_challenges(headers: list[str]) -> list[Challenge]:
    """The challenges of ``WWW-Authenticate`` headers; one header may hold several, comma-separated."""
    challenges = []
    for header in headers:
        position = 0
        while position < len(header):
            while position < len(header) and header[position] in " ,":
                position += 1
            scheme = _SCHEME.match(header, position)
            if scheme is None:
                break
            position = scheme.end()
            params: dict[str, str] = {}
            while (param := _PARAM.match(header, position)) is not None:
                value = param.group(2)
                if value.startswith('"'):
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
                params[param.group(1).lower()] = value
                position = param.end()
            if not params:  # token68 or garbage: skip to the next comma
                comma = header.find(",", position)
                position = len(header) if comma < 0 else comma
            challenges.append(Challenge(scheme.group(1).lower(), params))
    return challenges


def basic_header(credentials: Credentials) -> str:
    pair = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(pair).decode()


TokenFetch = Callable[[str, str, dict[str, str], dict[str, str] | None], Awaitable[tuple[int, bytes]]]
"""(method, url, headers, form or None) -> (status, body): how the authorizer talks to a token service."""


@dataclass
class Authorizer:
    """Answers challenges and remembers the resulting ``Authorization`` headers."""

    fetch: TokenFetch
    _cache: dict[tuple[str, str, str], tuple[str, float]] = field(default_factory=dict)
    _challenges: dict[str, Challenge] = field(default_factory=dict)

    def cached(self, host: str, scope: str, credentials: Credentials | None) -> str | None:
        """A still valid header for this host, scope and credentials, if one was obtained before."""
        if credentials is not None and credentials.registry_token:
            return f"Bearer {credentials.registry_token}"
        key = (host, scope, credentials.key if credentials else "")
        entry = self._cache.get(key)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    async def answer(self, host: str, headers: list[str], scope: str, credentials: Credentials | None) -> str:
        """Obtain an ``Authorization`` header for a 401 answer's challenges (Bearer preferred over Basic)."""
        challenges = {c.scheme: c for c in parse_challenges(headers)}
        key = (host, scope, credentials.key if credentials else "")
        if "bearer" in challenges and "realm" in challenges["bearer"].params:
            header, lifetime = await self._token(host, challenges["bearer"], scope, credentials)
            self._cache[key] = (header, time.monotonic() + max(lifetime - TOKEN_MARGIN, 1))
            return header
        if "basic" in challenges:
            if credentials is None or not credentials.username:
                raise FailedPrecondition(f"registry {host} requires a username and password, and none were given "
                                         "(CRI AuthConfig or the registry's config)")
            header = basic_header(credentials)
            self._cache[key] = (header, float("inf"))
            return header
        raise FailedPrecondition(f"registry {host} asks for authentication crirt does not speak: {headers!r}")

    async def _token(self, host: str, challenge: Challenge, scope: str,
                     credentials: Credentials | None) -> tuple[str, int]:
        realm = challenge.params["realm"]
        if not realm.startswith(("https://", "http://")):
            raise Unavailable(f"registry {host} names an unusable token service {realm!r}")
        query = {"scope": scope} if scope else {}
        if "service" in challenge.params:
            query["service"] = challenge.params["service"]
        headers: dict[str, str] = {}
        form = None
        if credentials is not None and credentials.identity_token:
            form = {**query, "grant_type": "refresh_token", "refresh_token": credentials.identity_token,
                    "client_id": "crirt", "access_type": "offline"}
        elif credentials is not None and credentials.username:
            headers["Authorization"] = basic_header(credentials)
            query.update(account=credentials.username, client_id="crirt")
        url = realm if form is not None else _with_query(realm, query)
        status, body = await self.fetch("POST" if form is not None else "GET", url, headers, form)
        if status in (401, 403):
            raise FailedPrecondition(f"the token service of registry {host} ({realm}) refused the credentials "
                                     f"(HTTP {status})")
        if status != 200:
            raise Unavailable(f"the token service of registry {host} ({realm}) answered HTTP {status}")
        return _parse_token(body, host)


def _with_query(url: str, query: dict[str, str]) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(query) if query else url


def _parse_token(body: bytes, host: str) -> tuple[str, int]:
    try:
        document: Any = json.loads(body)
        token = document.get("token") or document.get("access_token")
        lifetime = int(document.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
    except (ValueError, AttributeError, TypeError):
        raise Unavailable(f"the token service of registry {host} answered garbage") from None
    if not isinstance(token, str) or not token:
        raise Unavailable(f"the token service of registry {host} answered without a token")
    return f"Bearer {token}", lifetime
