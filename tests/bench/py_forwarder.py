"""A pure-Python floor: an asyncio.Protocol WebSocket forwarder on uvloop.

    taskset -c 0 .venv/bin/python tests/bench/py_forwarder.py [PORT]   # 0, the default, picks one

Prints "pyfloor ready on ws://127.0.0.1:PORT/v1/ws" on stderr once listening
(tests/bench/bench.py starts it as `pyfloor`). It is what moving a message costs
in Python with nothing else on the way: a minimal RFC 6455 server (the upgrade,
masked client frames unmasked in C by websockets' speedups, close and ping
answered; no fragmentation, which load.mjs never sends), one msgpack decode and
one encode per message, and frames written straight to the transport. It routes
as tests/bench/ws_forwarder.mjs does: hello → welcome, send → msg to one peer
with `from` stamped, pub → msg to every member of the room, join, and an `ok`
for every request `id`; no validation, limits, queues, resume or metrics.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import struct
import sys
from pathlib import Path
from typing import Any, cast

import msgpack
import uvloop
from websockets.speedups import apply_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CARRIED = ("ev", "room", "rid", "re")  # the request fields a msg keeps, as ws_forwarder.mjs
BINARY, CLOSE, PING, PONG = 0x2, 0x8, 0x9, 0xA
HEAD_ENDS = b"\r\n\r\n"
BACKLOG = 2048  # the relay's (uvicorn's) listen backlog, for the reconnect storm
# A v1 welcome's resume secret, node and limits, as ws_forwarder.mjs sends them.
LIMITS = json.loads((Path(__file__).parent / "welcome_limits.json").read_text())
NODE = f"node-{secrets.token_hex(4)}"

peers: dict[str, Connection] = {}
rooms: dict[str, set[Connection]] = {}


def frame(payload: bytes, opcode: int = BINARY) -> bytes:
    """One unmasked, unfragmented server frame."""
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, size) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, size) + payload


def packed(value: dict[str, Any]) -> bytes:
    return frame(msgpack.packb(value))


def accept(request: bytes) -> bytes:
    """The 101 answer to an upgrade request (only what load.mjs needs is checked)."""
    headers = {}
    for line in request.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    digest = hashlib.sha1(headers[b"sec-websocket-key"] + GUID).digest()
    lines = [
        b"HTTP/1.1 101 Switching Protocols",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: " + base64.b64encode(digest),
    ]
    if b"relay.v1" in headers.get(b"sec-websocket-protocol", b""):
        lines.append(b"Sec-WebSocket-Protocol: relay.v1")
    return b"\r\n".join(lines) + HEAD_ENDS


class Connection(asyncio.Protocol):
    """One client: its upgrade, then its frames, each routed as it is complete."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.rest = b""  # bytes of a frame (or of the upgrade) not complete yet
        self.upgraded = False
        self.me: str | None = None
        self.joined: set[str] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.me is not None and peers.get(self.me) is self:
            del peers[self.me]
        for room in self.joined:
            rooms[room].discard(self)
        self.transport = None

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buffer = self.rest + data if self.rest else data
        at = 0
        if not self.upgraded:
            end = buffer.find(HEAD_ENDS)
            if end < 0:
                self.rest = buffer
                return
            self.write(accept(buffer[:end]))
            self.upgraded = True
            at = end + len(HEAD_ENDS)
        size = len(buffer)
        while size - at >= 2:
            first, second = buffer[at], buffer[at + 1]
            length, start = second & 0x7F, at + 2
            if length == 126:
                length, start = int.from_bytes(buffer[start : start + 2]), start + 2
            elif length == 127:
                length, start = int.from_bytes(buffer[start : start + 8]), start + 8
            masked = second & 0x80
            end = start + (4 if masked else 0) + length
            if end > size:
                break
            payload = buffer[start + 4 : end] if masked else buffer[start:end]
            if masked:
                payload = apply_mask(payload, buffer[start : start + 4])
            at = end
            self.received(first & 0x0F, payload)
            if self.transport is None:
                return
        self.rest = buffer[at:]

    def received(self, opcode: int, payload: bytes) -> None:
        if opcode == CLOSE:
            self.write(frame(payload[:2], CLOSE))
            assert self.transport is not None
            self.transport.close()
            self.transport = None
        elif opcode == PING:
            self.write(frame(payload, PONG))
        elif opcode != PONG:
            self.route(msgpack.unpackb(payload))

    def route(self, envelope: dict[str, Any]) -> None:
        kind = envelope.get("type")
        if kind == "hello":
            self.me = envelope["id"]
            peers[envelope["id"]] = self
            welcome = {"type": "welcome", "id": self.me, "resume": secrets.token_urlsafe(24)}
            welcome.update(limits=LIMITS, node=NODE, resumed=False)
            self.write(packed(welcome))
            return  # a hello's id is the peer's, not a request's
        if kind == "send":
            target = peers.get(envelope.get("to"))
            if target is not None:
                target.write(packed(self.delivered(envelope)))
        elif kind == "pub":
            data = packed(self.delivered(envelope))
            echo = envelope.get("echo")
            for member in rooms.get(envelope.get("room"), ()):
                if member is not self or echo:
                    member.write(data)
        elif kind == "join":
            rooms.setdefault(envelope["room"], set()).add(self)
            self.joined.add(envelope["room"])
        if "id" in envelope:
            self.write(packed({"type": "ok", "id": envelope["id"]}))

    def delivered(self, envelope: dict[str, Any]) -> dict[str, Any]:
        msg = {"type": "msg", "from": self.me, "d": envelope.get("d")}
        for key in CARRIED:
            if key in envelope:
                msg[key] = envelope[key]
        return msg


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Connection, "127.0.0.1", port, backlog=BACKLOG)
    bound = server.sockets[0].getsockname()[1]
    print(f"pyfloor ready on ws://127.0.0.1:{bound}/v1/ws", file=sys.stderr, flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
