"""Keepalive: a peer silent through a ping round is closed 1011, then TCP ends in time.

RFC 6455 7.1.7 says a failed connection SHOULD get a close frame; the
``websockets`` library sends 1011 on a keepalive timeout, and so does the
relay. The close is bounded like any other: a peer that never finishes it,
or cannot even read it, is aborted ``close_timeout`` later.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
import pytest

from relay.wsserver import KEEPALIVE_TIMEOUT
from relay.wsserver.states import LOST
from tests.conftest import RelayFactory
from tests.peers import join_as
from tests.wsserver.conftest import DirectApp, Recorder, Serve, fill
from tests.wsserver.frames import RawStream, client_frame, close_frame, never_reading_client

pytestmark = pytest.mark.anyio

KEEPALIVE_1011 = (1011, KEEPALIVE_TIMEOUT)


async def _heard(recorder: Recorder) -> float:
    """Wait until the handler hears of the end; the time it took, in seconds."""
    started = time.monotonic()
    await recorder.until(lambda: bool(recorder.lost))
    return time.monotonic() - started


async def test_a_silent_client_is_closed_1011_and_a_responsive_one_kept(serve: Serve) -> None:
    app = DirectApp()
    served = await serve(app, ws_ping_interval=0.1, ws_ping_timeout=0.4)
    responsive = await RawStream.open(served.port)
    kept = await app.next()
    silent = await RawStream.open(served.port)
    reaped = await app.next()
    reaped.conn.write(b"last words")
    pings = 0
    while pings < 3:
        frame = await responsive.frame()
        assert frame.opcode == 0x9
        pings += 1
        responsive.send(client_frame(0xA, frame.payload))
    # The silent client reads what was written, a ping, then the close frame;
    # then the server's FIN: half-closed, not reset.
    assert (await silent.frame()).payload == b"last words"
    assert (await silent.frame()).opcode == 0x9
    closing = await silent.frame()
    assert (closing.opcode, closing.close_code) == (0x8, 1011)
    assert closing.payload[2:] == KEEPALIVE_TIMEOUT.encode()
    await silent.eof()
    # Its handler hears of it when TCP ends: the client may still read what was
    # on its way, as it did here.
    assert reaped.lost == []
    silent.send(close_frame(1011))
    silent.close()
    await _heard(reaped)
    assert reaped.lost == [KEEPALIVE_1011]
    assert reaped.conn.unsent_bytes() == 0
    assert kept.lost == []
    responsive.close()


async def test_a_silent_client_that_never_ends_tcp_is_aborted_after_close_timeout(
    serve: Serve,
) -> None:
    app = DirectApp()
    served = await serve(app, ws_ping_interval=0.1, ws_ping_timeout=0.1, ws_close_timeout=0.5)
    silent = await RawStream.open(served.port)
    reaped = await app.next()
    assert (await silent.closed_with()).close_code == 1011
    elapsed = await _heard(reaped)
    assert 0.3 < elapsed < 2.5, elapsed
    assert reaped.lost == [KEEPALIVE_1011]
    assert reaped.conn.state == LOST
    silent.close()


async def test_a_silent_client_that_does_not_read_is_aborted_after_close_timeout(
    serve: Serve,
) -> None:
    app = DirectApp()
    served = await serve(app, ws_ping_interval=0.1, ws_ping_timeout=0.3, ws_close_timeout=0.5)
    sock = await never_reading_client(served.port)
    reaped = await app.next()
    await fill(reaped)  # a few milliseconds: the keepalive gives up 0.4 s after the accept
    # Not a byte goes out: the close frame waits behind the rest, and the
    # connection is reset close_timeout after the keepalive gave up.
    elapsed = await _heard(reaped)
    assert 0.4 < elapsed < 3.0, elapsed
    assert reaped.lost == [KEEPALIVE_1011]
    assert reaped.conn.state == LOST
    assert reaped.conn.unsent_bytes() > 0  # what filled the buffers, counted before the reset
    sock.close()


async def test_an_asgi_app_hears_the_keepalive_close(serve: Serve) -> None:
    heard: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        heard.put_nowait(await receive())

    served = await serve(app, ws_ping_interval=0.1, ws_ping_timeout=0.1, ws_close_timeout=0.5)
    silent = await RawStream.open(served.port)
    assert (await silent.closed_with()).close_code == 1011
    silent.close()  # the end of TCP: now the app hears it
    async with asyncio.timeout(5):
        disconnect = await heard.get()
    assert disconnect == {
        "type": "websocket.disconnect",
        "code": 1011,
        "reason": KEEPALIVE_TIMEOUT,
    }


@pytest.mark.parametrize("ws_impl", ["relay", "websockets-sansio"])
async def test_a_peer_closed_by_the_keepalive_is_kept_for_resume(
    relay_factory: RelayFactory, ws_impl: str
) -> None:
    # uvicorn's websockets-sansio closes a silent peer the same way: 1011.
    relay = await relay_factory(
        ws_impl=ws_impl, ping_interval_seconds=0.1, ping_timeout_seconds=0.1, resume_seconds=10
    )
    alice = await RawStream.open(relay.port, "/v1/ws", subprotocols=("relay.v1",))
    alice.send(client_frame(0x2, msgpack.packb({"type": "hello", "id": "alice"})))
    welcome = msgpack.unpackb((await alice.frame()).payload)
    assert welcome["type"] == "welcome"
    # Alice answers no ping: the relay closes her 1011 ...
    closing = await alice.closed_with()
    assert (closing.close_code, closing.payload[2:]) == (1011, KEEPALIVE_TIMEOUT.encode())
    alice.close()
    # ... and keeps her id, rooms and queue for the resume window.
    bob = await join_as(relay.url, "bob")
    assert (await bob.request({"type": "send", "to": "alice", "d": "q", "id": 1}))["type"] == "ok"
    back = await join_as(relay.url, "alice", resume=welcome["resume"])
    assert back.welcome["resumed"] is True
    delivered = await back.recv()
    assert (delivered["type"], delivered["d"]) == ("msg", "q")
