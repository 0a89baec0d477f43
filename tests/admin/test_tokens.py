"""Admin JWTs: a token the hello-token keys verify, with the relay_admin claim, logs in."""

from __future__ import annotations

import httpx
import pytest

from relay.settings import SettingError, Settings
from tests.admin.helpers import PASSWORD
from tests.conftest import RelayFactory
from tests.jwtkit import SECRET, hs256
from tests.peers import join_as

pytestmark = pytest.mark.anyio


async def log_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    response = await client.post("/admin/login", json={"token": token})
    if response.status_code == 200:
        client.headers["X-CSRF-Token"] = response.json()["csrf"]
    return response


async def test_an_operate_token_logs_in_and_acts_as_its_sub(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    relay = await relay_factory(admin_jwt=True, jwt_secret=SECRET)
    bob = await join_as(relay.url, "bob", token=hs256("bob"))
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        response = await log_in(client, hs256("ops-carol", relay_admin="operate"))
        assert response.status_code == 200
        assert response.json()["user"] == "ops-carol" and response.json()["read_only"] is False
        disconnected = await client.post("/admin/api/disconnect", json={"peer": "bob"})
        assert disconnected.json()["disconnected"] is True
    assert await bob.closed() == 4504
    assert any("ops-carol (session" in record.getMessage() for record in caplog.records)


async def test_a_read_token_reads_only(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(admin_jwt=True, jwt_secret=SECRET)
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        assert (await log_in(client, hs256("watcher", relay_admin="read"))).status_code == 200
        assert (await client.get("/admin/api/session")).json()["read_only"] is True
        assert (await client.get("/admin/api/overview")).status_code == 200
        refused = await client.post("/admin/api/disconnect", json={"peer": "bob"})
        assert refused.status_code == 403 and refused.json()["error"] == "read-only"


@pytest.mark.parametrize(
    "token",
    [
        hs256("alice"),  # a peer's token: no admin claim
        hs256("alice", relay_admin="root"),
        hs256("alice", relay_admin=True),
        hs256("alice", ttl=-10, relay_admin="operate"),  # expired
        hs256("alice", secret="another-secret-that-is-long-enough!!", relay_admin="operate"),
        "garbage",
    ],
)
async def test_other_tokens_are_refused(relay_factory: RelayFactory, token: str) -> None:
    relay = await relay_factory(admin_jwt=True, jwt_secret=SECRET)
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        response = await log_in(client, token)
        assert response.status_code == 401
        assert "set-cookie" not in response.headers


async def test_tokens_log_in_only_when_admin_jwt_is_on(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(admin_password=PASSWORD, jwt_secret=SECRET)
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        assert (await log_in(client, hs256("x", relay_admin="operate"))).status_code == 401


async def test_with_admin_jwts_only_no_password_opens_the_page(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(admin_jwt=True, jwt_secret=SECRET)
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        for password in ["", SECRET]:
            response = await client.post("/admin/login", json={"password": password})
            assert response.status_code == 401
        basic = httpx.BasicAuth("admin", "")
        assert (await client.get("/admin/api/overview", auth=basic)).status_code == 401


async def test_the_session_ends_with_the_token(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(admin_jwt=True, jwt_secret=SECRET, admin_session_seconds=900)
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        response = await log_in(client, hs256("carol", ttl=30, relay_admin="operate"))
        max_age = int(response.headers["set-cookie"].lower().split("max-age=")[1].split(";")[0])
        assert 25 <= max_age <= 30


def test_admin_jwts_need_a_key_to_verify_and_one_to_sign_cookies() -> None:
    with pytest.raises(SettingError, match="need a JWT key"):
        Settings(admin_jwt=True)
    with pytest.raises(SettingError, match="admin_session_secret"):
        Settings(admin_jwt=True, jwt_public_key_file="key.pem")
    Settings(admin_jwt=True, jwt_public_key_file="key.pem", admin_session_secret="k" * 32)
