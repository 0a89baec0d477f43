"""The HTTP stage before the upgrade (relay.httpserver): caps, timeouts, header limits, order.

Raw sockets bound to other loopback addresses (127.0.0.2, 127.0.0.3) play
distinct clients, so the per-address caps can be seen at work.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import httpx
import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from relay.httpserver import RefusalLog, RelayHTTPProtocol
from tests.conftest import RelayFactory, RunningRelay
from tests.peers import RawPeer, join_as
from tests.wsserver.frames import ServerFrames, client_frame, close_frame, upgrade_request

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0
ATTACKER = "127.0.0.2"
HONEST = "127.0.0.3"


@dataclass
class Response:
    status: int
    head: bytes
    body: bytes


async def connect_from(source: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


def get(path: str = "/healthz", *headers: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: relay", *headers]) + "\r\n\r\n").encode()


def padded(request: bytes, size: int) -> bytes:
    """``request`` (a head) with an ``X-Pad`` header making it exactly ``size`` bytes."""
    room = size - len(request) - len("X-Pad: \r\n")
    assert room >= 0
    return request[:-2] + b"X-Pad: " + b"p" * room + b"\r\n\r\n"


async def read_response(reader: asyncio.StreamReader, buffer: bytearray) -> Response:
    """One response with a Content-Length body from ``reader`` (``buffer`` keeps the rest)."""
    with anyio.fail_after(TIMEOUT):
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            chunk = await reader.read(65536)
            assert chunk, f"closed before a whole response: {bytes(buffer)!r}"
            buffer += chunk
        head = bytes(buffer[:end])
        del buffer[: end + 4]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(buffer) < length:
            chunk = await reader.read(65536)
            assert chunk, "closed inside a body"
            buffer += chunk
    body = bytes(buffer[:length])
    del buffer[:length]
    return Response(int(head.split(b" ", 2)[1]), head, body)


async def exchange(port: int, request: bytes) -> Response:
    """Send ``request`` on a new connection; its response (the server must then close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    buffer = bytearray()
    response = await read_response(reader, buffer)
    writer.close()
    return response


async def ended(reader: asyncio.StreamReader) -> bytes:
    """Everything the server still sends until it closes the connection."""
    data = b""
    with anyio.fail_after(TIMEOUT):
        while chunk := await reader.read(65536):
            data += chunk
    return data


def refusal_lines(caplog: pytest.LogCaptureFixture, address: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "relay.http" and f"refused {address}" in record.getMessage()
    ]


# --- one address holding connections open ------------------------------------------------


async def test_a_thousand_slow_heads_from_one_address_leave_the_node_serving_others(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    relay = await relay_factory(
        admission_exempt=(), max_pending_per_ip=20, head_timeout_seconds=2.0
    )
    caplog.set_level(logging.WARNING, logger="relay.http")
    request = get()
    statuses: list[int] = []
    connected = 0
    all_connected = anyio.Event()

    async def slow_client() -> None:
        nonlocal connected
        reader, writer = await connect_from(ATTACKER, relay.port)
        connected += 1
        if connected == 1000:
            all_connected.set()
        data = b""
        try:
            # Wait a moment for a refusal first, then send one byte at a time,
            # far slower than the head timeout allows.
            with anyio.move_on_after(0.5):
                data = await reader.read(65536)
            for byte in request:
                if data:
                    break
                writer.write(bytes([byte]))
                with anyio.move_on_after(0.2):  # the attacker's pace
                    data = await reader.read(65536)
            assert data, "the whole head went out before any answer"
            with contextlib.suppress(ConnectionResetError):
                # A byte of ours the server did not read when it closed
                # makes its kernel reset the connection after the answer.
                await ended(reader)
        finally:
            writer.close()
        statuses.append(int(data.split(b" ", 2)[1]) if data else 0)

    async with anyio.create_task_group() as tasks:
        for _ in range(1000):
            tasks.start_soon(slow_client)
        with anyio.fail_after(TIMEOUT):
            await all_connected.wait()
        # Meanwhile another address is served: HTTP and a WebSocket.
        transport = httpx.AsyncHTTPTransport(local_address=HONEST)
        async with httpx.AsyncClient(transport=transport, base_url=relay.http_url) as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
        subprotocols = [Subprotocol("relay.v1")]
        async with connect(relay.url, subprotocols=subprotocols, local_addr=(HONEST, 0)) as ws:
            peer = RawPeer(ws)
            assert (await peer.request({"type": "hello", "id": "honest"}))["type"] == "welcome"
    assert len(statuses) == 1000
    assert set(statuses) == {408, 429}
    assert statuses.count(408) >= 20  # the address's places were all taken, then timed out
    lines = refusal_lines(caplog, ATTACKER)
    assert len(lines) == 1, lines  # one line a minute, not one per socket
    assert refusal_lines(caplog, HONEST) == []


async def test_the_per_address_cap_answers_429_with_retry_after(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(admission_exempt=(), max_pending_per_ip=2)
    held = [await connect_from(ATTACKER, relay.port) for _ in range(2)]
    reader, writer = await connect_from(ATTACKER, relay.port)
    refused = await read_response(reader, bytearray())
    assert refused.status == 429
    assert b"retry-after: 5" in refused.head
    assert refused.body == b"too many unfinished connections from your address"
    writer.close()
    # Another address, and the exempt loopback by default, are not counted with it.
    assert (await exchange(relay.port, get("/healthz", "Connection: close"))).status == 200
    for _, held_writer in held:
        held_writer.close()


async def test_over_the_node_cap_a_connection_waits_for_a_place_loopback_included(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(max_pending_connections=2)
    held = [await asyncio.open_connection("127.0.0.1", relay.port) for _ in range(2)]
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(get("/healthz", "Connection: close"))
    # Not read while both places are taken: no answer yet.
    with pytest.raises(TimeoutError):
        with anyio.fail_after(0.3):
            await reader.read(1)
    # An upgraded socket is no longer pending: its place goes to the waiting one.
    held_reader, held_writer = held[0]
    held_writer.write(upgrade_request(relay.port, "/v1/ws"))
    assert (await read_response(held_reader, bytearray())).status == 101
    with anyio.fail_after(TIMEOUT):
        assert (await read_response(reader, bytearray())).status == 200
    writer.close()
    for _, held_writer in held:
        held_writer.close()


async def test_a_connection_that_waits_too_long_for_a_place_gets_503(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(max_pending_connections=1, pending_wait_seconds=0.5)
    held = [await asyncio.open_connection("127.0.0.1", relay.port)]
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    with anyio.fail_after(TIMEOUT):
        refused = await read_response(reader, bytearray())
    assert (refused.status, refused.body) == (503, b"the node is busy, try again later")
    assert b"retry-after: 5" in refused.head
    writer.close()
    for _, held_writer in held:
        held_writer.close()


async def test_with_no_room_to_wait_the_node_cap_answers_503_at_once(
    relay_factory: RelayFactory,
) -> None:
    # Room for max_connections + max_pending_connections sockets: 1 + 2.
    relay = await relay_factory(max_pending_connections=2, max_connections=1)
    held = [await asyncio.open_connection("127.0.0.1", relay.port) for _ in range(3)]
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    with anyio.fail_after(TIMEOUT):
        refused = await read_response(reader, bytearray())
    assert (refused.status, refused.body) == (503, b"the node is busy, try again later")
    writer.close()
    for _, held_writer in held:
        held_writer.close()


# --- the head timeout ---------------------------------------------------------------------


async def test_a_request_head_not_in_within_the_timeout_gets_408(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    relay = await relay_factory(head_timeout_seconds=0.5)  # loopback: exempt, still timed
    caplog.set_level(logging.WARNING, logger="relay.http")
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(get()[:20])
    response = await read_response(reader, bytearray())
    assert (response.status, response.body) == (408, b"request not received in time")
    assert await ended(reader) == b""
    writer.close()
    assert refusal_lines(caplog, "127.0.0.1") == [
        "refused 127.0.0.1: 408: no whole request in 0.5 s"
    ]


async def test_a_connection_that_sends_nothing_is_closed_without_an_answer(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(head_timeout_seconds=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    assert await ended(reader) == b""
    writer.close()


async def test_a_body_not_in_within_the_timeout_is_cut(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(head_timeout_seconds=0.5, api_keys=("k" * 32,))
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(
        b"POST /v1/send HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer " + b"k" * 32
        + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"to\":"
    )  # fmt: skip
    response = await read_response(reader, bytearray())
    assert response.status == 408
    assert await ended(reader) == b""
    writer.close()


async def test_a_keep_alive_connection_trickling_blank_lines_is_closed(
    relay_factory: RelayFactory,
) -> None:
    # uvicorn's keep-alive timer restarts with every byte; the head timeout does not.
    relay = await relay_factory(head_timeout_seconds=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(get())
    assert (await read_response(reader, bytearray())).status == 200
    with anyio.fail_after(TIMEOUT):
        while True:
            writer.write(b"\r\n")
            with anyio.move_on_after(0.1):  # the client's pace
                assert await reader.read(65536) == b""
                break
    writer.close()


# --- header limits ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/v1/ws"])
async def test_header_bytes_are_limited_on_every_route(
    relay_factory: RelayFactory, path: str
) -> None:
    relay = await relay_factory(max_header_bytes=1024)
    base = get(path) if path == "/healthz" else upgrade_request(relay.port, path)
    ok = 200 if path == "/healthz" else 101
    fits, over = padded(base, 1024), padded(base, 1025)
    assert (await exchange(relay.port, fits)).status == ok
    refused = await exchange(relay.port, over)
    assert (refused.status, refused.body) == (431, b"request header fields too large")
    # However the head is cut into reads, the count is exact.
    for cut in (1, 500, 1020, 1021, 1022, 1023):
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(over[:cut])
        await writer.drain()
        await anyio.wait_all_tasks_blocked()
        writer.write(over[cut:])
        assert (await read_response(reader, bytearray())).status == 431
        writer.close()
    # Each refusal is counted, though an address's lines are logged once a minute.
    async with httpx.AsyncClient(base_url=relay.http_url) as http:
        metrics = (await http.get("/metrics")).text
    assert 'relay_http_refused_total{status="431"} 7.0' in metrics


@pytest.mark.parametrize("size", [1024, 1025])
async def test_a_head_behind_a_body_in_the_same_read_is_counted_exactly(
    relay_factory: RelayFactory, size: int
) -> None:
    relay = await relay_factory(max_header_bytes=1024)
    post = b"POST /healthz HTTP/1.1\r\nHost: relay\r\nContent-Length: 10\r\n\r\n0123456789"
    second = padded(get("/healthz", "Connection: close"), size)
    for cut in (len(post) + 1, len(post) + 600, len(post) + size - 1):
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        stream = post + second
        writer.write(stream[:cut])
        await writer.drain()
        await anyio.wait_all_tasks_blocked()
        writer.write(stream[cut:])
        buffer = bytearray()
        assert (await read_response(reader, buffer)).status == 405
        assert (await read_response(reader, buffer)).status == (200 if size == 1024 else 431)
        writer.close()


async def test_a_head_that_never_ends_is_refused_once_over_the_limit(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(max_header_bytes=1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nX-Endless: " + b"x" * 2000)
    assert (await read_response(reader, bytearray())).status == 431
    writer.close()


@pytest.mark.parametrize("path", ["/healthz", "/v1/ws"])
async def test_header_count_is_limited_on_every_route(
    relay_factory: RelayFactory, path: str
) -> None:
    relay = await relay_factory(max_header_count=10)
    if path == "/healthz":
        base = get(path, *(f"X-{n}: {n}" for n in range(9)))  # Host and 9 more
        ok = 200
    else:  # the handshake's 5 and 5 more
        extra = "".join(f"X-{n}: {n}\r\n" for n in range(5))
        base = upgrade_request(relay.port, path, headers=extra)
        ok = 101
    assert base.count(b"\r\n") - 2 == 10
    assert (await exchange(relay.port, base)).status == ok
    refused = await exchange(relay.port, base[:-2] + b"X-Last: 1\r\n\r\n")
    assert (refused.status, refused.body) == (431, b"too many header fields")


# --- what an upgrade needs of HTTP: version 1.1 and a Host ------------------------------


def _without_host(request: bytes) -> bytes:
    return b"\r\n".join(line for line in request.split(b"\r\n") if not line.startswith(b"Host:"))


@pytest.mark.parametrize(
    ("name", "request_of", "body"),
    [
        (
            "HTTP/1.0",
            lambda port: upgrade_request(port, "/v1/ws").replace(b"HTTP/1.1", b"HTTP/1.0", 1),
            b"a WebSocket handshake needs HTTP/1.1",
        ),
        (
            "no Host",
            lambda port: _without_host(upgrade_request(port, "/v1/ws")),
            b"a WebSocket handshake needs exactly one Host header",
        ),
        (
            "two Hosts",
            lambda port: upgrade_request(port, "/v1/ws", headers="Host: other\r\n"),
            b"a WebSocket handshake needs exactly one Host header",
        ),
        (
            "an empty Host",
            lambda port: upgrade_request(port, "/v1/ws").replace(
                f"Host: 127.0.0.1:{port}".encode(), b"Host:"
            ),
            b"a WebSocket handshake needs exactly one Host header",
        ),
    ],
)
async def test_an_upgrade_needs_http_1_1_and_one_host(
    relay_factory: RelayFactory,
    name: str,
    request_of: Callable[[int], bytes],
    body: bytes,
) -> None:
    relay = await relay_factory()
    refused = await exchange(relay.port, request_of(relay.port))
    assert (refused.status, refused.body) == (400, body), name
    assert b"connection: close" in refused.head
    # The same request with HTTP/1.1 and its one Host is accepted.
    assert (await exchange(relay.port, upgrade_request(relay.port, "/v1/ws"))).status == 101


async def test_an_http_1_0_upgrade_behind_pipelined_requests_is_refused_after_their_answers(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    relay = await relay_factory()
    caplog.set_level(logging.WARNING, logger="relay.http")
    upgrade = upgrade_request(relay.port, "/v1/ws").replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(get() * 2 + upgrade + client_frame(0x2, b"never read"))
    buffer = bytearray()
    for _ in range(2):
        assert (await read_response(reader, buffer)).status == 200
    refused = await read_response(reader, buffer)
    assert (refused.status, refused.body) == (400, b"a WebSocket handshake needs HTTP/1.1")
    with contextlib.suppress(ConnectionResetError):  # the frame was never read
        assert await ended(reader) == b""
    writer.close()
    assert refusal_lines(caplog, "127.0.0.1") == [
        "refused 127.0.0.1: 400: a WebSocket handshake needs HTTP/1.1"
    ]
    async with httpx.AsyncClient(base_url=relay.http_url) as http:
        metrics = (await http.get("/metrics")).text
    assert 'relay_http_refused_total{status="400"} 1.0' in metrics


# --- order: pipelined requests, then the upgrade, then only frames ------------------------


async def test_pipelined_requests_are_answered_before_the_101_and_frames_follow_it(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory()
    hello = client_frame(0x2, msgpack.packb({"type": "hello", "id": "piped"}))
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(
        get() * 3 + upgrade_request(relay.port, "/v1/ws", subprotocols=("relay.v1",)) + hello
    )
    buffer = bytearray()
    for _ in range(3):
        response = await read_response(reader, buffer)
        assert (response.status, response.body) == (200, b'{"status":"ok"}')
    assert (await read_response(reader, buffer)).status == 101
    frames = ServerFrames()
    frames.feed(bytes(buffer))
    writer.write(close_frame(1000))
    rest = await ended(reader)
    assert b"HTTP/1.1" not in rest
    frames.feed(rest)
    welcome = frames.next()
    assert welcome is not None and msgpack.unpackb(welcome.payload)["type"] == "welcome"
    closing = frames.next()
    assert closing is not None and (closing.opcode, closing.close_code) == (0x8, 1000)
    assert frames.next() is None and not frames.buffer
    writer.close()


def test_the_refusal_log_says_how_many_lines_it_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    refusals = RefusalLog(table_size=2, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="relay.http")
    for _ in range(3):
        refusals.refused("203.0.113.9", "429: busy")
    refusals.refused("203.0.113.10", "408: slow")
    now[0] = 59.9
    refusals.refused("203.0.113.9", "429: busy")
    now[0] = 60.0
    refusals.refused("203.0.113.9", "429: busy")
    assert [record.getMessage() for record in caplog.records] == [
        "refused 203.0.113.9: 429: busy",
        "refused 203.0.113.10: 408: slow",
        "refused 203.0.113.9: 429: busy (3 more refusals of this address since its last line)",
    ]
    refusals.refused("203.0.113.11", "429: busy")  # the table holds two addresses
    refusals.refused("203.0.113.10", "408: slow")  # forgotten: logged again
    assert caplog.records[-1].getMessage() == "refused 203.0.113.10: 408: slow"


async def test_an_upgrade_leaves_no_http_protocol_for_the_collector(relay: RunningRelay) -> None:
    # Freed by reference counting at the upgrade, not kept in a cycle until a
    # full collection: a burst of connections would otherwise double their cost.
    gc.collect()
    gc.disable()
    try:
        peers = [await join_as(relay.url, f"p{n}") for n in range(10)]
        left = [o for o in gc.get_objects() if isinstance(o, RelayHTTPProtocol)]
    finally:
        gc.enable()
    assert left == []
    for peer in peers:
        await peer.close()


# --- the plain upgrade, whole in the first read ------------------------------------------


async def test_a_plain_upgrade_in_one_read_skips_the_http_parser_and_is_answered_alike(
    relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed: list[bytes] = []
    feed, received = RelayHTTPProtocol._feed, RelayHTTPProtocol.data_received
    read = asyncio.Event()

    def counting_feed(self: RelayHTTPProtocol, piece: bytes) -> bool:
        fed.append(piece)
        return feed(self, piece)

    def noting_reads(self: RelayHTTPProtocol, data: bytes) -> None:
        read.set()
        received(self, data)

    monkeypatch.setattr(RelayHTTPProtocol, "_feed", counting_feed)
    monkeypatch.setattr(RelayHTTPProtocol, "data_received", noting_reads)
    request = upgrade_request(relay.port, "/v1/ws", subprotocols=("relay.v1",))
    hello = client_frame(0x2, msgpack.packb({"type": "hello", "id": "alice"}))
    heads = []
    for cut in (None, 40):  # whole in one read, frames after it included; then in two reads
        fed.clear()
        read.clear()
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        if cut is None:
            writer.write(request + hello)
        else:
            writer.write(request[:cut])
            with anyio.fail_after(TIMEOUT):
                await read.wait()  # the relay read the first part alone
            writer.write(request[cut:] + hello)
        buffer = bytearray()
        response = await read_response(reader, buffer)
        assert response.status == 101
        heads.append([line for line in response.head.split(b"\r\n") if b"date:" not in line])
        assert (fed == []) == (cut is None), fed
        writer.write(close_frame(1000))
        frames = ServerFrames()
        frames.feed(bytes(buffer) + await ended(reader))
        welcome = frames.next()
        assert welcome is not None and msgpack.unpackb(welcome.payload)["id"] == "alice"
        writer.close()
    assert heads[0] == heads[1]


async def test_only_a_first_read_may_skip_the_parser(
    relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A body that reads like a plain upgrade, arriving in a read of its own,
    # is a body: the connection speaks HTTP since its first read.
    received = RelayHTTPProtocol.data_received
    read = asyncio.Event()

    def noting_reads(self: RelayHTTPProtocol, data: bytes) -> None:
        read.set()
        received(self, data)

    monkeypatch.setattr(RelayHTTPProtocol, "data_received", noting_reads)
    body = upgrade_request(relay.port, "/v1/ws")
    head = f"POST /healthz HTTP/1.1\r\nHost: relay\r\nContent-Length: {len(body)}\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(head.encode())
    with anyio.fail_after(TIMEOUT):
        await read.wait()
    writer.write(body + get("/healthz", "Connection: close"))
    buffer = bytearray()
    assert (await read_response(reader, buffer)).status == 405
    assert (await read_response(reader, buffer)).status == 200
    writer.close()
