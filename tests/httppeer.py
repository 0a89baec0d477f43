"""A raw peer of the HTTP transport for the server's tests: httpx + records, no client library."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import msgpack

from relay.httptransport.records import CLOSE, ENVELOPE, HEAD_BYTES, KEEPALIVE

TIMEOUT = 5.0


def envelope_body(*envelopes: dict[str, Any]) -> bytes:
    """A send body: one envelope record per envelope."""
    body = b""
    for envelope in envelopes:
        frame = msgpack.packb(envelope)
        body += struct.pack(">BI", ENVELOPE, len(frame)) + frame
    return body


class Records:
    """Parses records out of chunks as they come."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[tuple[int, Any]]:
        """The whole records ``chunk`` completes: (kind, envelope / close map / None)."""
        self._buffer += chunk
        records: list[tuple[int, Any]] = []
        while len(self._buffer) >= HEAD_BYTES:
            kind, length = struct.unpack_from(">BI", self._buffer)
            if len(self._buffer) < HEAD_BYTES + length:
                break
            payload = self._buffer[HEAD_BYTES : HEAD_BYTES + length]
            self._buffer = self._buffer[HEAD_BYTES + length :]
            value = None if kind == KEEPALIVE else msgpack.unpackb(payload, strict_map_key=False)
            records.append((kind, value))
        return records


class HTTPPeer:
    """One HTTP session, driven request by request."""

    def __init__(self, client: httpx.AsyncClient, base: str) -> None:
        self.client = client
        self.base = base  # e.g. http://127.0.0.1:8080/v1/http
        self.secret = ""
        self.received = 0  # envelope records received
        self.seq = 0
        self.opened: dict[str, Any] = {}
        self.closed: dict[str, Any] | None = None  # the close record, once received

    def headers(self, **extra: str) -> dict[str, str]:
        return {"relay-session": self.secret, "relay-received": str(self.received), **extra}

    async def open(self, **headers: str) -> httpx.Response:
        response = await self.client.post(f"{self.base}/open", headers=headers)
        if response.status_code == 200:
            self.opened = msgpack.unpackb(response.content)
            self.secret = self.opened["session"]
        return response

    async def send(self, *envelopes: dict[str, Any], seq: int | None = None) -> httpx.Response:
        """POST one batch (the next number unless ``seq`` is given)."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        return await self.client.post(
            f"{self.base}/send", headers=self.headers(**{"relay-seq": str(seq)}),
            content=envelope_body(*envelopes),
        )  # fmt: skip

    async def ack(self) -> httpx.Response:
        return await self.client.post(f"{self.base}/ack", headers=self.headers())

    async def close(self) -> httpx.Response:
        return await self.client.post(f"{self.base}/close", headers=self.headers())

    async def poll(self) -> list[tuple[int, Any]]:
        """One long-poll: the records it answered with (counted received)."""
        response = await self.client.post(f"{self.base}/poll", headers=self.headers())
        assert response.status_code == 200, response.text
        return self._count(Records().feed(response.content))

    def _count(self, records: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
        for kind, value in records:
            if kind == ENVELOPE:
                self.received += 1
            elif kind == CLOSE:
                self.closed = value
        return records

    async def stream(self) -> AsyncIterator[tuple[int, Any]]:
        """The stream's records as they come (counted received), until it ends."""
        parser = Records()
        async with self.client.stream("POST", f"{self.base}/stream", headers=self.headers()) as r:
            assert r.status_code == 200, (await r.aread()).decode()
            async for chunk in r.aiter_raw():
                for record in self._count(parser.feed(chunk)):
                    yield record


class StreamReader:
    """A stream read in the background into a queue of envelopes."""

    def __init__(self, peer: HTTPPeer) -> None:
        self.peer = peer
        self.records: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self.scope = anyio.CancelScope()

    async def run(self) -> None:
        with self.scope:
            async for record in self.peer.stream():
                self.records.put_nowait(record)
        self.records.put_nowait((-1, None))  # the stream ended

    async def next(self, *, skip_keepalives: bool = True) -> tuple[int, Any]:
        with anyio.fail_after(TIMEOUT):
            while True:
                kind, value = await self.records.get()
                if kind != KEEPALIVE or not skip_keepalives:
                    return kind, value

    async def envelope(self, **fields: Any) -> dict[str, Any]:
        """The next envelope, checked against ``fields``."""
        kind, value = await self.next()
        assert kind == ENVELOPE, (kind, value)
        for key, expected in fields.items():
            assert value.get(key) == expected, f"{key}: {value!r}"
        return dict(value)


class SessionEnd:
    """Awaits the end of one HTTP session on the node holding it (its transport's ``on_end``)."""

    def __init__(self, sessions: dict[str, Any], secret: str) -> None:
        transport = sessions[secret]
        self.event = anyio.Event()
        ended = transport.on_end

        def on_end() -> None:
            ended()
            self.event.set()

        transport.on_end = on_end

    async def wait(self, seconds: float = TIMEOUT) -> None:
        with anyio.fail_after(seconds):
            await self.event.wait()
