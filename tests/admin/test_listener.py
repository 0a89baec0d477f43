"""``admin_listen``: /admin only on a second listener of the same node, 404 on the relay's port."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NamedTuple

import anyio
import httpx
import pytest
from click.testing import CliRunner
from websockets.exceptions import InvalidStatus

from relay.app import create_app
from relay.cli import main
from relay.listen import bind, bind_admin
from relay.server import uvicorn_config
from relay.settings import SettingError, Settings
from tests.admin.helpers import PASSWORD, admin_client
from tests.inloop import InLoopServer
from tests.peers import join_as
from tests.relay_process import relay_process

pytestmark = pytest.mark.anyio


class TwoListeners(NamedTuple):
    relay_url: str  # http:// of the relay's own port
    admin_url: str  # http:// of the admin listener


@asynccontextmanager
async def serving_two(admin_listen: str = "127.0.0.1:0") -> AsyncIterator[TwoListeners]:
    """One node on two listeners bound as ``relay serve`` binds them, in this loop."""
    settings = Settings(
        port=0, log_level="warning", admin_password=PASSWORD, admin_listen=admin_listen
    )
    sockets = bind(settings.host, settings.port)
    admin, address = bind_admin(settings.admin_listen, sockets)
    settings = settings.replace(admin_listen=address)
    server = InLoopServer(uvicorn_config(create_app(settings), settings))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve, [*sockets, *admin])
        with anyio.fail_after(10):
            await server.ready.wait()
        port = sockets[0].getsockname()[1]
        try:
            yield TwoListeners(f"http://127.0.0.1:{port}", f"http://{address}")
        finally:
            server.should_exit = True


async def test_admin_is_served_only_on_its_listener() -> None:
    async with serving_two() as urls:
        await join_as(urls.relay_url.replace("http", "ws") + "/v1/ws", "alice")
        async with httpx.AsyncClient(base_url=urls.relay_url) as relay:
            for path in ["/admin", "/admin/", "/admin/admin.js", "/admin/api/session"]:
                assert (await relay.get(path)).status_code == 404, path
            login = await relay.post("/admin/login", json={"password": PASSWORD})
            assert login.status_code == 404
            assert (await relay.get("/healthz")).status_code == 200  # the rest as ever
        async with httpx.AsyncClient(base_url=urls.admin_url) as admin:
            page = await admin.get("/admin/")
            assert page.status_code == 200 and 'id="login-form"' in page.text
            assert (await admin.get("/admin/uplot.js")).status_code == 200
            assert (await admin.get("/admin/api/session")).status_code == 401
            # The admin listener serves the page and nothing else.
            for path in ["/healthz", "/metrics", "/", "/client.js"]:
                assert (await admin.get(path)).status_code == 404, path
        async with admin_client(urls.admin_url) as client:
            nodes = (await client.get("/admin/api/overview")).json()["nodes"]
            state = (await client.get("/admin/api/peers/alice")).json()
        assert nodes[0]["connections"] == 1  # the same node: its peers, its figures
        assert state["connected"] is True


async def test_no_websocket_on_the_admin_listener() -> None:
    async with serving_two() as urls:
        with pytest.raises(InvalidStatus) as refused:
            await join_as(urls.admin_url.replace("http", "ws") + "/v1/ws", "mallory")
        assert refused.value.response.status_code == 403
        await join_as(urls.relay_url.replace("http", "ws") + "/v1/ws", "alice")


def test_admin_listen_is_checked() -> None:
    with pytest.raises(SettingError, match="needs the page on"):
        Settings(admin_listen="127.0.0.1:9090")
    with pytest.raises(SettingError, match="other than port"):
        Settings(admin_password=PASSWORD, admin_listen="127.0.0.1:8080")
    for bad in ["9090", "127.0.0.1", "::1:9090", "host:99999", "host:x"]:
        with pytest.raises(SettingError, match="host:port"):
            Settings(admin_password=PASSWORD, admin_listen=bad)
    assert Settings(admin_password=PASSWORD, admin_listen="[::1]:9090").admin_listen


def test_an_admin_port_in_use_stops_serve_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            main,
            ["serve", "--port", "0", "--admin-listen", f"127.0.0.1:{port}"],
            env={"RELAY_ADMIN_PASSWORD": PASSWORD},
        )
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"Error: --admin-listen 127.0.0.1:{port}: 127.0.0.1:{port} is already in use "
        "(another relay, or another program)\n"
    )


def test_relay_check_names_the_admin_listener() -> None:
    result = CliRunner().invoke(
        main,
        ["check", "--admin-listen", "127.0.0.1:9090"],
        env={"RELAY_ADMIN_PASSWORD": PASSWORD},
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == (
        "The settings are valid: relay serve would listen on 127.0.0.1, port 8080; "
        "/admin only on 127.0.0.1:9090."
    )


async def test_relay_serve_serves_admin_only_on_its_listener() -> None:
    flags = ("--admin-listen", "127.0.0.1:0")
    startup: list[str] = []
    env = {"RELAY_ADMIN_PASSWORD": PASSWORD}
    with relay_process(*flags, env=env, startup=startup) as (_, url):
        line = startup[-2]  # just before the ready line
        found = re.fullmatch(r"admin page only on (http://127\.0\.0\.1:\d+)/admin/\n", line)
        assert found, startup
        admin_url, relay_url = (
            found.group(1),
            url.replace("ws://", "http://").removesuffix("/v1/ws"),
        )
        assert admin_url != relay_url
        async with httpx.AsyncClient(base_url=relay_url) as relay:
            assert (await relay.get("/admin/")).status_code == 404
            assert (await relay.get("/readyz")).status_code == 200
        async with admin_client(admin_url) as client:
            page = await client.get("/admin/")
            session = await client.get("/admin/api/session")
        assert 'id="login-form"' in page.text
        assert session.json()["user"] == "admin"
