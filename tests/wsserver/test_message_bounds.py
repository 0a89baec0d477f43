"""A message is bounded in frames (1009) and in time (1008), in direct and in ASGI mode.

``ws_max_fragments`` caps the frames of one message, empty ones included, and
``ws_message_timeout`` the time from a message's first byte to its last, pings
between its fragments or not. Time the relay itself does not read (the owner
paused reading) is not held against the peer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from relay.server import uvicorn_config
from relay.settings import Settings
from relay.wsserver import DEFAULT_MAX_FRAGMENTS, DEFAULT_MESSAGE_TIMEOUT
from tests.wsserver.conftest import DirectApp, Recorder, Serve
from tests.wsserver.frames import RawStream, client_frame

pytestmark = pytest.mark.anyio

TIMEOUT = 0.3  # ws_message_timeout of these tests, in seconds


def opening(piece: bytes = b"x") -> bytes:
    return client_frame(0x2, piece, fin=False)


def continuation(piece: bytes = b"", *, fin: bool = False) -> bytes:
    return client_frame(0x0, piece, fin=fin)


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_bytes(await websocket.receive_bytes())
    except WebSocketDisconnect:
        return


async def test_the_frame_layer_defaults_are_the_settings_defaults() -> None:
    assert Settings().max_fragments == DEFAULT_MAX_FRAGMENTS
    assert Settings().message_timeout_seconds == DEFAULT_MESSAGE_TIMEOUT


async def test_the_settings_reach_the_frame_layer() -> None:
    chosen = Settings(max_fragments=7, message_timeout_seconds=3.5, asgi_queue_messages=5)
    config: Any = uvicorn_config(Starlette(), chosen)
    assert (config.ws_max_fragments, config.ws_message_timeout, config.ws_max_queue) == (7, 3.5, 5)


async def test_a_message_past_max_fragments_closes_1009_even_with_empty_frames(
    serve: Serve,
) -> None:
    app = DirectApp()
    served = await serve(app, ws_max_fragments=4)
    stream = await RawStream.open(served.port)
    recorder = await app.next()
    ping = client_frame(0x9, b"p")
    # four frames is the limit; pings between them are not fragments
    stream.send(
        opening(b"a") + ping + continuation() + ping + continuation() + continuation(b"b", fin=True)
    )
    stream.send(opening() + continuation() * 3 + continuation(fin=True))  # five
    close = await stream.closed_with()
    assert close.close_code == 1009
    await recorder.until(lambda: bool(recorder.lost))
    assert recorder.messages == [b"ab"]
    assert recorder.lost == [(1009, "message in over 4 frames")]
    stream.close()


async def closed_after(stream: RawStream, recorder: Recorder, started: float) -> float:
    """Wait for the server's 1008 close; the seconds since ``started``."""
    close = await stream.closed_with()
    elapsed = time.monotonic() - started
    assert close.close_code == 1008
    await recorder.until(lambda: bool(recorder.lost))
    assert recorder.lost == [(1008, f"message not completed in {TIMEOUT:g} s")]
    return elapsed


async def test_a_fragmented_message_not_completed_in_time_closes_1008_pings_or_not(
    serve: Serve,
) -> None:
    app = DirectApp()
    served = await serve(app, ws_message_timeout=TIMEOUT)
    stream = await RawStream.open(served.port)
    recorder = await app.next()
    started = time.monotonic()
    stream.send(opening())

    async def keep_talking() -> None:
        # Pings and empty fragments keep the keepalive happy, not the message.
        while True:
            stream.send(client_frame(0x9, b"still here") + continuation())
            await asyncio.sleep(0.02)

    talker = asyncio.create_task(keep_talking())
    try:
        elapsed = await closed_after(stream, recorder, started)
    finally:
        talker.cancel()
    assert elapsed >= TIMEOUT * 0.9  # not before its time (timers may fire a little early)
    assert recorder.messages == []
    stream.close()


async def test_a_frame_not_completed_in_time_closes_1008(serve: Serve) -> None:
    app = DirectApp()
    served = await serve(app, ws_message_timeout=TIMEOUT)
    stream = await RawStream.open(served.port)
    recorder = await app.next()
    started = time.monotonic()
    stream.send(client_frame(0x2, b"x" * 1000)[:500])  # the header promises 1000 bytes
    assert await closed_after(stream, recorder, started) >= TIMEOUT * 0.9
    stream.close()


async def test_each_message_has_its_own_time(serve: Serve) -> None:
    app = DirectApp()
    served = await serve(app, ws_message_timeout=TIMEOUT)
    stream = await RawStream.open(served.port)
    recorder = await app.next()
    # Five messages, each taking half the timeout: two and a half timeouts in all.
    for n in range(5):
        stream.send(opening(b"%d" % n))
        await asyncio.sleep(TIMEOUT / 2)  # pacing the client, not waiting for the server
        stream.send(continuation(b".", fin=True))
    stream.send(client_frame(0x2, b"last"))
    await recorder.until(lambda: len(recorder.messages) == 6)
    assert recorder.messages == [b"0.", b"1.", b"2.", b"3.", b"4.", b"last"]
    assert recorder.lost == []
    stream.close()


async def test_time_the_owner_does_not_read_is_not_held_against_the_peer(serve: Serve) -> None:
    def pause_on_wait(recorder: Recorder, message: bytes | str) -> None:
        if message == b"wait":
            recorder.conn.pause_reading()

    app = DirectApp(lambda recorder: setattr(recorder, "react", pause_on_wait))
    served = await serve(app, ws_message_timeout=TIMEOUT)
    stream = await RawStream.open(served.port)
    recorder = await app.next()
    wait = client_frame(0x2, b"wait")
    stream.send(wait[:3])  # the frame layer starts timing it
    await asyncio.sleep(TIMEOUT / 3)  # so that the rest comes in another read
    stream.send(wait[3:] + opening(b"a"))
    await recorder.until(lambda: recorder.messages == [b"wait"])
    await asyncio.sleep(3 * TIMEOUT)  # the message waits on us, not on the peer
    assert recorder.lost == []
    recorder.conn.resume_reading()
    stream.send(continuation(b"b", fin=True))
    await recorder.until(lambda: len(recorder.messages) == 2)
    assert recorder.messages == [b"wait", b"ab"]
    assert recorder.lost == []
    stream.close()


async def test_asgi_mode_has_the_same_bounds(serve: Serve) -> None:
    app = Starlette(routes=[WebSocketRoute("/echo", echo)])
    served = await serve(app, ws_max_fragments=3, ws_message_timeout=TIMEOUT)
    stream = await RawStream.open(served.port, "/echo")
    stream.send(opening(b"a") + continuation(b"b") + continuation(b"c", fin=True))
    assert (await stream.frame()).payload == b"abc"
    stream.send(opening() + continuation() * 3)
    assert (await stream.closed_with()).close_code == 1009
    stream.close()
    stream = await RawStream.open(served.port, "/echo")
    stream.send(opening())
    assert (await stream.closed_with()).close_code == 1008
    stream.close()
