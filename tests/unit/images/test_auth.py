"""Registry challenges, credentials and the token flow (against a fake token fetcher)."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from crirt.errors import FailedPrecondition, InvalidArgument, Unavailable
from crirt.images.auth import Authorizer, Challenge, Credentials, parse_challenges


def test_parse_challenges() -> None:
    header = 'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"'
    assert parse_challenges([header]) == [Challenge("bearer", {"realm": "https://auth.example/token",
                                                               "service": "registry.example",
                                                               "scope": "repository:a/b:pull"})]
    both = parse_challenges(['Basic realm="x, y", Bearer realm="r\\"q", error=invalid_token', "Negotiate abc=="])
    assert [(c.scheme, c.params) for c in both] == [("basic", {"realm": "x, y"}),
                                                   ("bearer", {"realm": 'r"q', "error": "invalid_token"}),
                                                   ("negotiate", {})]


def test_credentials() -> None:
    assert Credentials.build() is None
    decoded = Credentials.build(auth=base64.b64encode(b"user:pa:ss").decode())
    assert decoded == Credentials("user", "pa:ss")
    assert "pa:ss" not in repr(decoded)
    with pytest.raises(InvalidArgument):
        Credentials.build(auth="***")
    assert Credentials("a", "b").key != Credentials("a", "c").key


def test_token_flow() -> None:
    calls: list[tuple[str, str, dict[str, str], dict[str, str] | None]] = []

    async def fetch(method: str, url: str, headers: dict[str, str], form: dict[str, str] | None) -> tuple[int, bytes]:
        calls.append((method, url, headers, form))
        if form and form["refresh_token"] == "bad":
            return 401, b""
        return 200, json.dumps({"access_token" if form else "token": "T", "expires_in": 300}).encode()

    async def main() -> None:
        auth = Authorizer(fetch)
        challenge = ['Bearer realm="https://auth/token",service="reg"']
        assert await auth.answer("reg:5000", challenge, "repository:a:pull", None) == "Bearer T"
        assert calls[-1][:3] == ("GET", "https://auth/token?scope=repository%3Aa%3Apull&service=reg", {})
        assert auth.cached("reg:5000", "repository:a:pull", None) == "Bearer T"
        assert auth.cached("reg:5000", "repository:b:pull", None) is None
        user = Credentials("u", "p")
        await auth.answer("reg:5000", challenge, "repository:a:pull", user)
        assert calls[-1][2]["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
        await auth.answer("reg:5000", challenge, "repository:a:pull", Credentials(identity_token="refresh"))
        assert calls[-1][0] == "POST" and calls[-1][3]["grant_type"] == "refresh_token"
        with pytest.raises(FailedPrecondition, match="refused the credentials"):
            await auth.answer("reg:5000", challenge, "repository:a:pull", Credentials(identity_token="bad"))
        assert auth.cached("r", "s", Credentials(registry_token="RT")) == "Bearer RT"
        assert await auth.answer("r", ['Basic realm="x"'], "s", user) == "Basic " + base64.b64encode(b"u:p").decode()
        with pytest.raises(FailedPrecondition, match="requires a username and password"):
            await auth.answer("r", ['Basic realm="x"'], "s", None)
        with pytest.raises(Unavailable, match="unusable token service"):
            await auth.answer("r", ['Bearer realm="ftp://x"'], "s", None)

    asyncio.run(main())
