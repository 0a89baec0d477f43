"""Who gets into /admin: off by default, password login, cookie, CSRF, Basic read-only, throttle."""

from __future__ import annotations

import base64
import re
import threading
import time

import anyio
import argon2
import bcrypt
import httpx
import pytest

from relay.admin.auth import HASH_CHECKS, AdminAuth
from relay.settings import Settings
from tests.admin.helpers import PASSWORD, admin_client
from tests.conftest import RelayFactory

pytestmark = pytest.mark.anyio

READS = ["/admin/api/session", "/admin/api/overview", "/admin/api/events",
         "/admin/api/peers/alice", "/admin/api/rooms/r", "/admin/api/stream"]  # fmt: skip
ACTIONS = ["/admin/api/disconnect", "/admin/api/remove", "/admin/api/publish"]


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_without_a_password_admin_is_404(relay_factory: RelayFactory) -> None:
    relay = await relay_factory()
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        for path in ["/admin", "/admin/", "/admin/admin.js", *READS]:
            response = await client.get(path, headers=basic("admin", ""))
            assert response.status_code == 404, path
        response = await client.post("/admin/login", json={"password": ""})
        assert response.status_code == 404
    assert relay.app.state.admin is None


async def test_without_credentials_every_read_and_action_is_401(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(admin_password=PASSWORD, api_keys=("an-api-key",))
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        for path in READS:
            response = await client.get(path)
            assert response.status_code == 401, path
            assert response.json()["error"] == "unauthorized"
            assert response.headers["www-authenticate"].startswith("Basic")
            # an API key is no admin credential
            response = await client.get(path, headers={"Authorization": "Bearer an-api-key"})
            assert response.status_code == 401, path
        for path in ACTIONS:
            assert (await client.post(path, json={"peer": "alice"})).status_code == 401
        # a browser's fetch gets no Basic challenge (no native dialog over the page)
        response = await client.get(READS[0], headers={"Sec-Fetch-Mode": "cors"})
        assert "www-authenticate" not in response.headers


async def test_every_answer_has_the_strict_headers(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(admin_password=PASSWORD)
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        for response in [await client.get("/admin/api/overview"), await client.get("/admin/nope")]:
            csp = response.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert response.headers["cache-control"] == "no-store"


async def test_login_sets_a_strict_cookie_and_gives_a_csrf_token(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(admin_password=PASSWORD, admin_session_seconds=60)
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        response = await client.post("/admin/login", json={"password": PASSWORD})
        assert response.status_code == 200
        cookie = response.headers["set-cookie"].lower()
        for part in ["relay_admin=", "httponly", "samesite=strict", "path=/admin", "max-age=60"]:
            assert part in cookie
        assert "secure" not in cookie  # plain HTTP from a client that is no trusted proxy
        body = response.json()
        assert body["csrf"] and body["read_only"] is False
        session = await client.get("/admin/api/session")
        assert session.status_code == 200
        assert session.json()["csrf"] == body["csrf"]
        await client.post("/admin/logout")
        assert (await client.get("/admin/api/session")).status_code == 401
        # a form (which another site's page could post) is no login
        form = await client.post("/admin/login", data={"password": PASSWORD})
        assert form.status_code == 415 and "set-cookie" not in form.headers


async def test_the_cookie_is_secure_behind_a_trusted_tls_proxy(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(admin_password=PASSWORD)  # 127.0.0.1 is a trusted proxy
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        response = await client.post(
            "/admin/login", json={"password": PASSWORD}, headers={"X-Forwarded-Proto": "https"}
        )
        assert "secure" in response.headers["set-cookie"].lower()
    untrusted = await relay_factory(admin_password=PASSWORD, trusted_proxies=())
    async with httpx.AsyncClient(base_url=untrusted.http_url) as client:
        response = await client.post(
            "/admin/login", json={"password": PASSWORD}, headers={"X-Forwarded-Proto": "https"}
        )
        assert "secure" not in response.headers["set-cookie"].lower()


async def test_a_forged_or_foreign_cookie_is_refused(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(admin_password=PASSWORD)
    other = await relay_factory(admin_password="another password entirely")
    async with admin_client(other.http_url, "another password entirely") as logged_in:
        foreign = logged_in.cookies["relay_admin"]
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        for cookie in [foreign, "e30.AAAA", "garbage", foreign.replace(".", "x.", 1)]:
            client.cookies.set("relay_admin", cookie)
            assert (await client.get("/admin/api/overview")).status_code == 401


async def test_every_node_configured_alike_accepts_the_cookie(
    relay_factory: RelayFactory,
) -> None:
    one = await relay_factory(admin_password=PASSWORD)
    two = await relay_factory(admin_password=PASSWORD)
    async with admin_client(one.http_url) as client:
        response = await client.get(f"{two.http_url}/admin/api/session")
        assert response.status_code == 200
        assert response.json()["csrf"] == client.headers["X-CSRF-Token"]


def test_a_session_expires() -> None:
    now = [1000.0]
    settings = Settings(admin_password=PASSWORD, admin_session_seconds=60)
    auth = AdminAuth(settings, clock=lambda: now[0])
    cookie, session = auth.issue()
    assert auth.session(cookie) == session
    now[0] += 59
    assert auth.session(cookie) is not None
    now[0] += 2
    assert auth.session(cookie) is None


async def test_failed_logins_are_throttled_per_address(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(admin_password=PASSWORD)
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        for _ in range(AdminAuth.LOGIN_BURST):
            assert (await client.post("/admin/login", json={"password": "x"})).status_code == 401
        refused = await client.post("/admin/login", json={"password": PASSWORD})
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        # Basic counts against the same budget
        response = await client.get("/admin/api/overview", headers=basic("admin", PASSWORD))
        assert response.status_code == 429


async def test_basic_reads_but_never_acts(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(admin_password=PASSWORD)
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        good = basic("admin", PASSWORD)
        assert (await client.get("/admin/api/overview", headers=good)).status_code == 200
        session = (await client.get("/admin/api/session", headers=good)).json()
        assert session["read_only"] is True and session["csrf"] is None
        for headers in [basic("root", PASSWORD), basic("admin", "wrong")]:
            assert (await client.get("/admin/api/overview", headers=headers)).status_code == 401
        response = await client.post("/admin/api/disconnect", json={"peer": "a"}, headers=good)
        assert response.status_code == 403


@pytest.mark.parametrize(
    "hashed",
    [
        bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode(),
        argon2.PasswordHasher(time_cost=1, memory_cost=1024).hash(PASSWORD),
    ],
    ids=["bcrypt", "argon2"],
)
async def test_a_hash_is_accepted_as_the_password(relay_factory: RelayFactory, hashed: str) -> None:
    relay = await relay_factory(admin_password=hashed)
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        assert (await client.post("/admin/login", json={"password": hashed})).status_code == 401
        for headers in [basic("admin", PASSWORD), basic("admin", PASSWORD)]:  # once cached
            assert (await client.get("/admin/api/overview", headers=headers)).status_code == 200
    async with admin_client(relay.http_url) as client:
        assert (await client.get("/admin/api/overview")).status_code == 200


async def test_an_action_needs_the_csrf_token(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(admin_password=PASSWORD)
    async with admin_client(relay.http_url) as client:
        token = client.headers.pop("X-CSRF-Token")
        for headers in [{}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": token[:-1]}]:
            response = await client.post(
                "/admin/api/disconnect", json={"peer": "a"}, headers=headers
            )
            assert response.status_code == 403
            assert response.json()["error"] == "csrf"
        response = await client.post(
            "/admin/api/disconnect", json={"peer": "a"}, headers={"X-CSRF-Token": token}
        )
        assert response.status_code == 200


async def test_read_only_mode_refuses_every_action(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(admin_password=PASSWORD, admin_read_only=True)
    async with admin_client(relay.http_url) as client:
        assert (await client.get("/admin/api/session")).json()["read_only"] is True
        for path in ACTIONS:
            response = await client.post(path, json={"peer": "a", "room": "r", "d": 1})
            assert response.status_code == 403, path
            assert response.json()["error"] == "read-only"


async def test_the_page_is_served_without_inline_scripts_or_styles(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(admin_password=PASSWORD)
    async with httpx.AsyncClient(base_url=relay.http_url) as client:
        page = await client.get("/admin/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert (await client.get("/admin")).status_code in (200, 307)
        for name in ["admin.js", "admin.css", "uplot.js", "uplot.css", "uplot.LICENSE.txt"]:
            response = await client.get(f"/admin/{name}")
            assert response.status_code == 200, name
            assert response.headers["cache-control"] == "no-store"
    html = page.text
    assert re.findall(r"<script\b[^>]*>", html) == ['<script type="module" src="admin.js">']
    assert not re.search(r"\son[a-z]+=|\sstyle=|javascript:", html, re.IGNORECASE)


async def test_slow_hash_checks_run_two_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    auth = AdminAuth(Settings(admin_password=hashed))
    running, most = 0, 0
    lock = threading.Lock()

    def slow_check(given: str, hashed: str) -> bool:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)  # in a worker thread: what bcrypt's cost feels like
        with lock:
            running -= 1
        return False

    monkeypatch.setattr("relay.admin.auth._matches_hash", slow_check)
    async with anyio.create_task_group() as tasks:
        for n in range(8):
            tasks.start_soon(auth.check_password, f"guess {n}")
    assert most == HASH_CHECKS == 2
