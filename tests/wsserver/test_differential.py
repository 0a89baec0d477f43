"""The frame layer against uvicorn's websockets-sansio, on the real relay app.

Hypothesis writes client frame sequences (binary messages cut into random
continuation frames, pings between the fragments, sizes up to the frame
limit, then one ending: a clean close, or a broken frame) and a raw socket
sends them to two relays, one per implementation. A second, well-behaved peer
records what the relay delivers to it. Both relays must deliver the same
messages, answer the same pongs and close with the same code, and that code
must be the one RFC 6455 asks for.

Where the two legitimately differ, the test at the end of this file asserts
the RFC behaviour of ours (see docs/design.md, "The frame layer"):

- a message that arrived in the same read as a later protocol error is
  delivered by ours; websockets-sansio drops every message of that read;
- a 64-bit length with its top bit set is a framing error (1002) for ours,
  a too-big message (1009) for websockets;
- invalid UTF-8 in the first fragment of a text message fails at once (1007),
  where websockets-sansio waits for the message's last fragment;
- a ping between the fragments of a message is not part of the message:
  websockets counts it against ``max_size`` and closes 1009 when the message
  so far plus the ping exceed the limit (the property test skips the
  comparison for those scripts and still checks ours);
- a message in more than ``max_fragments`` frames closes 1009, and one not
  complete ``message_timeout_seconds`` after its first byte closes 1008:
  websockets bounds a message in bytes only. Both relays run with these
  bounds, which the scripts' messages (at most 5 frames, sent at once) stay
  within.

Both agree on frames a client sends in the same write as its upgrade request
(before the 101): they are read, in order, after the handshake (the relay's
HTTP protocol hands them over with the socket).

The keepalive is outside what this test compares (its relays ping every
20 s): both implementations close a peer silent through a ping round with
1011 ``keepalive ping timeout``, which tests/wsserver/test_keepalive.py
checks on each.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from relay.app import create_app
from relay.server import uvicorn_config
from relay.settings import Settings
from tests.wsserver.frames import (
    RawSocket,
    ServerFrames,
    client_frame,
    close_frame,
    split_response,
    upgrade_request,
)

MAX = 1024  # max_frame_bytes of both relays
MAX_FRAGMENTS = 8  # max_fragments of both relays: more than a script's 5 frames
MESSAGE_TIMEOUT = 1.0  # message_timeout_seconds of both relays
IMPLEMENTATIONS = ("websockets-sansio", "relay")
_ids = itertools.count(100000)


class _ThreadedServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = threading.Event()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.up.set()


@pytest.fixture(scope="module")
def relays() -> Iterator[dict[str, int]]:
    """One relay per implementation, each in its own thread and event loop; name -> port."""
    servers: list[tuple[_ThreadedServer, threading.Thread]] = []
    ports: dict[str, int] = {}
    for ws_impl in IMPLEMENTATIONS:
        relay_settings = Settings(
            port=0,
            log_level="warning",
            ws_impl=ws_impl,
            max_frame_bytes=MAX,
            max_fragments=MAX_FRAGMENTS,
            message_timeout_seconds=MESSAGE_TIMEOUT,
            handshake_rate_per_second=0,
            max_connections_per_ip=0,
        )
        server = _ThreadedServer(uvicorn_config(create_app(relay_settings), relay_settings))
        thread = threading.Thread(target=asyncio.run, args=(server.serve(),), daemon=True)
        thread.start()
        assert server.up.wait(10), f"{ws_impl} relay did not start"
        ports[ws_impl] = server.servers[0].sockets[0].getsockname()[1]
        servers.append((server, thread))
    yield ports
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


# --- scripts ---------------------------------------------------------------------------


@dataclass
class Step:
    """One ``send`` envelope to B, cut into frames with pings between some of them."""

    size: int  # of the envelope
    cuts: list[int]  # where continuation frames start
    pings: list[bytes | None]  # after each frame but the last: a ping payload or None
    masks: list[bytes]

    def frames(self, to: str, request_id: int) -> bytes:
        envelope, _ = send_envelope(to, request_id, self.size)
        pieces = [envelope[a:b] for a, b in itertools.pairwise([0, *self.cuts, self.size])]
        out = []
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            opcode = 0x2 if index == 0 else 0x0
            out.append(client_frame(opcode, piece, fin=last, mask=self.masks[index]))
            if not last and (ping := self.pings[index]) is not None:
                out.append(client_frame(0x9, ping, mask=self.masks[index]))
        return b"".join(out)

    @property
    def payload(self) -> bytes:
        return payload_of(self.size)

    @property
    def trips_websockets_size_check(self) -> bool:
        """Whether websockets counts a ping inside this message against ``max_size`` (1009)."""
        return any(
            ping is not None and cut + len(ping) > MAX
            for cut, ping in zip(self.cuts, self.pings, strict=True)
        )

    @property
    def ping_payloads(self) -> list[bytes]:
        return [ping for ping in self.pings if ping is not None]


@dataclass
class Script:
    steps: list[Step]
    ending: bytes  # the last bytes A sends
    expected_code: int


B_ID = "b000000"  # B's ids all have this length, so envelope sizes hold for every B


def payload_of(size: int) -> bytes:
    """The ``d`` that makes a ``send`` envelope to B ``size`` bytes long."""
    room = size - MIN_ENVELOPE  # bytes for d beyond an empty bin8
    length = room if room < 256 else room - 1  # bin16 takes one header byte more
    return bytes(i % 251 for i in range(length))


def send_envelope(to: str, request_id: int, size: int) -> tuple[bytes, bytes]:
    """A ``send`` envelope of exactly ``size`` bytes (``request_id`` < 128), and its ``d``."""
    payload = payload_of(size)
    envelope: bytes = msgpack.packb({"type": "send", "to": to, "d": payload, "id": request_id})
    assert len(envelope) == size, (len(envelope), size)
    return envelope, payload


MIN_ENVELOPE = len(msgpack.packb({"type": "send", "to": B_ID, "d": b"", "id": 1}))
masks = st.binary(min_size=4, max_size=4)


@st.composite
def steps(draw: st.DrawFn) -> Step:
    # No d makes an envelope MIN_ENVELOPE + 256 bytes long: 255 bytes of bin8
    # are one byte short, 256 bytes of bin16 one byte over.
    sizes = st.integers(MIN_ENVELOPE, MAX).filter(lambda size: size != MIN_ENVELOPE + 256)
    size = draw(st.one_of(st.just(MAX), sizes))
    cuts = sorted(draw(st.lists(st.integers(0, size), max_size=4)))
    pings = [draw(st.none() | st.binary(max_size=125)) for _ in cuts]
    return Step(size, cuts, pings, [draw(masks) for _ in range(len(cuts) + 1)])


VALID_CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 3000, 4999]
INVALID_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]
BAD_OPCODES = [3, 4, 5, 6, 7, 11, 12, 13, 14, 15]


@st.composite
def endings(draw: st.DrawFn) -> tuple[bytes, int]:
    """The last thing A sends, and the close code RFC 6455 (or the relay) answers."""
    kind = draw(
        st.sampled_from(
            [
                "close", "reserved bits", "opcode", "unmasked", "long control",
                "fragmented control", "orphan continuation", "interrupted message",
                "close of 1 byte", "bad close code", "bad close reason", "over the limit",
                "fragments over the limit", "text", "bad text",
            ]
        )
    )  # fmt: skip
    if kind == "close":
        code = draw(st.sampled_from(VALID_CLOSE_CODES))
        reason = draw(st.text(max_size=20)).encode()
        return close_frame(code, reason), code
    if kind == "reserved bits":
        return client_frame(0x2, b"x", rsv=draw(st.integers(1, 7))), 1002
    if kind == "opcode":
        return client_frame(draw(st.sampled_from(BAD_OPCODES)), b"x"), 1002
    if kind == "unmasked":
        return client_frame(draw(st.sampled_from([0x1, 0x2, 0x9])), b"x", mask=None), 1002
    if kind == "long control":
        opcode = draw(st.sampled_from([0x8, 0x9, 0xA]))
        return client_frame(opcode, b"\x03\xe8" + b"p" * draw(st.integers(124, 200))), 1002
    if kind == "fragmented control":
        return client_frame(draw(st.sampled_from([0x8, 0x9, 0xA])), b"", fin=False), 1002
    if kind == "orphan continuation":
        return client_frame(0x0, b"x", fin=draw(st.booleans())), 1002
    if kind == "interrupted message":
        second = client_frame(draw(st.sampled_from([0x1, 0x2])), b"y")
        return client_frame(0x2, b"x", fin=False) + second, 1002
    if kind == "close of 1 byte":
        return client_frame(0x8, b"\x03"), 1002
    if kind == "bad close code":
        return close_frame(draw(st.sampled_from(INVALID_CLOSE_CODES))), 1002
    if kind == "bad close reason":
        return close_frame(1000, b"ok \xff"), 1007
    if kind == "over the limit":
        return client_frame(0x2, b"x" * (MAX + draw(st.integers(1, 100)))), 1009
    if kind == "fragments over the limit":
        first = draw(st.integers(0, MAX))
        rest = MAX + 1 - first
        return client_frame(0x2, b"x" * first, fin=False) + client_frame(0x0, b"y" * rest), 1009
    if kind == "text":
        return client_frame(0x1, draw(st.text(max_size=50)).encode()), 1003  # the relay's rule
    return client_frame(0x1, b"caf\xc3"), 1007  # "bad text": truncated UTF-8


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    drawn = draw(st.lists(steps(), max_size=4))
    ending, code = draw(endings())
    return Script(drawn, ending, code)


# --- running a script ------------------------------------------------------------------


@dataclass
class Outcome:
    delivered: list[bytes]  # the d of every msg B received
    pongs: list[bytes]  # payloads of the pongs A received
    replies: list[str]  # types of the envelopes A received after its welcome
    close_code: int


def recv_envelope(ws: ClientConnection) -> dict[str, Any]:
    frame = ws.recv(timeout=5)
    assert isinstance(frame, bytes)
    envelope: dict[str, Any] = msgpack.unpackb(frame)
    return envelope


def run(port: int, script: Script) -> Outcome:
    url = f"ws://127.0.0.1:{port}/v1/ws"
    b_id = f"b{next(_ids) % 1000000:06d}"
    a_id = f"a{next(_ids)}"
    with sync_connect(url, subprotocols=["relay.v1"]) as b:
        b.send(msgpack.packb({"type": "hello", "id": b_id}))
        assert recv_envelope(b)["type"] == "welcome"
        a = RawSocket(port, "/v1/ws", subprotocols=("relay.v1",))
        try:
            a.send(client_frame(0x2, msgpack.packb({"type": "hello", "id": a_id})))
            assert msgpack.unpackb(a.frame().payload)["type"] == "welcome"
            pongs: list[bytes] = []
            replies: list[str] = []

            def read() -> int | None:
                """Read one frame from A's socket; its envelope's id, or -1 at the close."""
                frame = a.frame()
                if frame.opcode == 0x8:
                    nonlocal close_code
                    close_code = frame.close_code
                    return -1
                if frame.opcode == 0xA:
                    pongs.append(frame.payload)
                    return None
                envelope = msgpack.unpackb(frame.payload)
                replies.append(envelope["type"])
                request: int | None = envelope.get("id")
                return request

            close_code = 0
            for request_id, step in enumerate(script.steps, start=1):
                a.send(step.frames(b_id, request_id))
                while (seen := read()) not in (request_id, -1):
                    pass  # until the relay acknowledges this step's message
                if seen == -1:
                    break
            else:
                a.send(script.ending)
                while read() != -1:
                    pass
        finally:
            a.close()
        # B's own requests are answered after what was queued for it before.
        b.send(msgpack.packb({"type": "ping", "id": "end"}))
        delivered = []
        while (envelope := recv_envelope(b))["type"] != "pong":
            assert (envelope["type"], envelope["from"]) == ("msg", a_id)
            delivered.append(envelope["d"])
    return Outcome(delivered, pongs, replies, close_code)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scripts())
def test_both_implementations_deliver_the_same_and_close_alike(
    relays: dict[str, int], script: Script
) -> None:
    outcomes = {name: run(port, script) for name, port in relays.items()}
    if not any(step.trips_websockets_size_check for step in script.steps):
        assert outcomes["relay"] == outcomes["websockets-sansio"]
    outcome = outcomes["relay"]
    assert outcome.delivered == [step.payload for step in script.steps]
    assert outcome.pongs == [ping for step in script.steps for ping in step.ping_payloads]
    assert outcome.close_code == script.expected_code


# --- where the two differ --------------------------------------------------------------


@contextlib.contextmanager
def opened(relays: dict[str, int]) -> Iterator[tuple[RawSocket, ClientConnection, str]]:
    """A raw peer A (registered) and a websockets peer B on our relay: (A, B, B's id)."""
    port = relays["relay"]
    b_id = f"b{next(_ids) % 1000000:06d}"
    with sync_connect(f"ws://127.0.0.1:{port}/v1/ws", subprotocols=["relay.v1"]) as b:
        b.send(msgpack.packb({"type": "hello", "id": b_id}))
        assert recv_envelope(b)["type"] == "welcome"
        a = RawSocket(port, "/v1/ws", subprotocols=("relay.v1",))
        try:
            a.send(client_frame(0x2, msgpack.packb({"type": "hello", "id": f"a{next(_ids)}"})))
            assert msgpack.unpackb(a.frame().payload)["type"] == "welcome"
            yield a, b, b_id
        finally:
            a.close()


def closed_with(a: RawSocket) -> int:
    while (frame := a.frame()).opcode != 0x8:
        pass
    return frame.close_code


def test_messages_read_with_a_protocol_error_are_still_delivered(
    relays: dict[str, int],
) -> None:
    with opened(relays) as (a, b, b_id):
        envelope, payload = send_envelope(b_id, 1, 100)
        a.send(client_frame(0x2, envelope) + client_frame(0x2, b"unmasked", mask=None))
        assert closed_with(a) == 1002
        message = recv_envelope(b)
        assert (message["type"], message["d"]) == ("msg", payload)


def test_a_64_bit_length_with_its_top_bit_set_is_a_framing_error(
    relays: dict[str, int],
) -> None:
    with opened(relays) as (a, _, _):
        a.send(bytes((0x82, 0xFF)) + struct.pack("!Q", 1 << 63) + b"mask")
        assert closed_with(a) == 1002


def test_invalid_utf8_fails_at_the_first_fragment(relays: dict[str, int]) -> None:
    with opened(relays) as (a, _, _):
        a.send(client_frame(0x1, b"\xff", fin=False))  # the message is not over
        assert closed_with(a) == 1007


def test_a_ping_between_fragments_does_not_count_against_max_size(
    relays: dict[str, int],
) -> None:
    with opened(relays) as (a, b, b_id):
        envelope, payload = send_envelope(b_id, 1, MAX)
        a.send(
            client_frame(0x2, envelope[:1000], fin=False)
            + client_frame(0x9, b"p" * 30)
            + client_frame(0x0, envelope[1000:])
        )
        pong = a.frame()
        assert (pong.opcode, pong.payload) == (0xA, b"p" * 30)
        assert msgpack.unpackb(a.frame().payload) == {"type": "ok", "id": 1}
        message = recv_envelope(b)
        assert (message["type"], message["d"]) == ("msg", payload)


# --- frames in the same write as the upgrade request -----------------------------------


@pytest.mark.parametrize("ws_impl", IMPLEMENTATIONS)
def test_frames_sent_with_the_request_head_are_not_lost(
    relays: dict[str, int], ws_impl: str
) -> None:
    # RFC 6455 lets a client wait for the 101; what one sends early is accepted
    # by both implementations, in order, behind the head.
    port = relays[ws_impl]
    b_id = f"b{next(_ids) % 1000000:06d}"
    with sync_connect(f"ws://127.0.0.1:{port}/v1/ws", subprotocols=["relay.v1"]) as b:
        b.send(msgpack.packb({"type": "hello", "id": b_id}))
        assert recv_envelope(b)["type"] == "welcome"
        envelope, payload = send_envelope(b_id, 1, 100)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as a:
            a.sendall(
                upgrade_request(port, "/v1/ws", subprotocols=("relay.v1",))
                + client_frame(0x2, msgpack.packb({"type": "hello", "id": f"a{next(_ids)}"}))
                + client_frame(0x2, envelope)
            )
            data = b""
            while (parsed := split_response(data)) is None:
                data += a.recv(65536)
            status, _, rest = parsed
            assert status == 101
            frames = ServerFrames()
            frames.feed(rest)
            replies: list[str] = []
            while len(replies) < 2:
                while (frame := frames.next()) is None:
                    frames.feed(a.recv(65536))
                replies.append(msgpack.unpackb(frame.payload)["type"])
            assert replies == ["welcome", "ok"]
        message = recv_envelope(b)
        assert (message["type"], message["d"]) == ("msg", payload)


def test_a_message_past_max_fragments_closes_1009(relays: dict[str, int]) -> None:
    with opened(relays) as (a, b, b_id):
        for request_id, count in ((1, MAX_FRAGMENTS), (2, MAX_FRAGMENTS + 1)):
            envelope, _ = send_envelope(b_id, request_id, 100)
            empty = client_frame(0x0, b"", fin=False)
            a.send(
                client_frame(0x2, envelope[:50], fin=False)
                + empty * (count - 2)
                + client_frame(0x0, envelope[50:])
            )
        assert msgpack.unpackb(a.frame().payload) == {"type": "ok", "id": 1}
        assert closed_with(a) == 1009
        message = recv_envelope(b)
        assert (message["type"], message["d"]) == ("msg", payload_of(100))


def test_a_message_not_completed_in_time_closes_1008(relays: dict[str, int]) -> None:
    with opened(relays) as (a, _, _):
        a.send(client_frame(0x2, b"x", fin=False))
        assert closed_with(a) == 1008
