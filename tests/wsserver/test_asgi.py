"""ASGI mode: any app, Starlette's WebSocket included, runs unchanged on the frame layer."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay.server import uvicorn_config
from relay.settings import Settings
from relay.wsserver import RelayWebSocketProtocol
from tests.wsserver.conftest import Serve
from tests.wsserver.frames import RawStream, client_frame

pytestmark = pytest.mark.anyio


async def echo(websocket: WebSocket) -> None:
    chat = "chat" if "chat" in websocket.scope["subprotocols"] else None
    await websocket.accept(subprotocol=chat, headers=[(b"x-extra", b"yes")])
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"].upper())
            else:
                await websocket.send_bytes(message["bytes"][::-1])
    except WebSocketDisconnect:
        return


async def scope_of(websocket: WebSocket) -> None:
    await websocket.accept()
    scope = websocket.scope
    await websocket.send_json(
        {
            "asgi": scope["asgi"],
            "http_version": scope["http_version"],
            "scheme": scope["scheme"],
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode(),
            "root_path": scope["root_path"],
            "query_string": scope["query_string"].decode(),
            "subprotocols": scope["subprotocols"],
            "client": list(scope["client"]),
            "server": list(scope["server"]),
            "extensions": sorted(scope["extensions"]),
            "state": dict(scope["state"]),
            "x-test": dict(scope["headers"]).get(b"x-test", b"").decode(),
        }
    )
    await websocket.close()


async def deny(websocket: WebSocket) -> None:
    await websocket.send_denial_response(PlainTextResponse("no entry", status_code=418))


async def close_first(websocket: WebSocket) -> None:
    await websocket.close()


def starlette(**routes: Any) -> Starlette:
    return Starlette(routes=[WebSocketRoute(path, endpoint) for path, endpoint in routes.items()])


async def test_starlette_echo_with_text_and_bytes(serve: Serve) -> None:
    served = await serve(starlette(**{"/echo": echo}))
    async with connect(served.url + "/echo", subprotocols=["chat", "other"]) as ws:
        assert ws.subprotocol == "chat"
        assert ws.response is not None and ws.response.headers["x-extra"] == "yes"
        await ws.send("hello")
        assert await ws.recv() == "HELLO"
        await ws.send(b"\x01\x02\x03")
        assert await ws.recv() == b"\x03\x02\x01"
        await ws.send(["frag", "mented"])
        assert await ws.recv() == "FRAGMENTED"
    assert ws.close_code == 1000


async def test_the_scope_is_complete(serve: Serve) -> None:
    served = await serve(starlette(**{"/scope/{rest}": scope_of}), root_path="/base")
    url = served.url + "/scope/a%20b?q=1"
    async with connect(url, subprotocols=["p1", "p2"], additional_headers={"X-Test": "t"}) as ws:
        scope = await ws.recv()
        local = list(ws.local_address[:2])
    seen = json.loads(scope)
    assert seen == {
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": "/base/scope/a b",
        "raw_path": "/base/scope/a%20b",
        "root_path": "/base",
        "query_string": "q=1",
        "subprotocols": ["p1", "p2"],
        "client": local,
        "server": ["127.0.0.1", served.port],
        "extensions": ["relay.direct", "websocket.http.response"],
        "state": {},
        "x-test": "t",
    }


async def test_proxy_headers_apply_to_the_websocket_scope(serve: Serve) -> None:
    served = await serve(
        starlette(**{"/scope": scope_of}), proxy_headers=True, forwarded_allow_ips="127.0.0.1"
    )
    async with connect(
        served.url + "/scope",
        additional_headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"},
    ) as ws:
        seen = json.loads(await ws.recv())
    assert (seen["client"], seen["scheme"]) == (["203.0.113.7", 0], "wss")


async def test_a_denial_response_is_a_plain_http_response(serve: Serve) -> None:
    served = await serve(starlette(**{"/deny": deny}))
    with pytest.raises(InvalidStatus) as caught:
        async with connect(served.url + "/deny"):
            pass
    response = caught.value.response
    assert response.status_code == 418
    assert response.body == b"no entry"
    assert response.headers["content-type"].startswith("text/plain")


async def test_close_before_accept_is_403(serve: Serve) -> None:
    served = await serve(starlette(**{"/closed": close_first}))
    stream = await RawStream.open(served.port, "/closed")
    assert stream.status == 403
    assert await stream.read_body() == b""
    stream.close()


async def test_an_unknown_path_is_starlettes_403(serve: Serve) -> None:
    served = await serve(starlette(**{"/echo": echo}))
    stream = await RawStream.open(served.port, "/nowhere")
    assert stream.status == 403
    stream.close()


async def test_an_app_returning_without_accepting_gets_500_and_no_error_log(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    async def silent(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"

    served = await serve(silent)
    stream = await RawStream.open(served.port)
    assert stream.status == 500
    await stream.read_body()
    stream.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("returned without accepting" in r.getMessage() for r in caplog.records)


async def test_a_denial_logs_no_error(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    served = await serve(starlette(**{"/deny": deny}))
    stream = await RawStream.open(served.port, "/deny")
    assert (stream.status, await stream.read_body()) == (418, b"no entry")
    stream.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_app_that_raises_gets_500_or_1011_with_an_error_log(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    async def before(websocket: WebSocket) -> None:
        raise RuntimeError("bug before accept")

    async def after(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_bytes()
        raise RuntimeError("bug after accept")

    served = await serve(starlette(**{"/before": before, "/after": after}))
    stream = await RawStream.open(served.port, "/before")
    assert stream.status == 500
    await stream.read_body()
    stream.close()
    async with connect(served.url + "/after") as ws:
        await ws.send(b"trigger")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1011
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all(r.exc_info for r in errors)


class TakesAtOnce:
    """An app with ``take_websocket`` (``TakesWebSockets``), doing what ``how`` says.

    ``how``: "deny" answers 418 at once, "accept" accepts in ASGI mode, "decline"
    leaves the connection to ``__call__``, "silent" returns True without answering,
    "raise" fails.
    """

    def __init__(self, how: str) -> None:
        self.how = how
        self.called = 0  # times __call__ ran

    def take_websocket(self, scope: Any, answer: Any) -> bool:
        if self.how == "decline":
            return False
        if self.how == "raise":
            raise RuntimeError("bug in take_websocket")
        if self.how == "deny":
            answer({"type": "websocket.http.response.start", "status": 418, "headers": []})
            answer({"type": "websocket.http.response.body", "body": b"not now"})
        elif self.how == "accept":
            answer({"type": "websocket.accept"})
        return True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.called += 1
        await deny(WebSocket(scope, receive, send))


@pytest.mark.parametrize(
    ("how", "status", "body"),
    [("deny", 418, b"not now"), ("decline", 418, b"no entry"), ("silent", 500, None),
     ("raise", 500, None)],
)  # fmt: skip
async def test_an_app_may_answer_the_upgrade_at_once(
    serve: Serve, caplog: pytest.LogCaptureFixture, how: str, status: int, body: bytes | None
) -> None:
    app = TakesAtOnce(how)
    served = await serve(app, proxy_headers=False)  # uvicorn's middleware would hide the method
    stream = await RawStream.open(served.port)
    assert stream.status == status
    answered = await stream.read_body()
    if body is not None:
        assert answered == body
    stream.close()
    # Only a declined connection runs the app as ASGI; as before, only a bug logs an error.
    assert app.called == (1 if how == "decline" else 0)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == (1 if how == "raise" else 0)


async def test_an_app_that_accepts_at_once_and_returns_closes_the_socket(serve: Serve) -> None:
    served = await serve(TakesAtOnce("accept"), proxy_headers=False)
    async with connect(served.url) as ws:
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1000  # the app returned: as after an ASGI app


async def test_an_invalid_handshake_is_refused_before_the_app(serve: Serve) -> None:
    called = False

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal called
        called = True

    served = await serve(app)
    request = (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 8\r\n\r\n"
    ).encode()
    stream = await RawStream.open(served.port, request=request)
    assert stream.status == 426
    assert b"sec-websocket-version: 13" in stream.head
    stream.close()
    assert not called


async def test_ws_max_size_closes_1009(serve: Serve) -> None:
    served = await serve(starlette(**{"/echo": echo}), ws_max_size=1000)
    async with connect(served.url + "/echo") as ws:
        await ws.send(b"x" * 1000)
        assert await ws.recv() == b"x" * 1000
        await ws.send(b"x" * 1001)
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1009


@pytest.mark.parametrize("enabled", [True, False])
async def test_server_and_date_headers_follow_the_config(serve: Serve, enabled: bool) -> None:
    served = await serve(starlette(**{"/echo": echo}), server_header=enabled, date_header=enabled)
    async with connect(served.url + "/echo") as ws:
        assert ws.response is not None
        headers = ws.response.headers
        assert ("server" in headers, "date" in headers) == (enabled, enabled)


async def test_shutdown_closes_open_sockets_with_1012(serve: Serve) -> None:
    served = await serve(starlette(**{"/echo": echo}))
    async with connect(served.url + "/echo") as ws:
        await ws.send("up")
        assert await ws.recv() == "UP"
        served.server.should_exit = True
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1012


async def test_a_slow_asgi_receiver_pauses_reading(serve: Serve) -> None:
    """With ``ws_max_queue`` messages waiting, the server stops reading the socket."""
    release = asyncio.Event()
    received: list[bytes] = []

    async def hoarder(websocket: WebSocket) -> None:
        await websocket.accept()
        await release.wait()
        while len(received) < 200:
            received.append(await websocket.receive_bytes())
        await websocket.send_bytes(b"got them all")

    served = await serve(starlette(**{"/slow": hoarder}), ws_max_queue=4, rcvbuf=8192)
    stream = await RawStream.open(served.port, "/slow", sndbuf=8192)
    chunk = b"".join(client_frame(0x2, b"%03d" % i + b"." * 8000) for i in range(200))
    stream.send(chunk)
    # With small kernel buffers on both ends, 1.6 MB cannot drain unless the
    # server reads, and it stops reading once 4 messages wait for the app.
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stream.writer.drain(), 0.5)
    finally:
        release.set()
    await stream.writer.drain()
    assert (await stream.frame()).payload == b"got them all"
    assert [m[:3] for m in received] == [b"%03d" % i for i in range(200)]
    stream.close()


def test_the_relay_serves_websockets_with_this_layer_by_default() -> None:
    assert uvicorn_config(None, Settings()).ws is RelayWebSocketProtocol  # type: ignore[arg-type]
    uvicorns = uvicorn_config(None, Settings(ws_impl="websockets-sansio"))  # type: ignore[arg-type]
    assert uvicorns.ws == "websockets-sansio"
