"""Direct mode: the app hands the connection to a FrameHandler and writes without ASGI."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from relay.wsserver import RelayWebSocketProtocol
from tests.test_tls import make_certificate
from tests.wsserver.conftest import DirectApp, Recorder, Serve, fill
from tests.wsserver.frames import (
    RawStream,
    ServerFrames,
    client_frame,
    close_frame,
    never_reading_client,
    upgrade_request,
)

pytestmark = pytest.mark.anyio


def echo(recorder: Recorder, message: bytes | str) -> None:
    if isinstance(message, bytes):
        recorder.conn.write(message)
    else:
        recorder.conn.write_text(message)


def echoing(recorder: Recorder) -> None:
    recorder.react = echo


async def test_messages_reach_the_handler_and_writes_reach_the_client(serve: Serve) -> None:
    app = DirectApp(echoing, subprotocol="relay.v1")
    served = await serve(app)
    async with connect(served.url + "/x", subprotocols=["relay.v1"]) as ws:
        assert ws.subprotocol == "relay.v1"
        recorder = await app.next()
        assert recorder.conn.peer_address == ws.local_address[:2]
        for message in (b"\x00bin", "tëxt", b"x" * 70000, ""):
            await ws.send(message)
            assert await ws.recv() == message
        await ws.send([b"frag", b"mented"])  # one message in three frames
        assert await ws.recv() == b"fragmented"
    await recorder.until(lambda: bool(recorder.lost))
    assert recorder.messages == [b"\x00bin", "tëxt", b"x" * 70000, "", b"fragmented"]
    assert recorder.lost == [(1000, "")]
    assert recorder.conn.unsent_bytes() == 0  # the client read everything before closing


async def test_the_app_may_return_and_gets_no_asgi_messages(serve: Serve) -> None:
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        recorder = Recorder(scope["extensions"]["relay.direct"]["connection"])
        recorder.react = echo
        recorder.conn.accept_direct(recorder)
        try:
            await receive()
        except RuntimeError as exc:
            outcome.set_result(str(exc))

    served = await serve(app)
    async with connect(served.url) as ws:
        assert "direct mode" in await outcome
        await ws.send(b"still served after the app returned")
        assert await ws.recv() == b"still served after the app returned"


async def test_pause_holds_parsed_frames_and_resume_delivers_them_in_order(
    serve: Serve,
) -> None:
    def pause_on_stop(recorder: Recorder, message: bytes | str) -> None:
        if message == b"stop":
            recorder.conn.pause_reading()

    app = DirectApp(lambda recorder: setattr(recorder, "react", pause_on_stop))
    served = await serve(app)
    stream = await RawStream.open(served.port)
    recorder = await app.next()
    # One write, so one data_received: the pause must take effect in the middle of it.
    stream.send(b"".join(client_frame(0x2, m) for m in (b"a", b"stop", b"b", b"c")))
    await recorder.until(lambda: b"stop" in recorder.messages)
    assert recorder.messages == [b"a", b"stop"]
    # Sent while paused: read only after the resume, behind the held frames.
    stream.send(client_frame(0x1, b"d") + client_frame(0x9, b"probe"))
    recorder.conn.resume_reading()
    await recorder.until(lambda: len(recorder.messages) == 5)
    assert recorder.messages == [b"a", b"stop", b"b", b"c", "d"]
    pong = await stream.frame()
    assert (pong.opcode, pong.payload) == (0xA, b"probe")
    stream.close()


async def test_a_client_close_is_echoed_reported_and_tcp_ends(serve: Serve) -> None:
    app = DirectApp()
    served = await serve(app)
    stream = await RawStream.open(served.port)
    recorder = await app.next()
    stream.send(close_frame(4321, "bye ✓".encode()))
    reply = await stream.frame()
    assert (reply.opcode, reply.close_code, reply.payload[2:]) == (0x8, 4321, "bye ✓".encode())
    await recorder.until(lambda: bool(recorder.lost))
    assert recorder.lost == [(4321, "bye ✓")]
    await stream.eof()  # the server ended TCP first (RFC 6455 7.1.1)
    stream.close()


async def test_an_owner_close_completes_the_handshake(serve: Serve) -> None:
    app = DirectApp()
    served = await serve(app)
    stream = await RawStream.open(served.port)
    recorder = await app.next()
    recorder.conn.write(b"last words")
    recorder.conn.close(4008, "slow consumer")
    recorder.conn.write(b"dropped: after the close")
    stream.send(client_frame(0x2, b"dropped: the handler closed"))
    first, close = await stream.frame(), await stream.frame()
    assert first.payload == b"last words"
    assert (close.opcode, close.close_code, close.payload[2:]) == (0x8, 4008, b"slow consumer")
    assert recorder.lost == []  # not before the peer answers
    stream.send(close_frame(4008))
    await recorder.until(lambda: bool(recorder.lost))
    await stream.eof()
    assert recorder.lost == [(4008, "")]
    assert recorder.messages == []
    stream.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(0x2, b"unmasked", mask=None), 1002),
        (client_frame(0x1, b"\xff\xfe"), 1007),
        (client_frame(0x2, b"x" * 1025), 1009),
    ],
)
async def test_a_protocol_error_closes_with_its_code_and_reports_it(
    serve: Serve, frame: bytes, code: int
) -> None:
    app = DirectApp()
    served = await serve(app, ws_max_size=1024)
    stream = await RawStream.open(served.port)
    recorder = await app.next()
    stream.send(client_frame(0x2, b"fine") + frame)
    close = await stream.closed_with()
    assert close.close_code == code
    await recorder.until(lambda: bool(recorder.lost))
    assert recorder.messages == [b"fine"]
    assert recorder.lost[0][0] == code and len(recorder.lost) == 1
    await stream.eof()
    stream.close()


async def test_a_handler_that_raises_closes_1011_with_an_error_log(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(recorder: Recorder, message: bytes | str) -> None:
        raise ValueError("handler bug")

    app = DirectApp(lambda recorder: setattr(recorder, "react", explode))
    served = await serve(app)
    stream = await RawStream.open(served.port)
    recorder = await app.next()
    stream.send(client_frame(0x2, b"boom"))
    assert (await stream.closed_with()).close_code == 1011
    await recorder.until(lambda: bool(recorder.lost))
    assert recorder.lost == [(1011, "internal error")]
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)
    stream.close()


async def test_a_client_half_close_ends_the_connection(serve: Serve) -> None:
    app = DirectApp()
    served = await serve(app)
    stream = await RawStream.open(served.port)
    recorder = await app.next()
    stream.writer.write_eof()
    await recorder.until(lambda: bool(recorder.lost))
    assert recorder.lost == [(1006, "")]
    await stream.eof()
    stream.close()


async def test_writing_to_a_dead_connection_is_dropped(serve: Serve) -> None:
    app = DirectApp()
    served = await serve(app)
    stream = await RawStream.open(served.port)
    recorder = await app.next()
    stream.writer.transport.abort()
    await recorder.until(lambda: bool(recorder.lost))
    assert recorder.lost == [(1006, "")]
    conn = recorder.conn
    conn.write(b"into the void")
    conn.write_text("nothing")
    conn.pause_reading()
    conn.resume_reading()
    conn.close(1000)
    conn.abort()
    assert conn.write_buffer_size() == 0
    await asyncio.sleep(0)
    assert recorder.lost == [(1006, "")]


async def test_close_against_a_client_that_never_reads_aborts_within_close_timeout(
    serve: Serve,
) -> None:
    app = DirectApp()
    served = await serve(app, ws_close_timeout=0.5)
    sock = await never_reading_client(served.port)
    recorder = await app.next()
    await fill(recorder)
    assert recorder.conn.write_buffer_size() >= 65536
    started = time.monotonic()
    recorder.conn.close(1000)
    await recorder.until(lambda: bool(recorder.lost))
    elapsed = time.monotonic() - started
    assert recorder.lost == [(1006, "")]
    assert 0.45 < elapsed < 2.5, elapsed
    await asyncio.sleep(0)
    assert len(recorder.lost) == 1
    sock.close()


async def test_pongs_to_a_client_that_never_reads_do_not_pile_up(serve: Serve) -> None:
    app = DirectApp()
    served = await serve(app, ws_send_buffer_bytes=8192)
    sock = await never_reading_client(served.port)
    recorder = await app.next()
    loop = asyncio.get_running_loop()
    pings = client_frame(0x9, b"p" * 125) * 20000  # 2.6 MB of pongs if all were answered
    await loop.sock_sendall(sock, pings + client_frame(0x2, b"done"))
    await recorder.until(lambda: recorder.messages == [b"done"])
    assert recorder.conn.writing_paused
    assert recorder.conn.write_buffer_size() < 256 * 1024
    sock.close()


async def test_an_abort_resets_and_counts_what_never_reached_the_peer(serve: Serve) -> None:
    app = DirectApp()
    served = await serve(app, ws_send_buffer_bytes=16384)
    sock = await never_reading_client(served.port)
    recorder = await app.next()
    unsent_when_lost: list[int] = []
    written = 0
    async with asyncio.timeout(10):
        while not recorder.conn.writing_paused:
            recorder.conn.write(b"x" * 16384)
            written += 16384 + 4  # payload and frame header
            await asyncio.sleep(0)
    buffered = recorder.conn.write_buffer_size()
    original = recorder.connection_lost

    def lost(code: int, reason: str) -> None:
        unsent_when_lost.append(recorder.conn.unsent_bytes())
        original(code, reason)

    recorder.connection_lost = lost  # type: ignore[method-assign]
    recorder.conn.abort()
    await recorder.until(lambda: bool(recorder.lost))
    assert recorder.lost == [(1006, "")]
    # Everything still in the relay's buffers, plus what the kernel held unacknowledged.
    assert buffered < unsent_when_lost[0] <= written
    with pytest.raises(ConnectionResetError):  # a reset, not a FIN after the data
        while await asyncio.get_running_loop().sock_recv(sock, 1 << 20):
            pass
    sock.close()


async def test_writable_is_called_when_a_paused_transport_drains(serve: Serve) -> None:
    app = DirectApp()
    served = await serve(app)
    sock = await never_reading_client(served.port)
    recorder = await app.next()
    await fill(recorder)
    assert recorder.writable_calls == 0
    loop = asyncio.get_running_loop()
    frames = ServerFrames()

    async def read_all() -> None:
        while not recorder.writable_calls:
            frames.feed(await loop.sock_recv(sock, 1 << 20))

    async with asyncio.timeout(10):
        await read_all()
    assert not recorder.conn.writing_paused
    assert frames.next() is not None
    sock.close()


# --- coalescing, observed on the transport ---------------------------------------------


class CountingTransport(asyncio.Transport):
    """Records each write call; never pushes back."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[bytes]] = []

    def write(self, data: Any) -> None:
        self.calls.append([bytes(data)])

    def writelines(self, list_of_data: Any) -> None:
        self.calls.append([bytes(chunk) for chunk in list_of_data])

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 80)}.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def frames_in(chunks: list[bytes]) -> list[bytes]:
    parser = ServerFrames()
    parser.feed(b"".join(chunks))
    out = []
    while (frame := parser.next()) is not None:
        out.append(frame.payload)
    return out


async def test_writes_of_one_loop_pass_leave_in_one_transport_write() -> None:
    app = DirectApp()
    config = uvicorn.Config(app, ws=RelayWebSocketProtocol, lifespan="off", log_level="warning")
    config.load()
    protocol = RelayWebSocketProtocol(config=config, server_state=ServerState(), app_state={})
    transport = CountingTransport()
    protocol.connection_made(transport)
    protocol.data_received(upgrade_request(80))
    recorder = await app.next()
    assert [chunk[:12] for [chunk] in transport.calls] == [b"HTTP/1.1 101"]
    transport.calls.clear()

    def burst(recorder: Recorder, message: bytes | str) -> None:
        for index in range(50):
            recorder.conn.write(b"%d" % index)
        recorder.conn.write_text("done")

    recorder.react = burst
    protocol.data_received(client_frame(0x2, b"go") + client_frame(0x9, b"ping"))
    assert transport.calls == []  # nothing before the pass ends
    assert recorder.conn.write_buffer_size() > 0
    await asyncio.sleep(0)
    assert len(transport.calls) == 1
    assert frames_in(transport.calls[0]) == [b"%d" % i for i in range(50)] + [b"done", b"ping"]
    assert recorder.conn.write_buffer_size() == 0

    # Past 64 KiB pending, a pass flushes early so the transport can push back.
    transport.calls.clear()
    for _ in range(5):
        recorder.conn.write(b"y" * 16384)
    assert len(transport.calls) == 1
    await asyncio.sleep(0)
    assert len(transport.calls) == 2
    assert frames_in(transport.calls[0] + transport.calls[1]) == [b"y" * 16384] * 5


# --- TLS -------------------------------------------------------------------------------


async def test_tls_echo_and_close(serve: Serve, tmp_path: Path) -> None:
    certfile, keyfile = make_certificate(tmp_path)
    app = DirectApp(echoing)
    served = await serve(app, ssl_certfile=certfile, ssl_keyfile=keyfile)
    trust = ssl.create_default_context(cafile=certfile)
    async with connect(f"wss://127.0.0.1:{served.port}/", ssl=trust, max_size=None) as ws:
        recorder = await app.next()
        await ws.send(b"z" * 70000)
        assert await ws.recv() == b"z" * 70000
        recorder.conn.close(4001, "enough")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 4001
    await recorder.until(lambda: bool(recorder.lost))
    assert recorder.lost == [(4001, "enough")]


async def test_tls_close_against_a_client_that_stops_reading_aborts(
    serve: Serve, tmp_path: Path
) -> None:
    certfile, keyfile = make_certificate(tmp_path)
    app = DirectApp()
    served = await serve(app, ssl_certfile=certfile, ssl_keyfile=keyfile, ws_close_timeout=0.5)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", served.port))
    trust = ssl.create_default_context(cafile=certfile)
    _, writer = await asyncio.open_connection(sock=sock, ssl=trust, server_hostname="localhost")
    writer.write(upgrade_request(served.port))
    recorder = await app.next()
    # The client's stream stops reading once its own buffer is full; nothing drains it.
    await fill(recorder)
    started = time.monotonic()
    recorder.conn.close(1000)
    await recorder.until(lambda: bool(recorder.lost))
    assert recorder.lost == [(1006, "")]
    assert time.monotonic() - started < 2.5
    writer.transport.abort()


async def test_acked_bytes_count_what_the_client_host_acknowledged(serve: Serve) -> None:
    app = DirectApp(echoing)
    served = await serve(app)
    async with connect(served.url + "/x") as ws:
        recorder = await app.next()
        assert recorder.conn.written_bytes == 0
        await ws.send(b"ping")
        assert await ws.recv() == b"ping"  # the client read it: its host acknowledged it
        conn = recorder.conn
        assert conn.written_bytes == 6  # 4 bytes and a 2-byte header
        async with asyncio.timeout(5):
            # The kernel raises no event for an ACK: it is asked, as the relay asks it.
            while conn.acked_bytes() < 6:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
        assert conn.acked_bytes() == 6


async def test_a_message_written_after_the_end_began_is_never_acknowledged(serve: Serve) -> None:
    app = DirectApp()
    served = await serve(app)
    sock = await never_reading_client(served.port)
    recorder = await app.next()
    conn = recorder.conn
    conn.abort()  # everything written so far (nothing) is acknowledged
    acked = conn.acked_bytes()
    conn.write(b"late")  # dropped: the connection is going
    assert conn.written_bytes == acked + 6
    assert conn.acked_bytes() == acked
    assert conn.unsent_bytes() == 6
    sock.close()
