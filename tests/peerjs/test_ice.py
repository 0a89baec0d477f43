"""GET /v1/ice-servers: STUN URLs, TURN URLs with coturn use-auth-secret credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import httpx
import pytest
from click.testing import CliRunner

from relay.app import create_app
from relay.cli import main
from relay.ice import IceServers, turn_credential
from relay.settings import Settings
from tests.conftest import RelayFactory
from tests.jwtkit import SECRET, hs256

pytestmark = pytest.mark.anyio

TURN = ("turn:127.0.0.1:3478?transport=udp", "turns:turn.example.com:5349")
STUN = ("stun:127.0.0.1:3478",)


async def get(relay_url: str, path: str = "/v1/ice-servers", **kwargs: object) -> httpx.Response:
    async with httpx.AsyncClient(base_url=relay_url) as http:
        return await http.get(path, **kwargs)  # type: ignore[arg-type]


async def test_nothing_configured_gives_an_empty_list(relay_factory: RelayFactory) -> None:
    relay = await relay_factory()
    response = await get(relay.http_url)
    assert response.status_code == 200
    assert response.json() == {"iceServers": [], "ttl": 14400}


async def test_turn_credentials_in_the_coturn_shared_secret_scheme(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(
        stun_urls=STUN, turn_urls=TURN, turn_secret="coturn-secret", turn_ttl_seconds=600
    )
    before = int(time.time())
    response = await get(relay.http_url, params={"id": "alice"})
    after = int(time.time())
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["ttl"] == 600
    stun, turn = body["iceServers"]
    assert stun == {"urls": list(STUN)}
    assert turn["urls"] == list(TURN)
    expiry, peer = turn["username"].split(":", 1)
    assert peer == "alice" and before + 600 <= int(expiry) <= after + 600
    expected = hmac.new(b"coturn-secret", turn["username"].encode(), hashlib.sha1).digest()
    assert base64.b64decode(turn["credential"]) == expected
    anonymous = (await get(relay.http_url)).json()["iceServers"][1]
    assert anonymous["username"].endswith(":anonymous")
    bad = await get(relay.http_url, params={"id": "not an id!"})
    assert bad.status_code == 400 and bad.json()["error"] == "bad-request"


def test_the_credential_is_base64_hmac_sha1_of_the_username() -> None:
    # RFC 2202 test case 2, in the scheme's encoding
    assert turn_credential("Jefe", "what do ya want for nothing?") == (
        base64.b64encode(bytes.fromhex("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")).decode()
    )
    clock = lambda: 1_000_000.0  # noqa: E731
    ice = IceServers(Settings(turn_urls=TURN, turn_secret="s", turn_ttl_seconds=59.5), clock)
    assert ice.for_peer("a:b")["iceServers"][0]["username"] == "1000060:a:b"


async def test_with_auth_the_caller_is_a_peer_with_a_token(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(jwt_secret=SECRET, turn_urls=TURN, turn_secret="coturn-secret")
    missing = await get(relay.http_url)
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    for header in ("Bearer not-a-jwt", f"Bearer {hs256('alice', ttl=-5)}", "Basic abc"):
        refused = await get(relay.http_url, headers={"Authorization": header})
        assert refused.status_code == 401, header
        assert refused.json()["error"] == "unauthorized"
    token = hs256("alice")
    granted = await get(relay.http_url, headers={"Authorization": f"Bearer {token}"})
    assert granted.json()["iceServers"][0]["username"].endswith(":alice")
    # with auth on, ?id= names nobody: the token does
    other = await get(
        relay.http_url, params={"id": "bob"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert other.json()["iceServers"][0]["username"].endswith(":alice")


async def test_cors_follows_the_origin_allow_list(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(origins=("https://app.example",))
    page = {"Origin": "https://app.example"}
    allowed = await get(relay.http_url, headers=page)
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    foreign = await get(relay.http_url, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in foreign.headers
    async with httpx.AsyncClient(base_url=relay.http_url) as http:
        preflight = await http.options(
            "/v1/ice-servers",
            headers={
                **page,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        refused = await http.options(
            "/v1/ice-servers",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert refused.status_code == 400
        assert (await http.post("/v1/ice-servers")).status_code == 405


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"turn_urls": TURN}, "need turn_secret"),
        ({"turn_urls": ("http://turn.example.com",), "turn_secret": "s"}, "turn: or turns:"),
        ({"stun_urls": ("turn:x",)}, "stun: or stuns:"),
        ({"turn_ttl_seconds": 0.0}, "a number > 0"),
    ],
)
def test_inconsistent_settings_are_refused(settings: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        create_app(Settings(**settings))  # type: ignore[arg-type]


def test_relay_serve_reports_them_as_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["serve", "--turn-urls", "turn:127.0.0.1:3478"])
    assert result.exit_code == 2
    assert "need turn_secret" in result.output
    listed = CliRunner().invoke(
        main,
        ["serve", "--turn-urls", "nope"],
        env={"RELAY_TURN_SECRET": "s"},
    )
    assert "expected a turn: or turns: URL" in listed.output
