"""A raw protocol peer for the server's tests: websockets + msgpack, no client library."""

from __future__ import annotations

from typing import Any

import anyio
import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

TIMEOUT = 5.0


class RawPeer:
    """One WebSocket speaking protocol v1 by hand."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}

    @property
    def id(self) -> str:
        return str(self.welcome["id"])

    async def send(self, envelope: dict[str, Any]) -> None:
        await self.ws.send(msgpack.packb(envelope))

    async def send_raw(self, frame: bytes | str) -> None:
        await self.ws.send(frame)

    async def recv(self) -> dict[str, Any]:
        with anyio.fail_after(TIMEOUT):
            frame = await self.ws.recv()
        assert isinstance(frame, bytes), f"expected a binary frame, got {frame!r}"
        envelope = msgpack.unpackb(frame, strict_map_key=False)
        assert isinstance(envelope, dict)
        return envelope

    async def expect(self, **fields: Any) -> dict[str, Any]:
        """Receive one envelope and check the given fields."""
        envelope = await self.recv()
        for key, value in fields.items():
            assert envelope.get(key) == value, f"{key}: {envelope!r}"
        return envelope

    async def request(self, envelope: dict[str, Any]) -> dict[str, Any]:
        await self.send(envelope)
        return await self.recv()

    async def closed(self) -> int:
        """Wait for the server to close the socket; returns the close code."""
        with anyio.fail_after(TIMEOUT):
            try:
                while True:
                    await self.ws.recv()
            except ConnectionClosed as exc:
                assert exc.rcvd is not None, "closed without a close frame"
                return exc.rcvd.code

    async def drain(self) -> tuple[list[dict[str, Any]], int]:
        """Everything received until the server closes the socket, and the close code."""
        received: list[dict[str, Any]] = []
        with anyio.fail_after(TIMEOUT):
            try:
                while True:
                    received.append(msgpack.unpackb(await self.ws.recv(), strict_map_key=False))
            except ConnectionClosed as exc:
                assert exc.rcvd is not None, "closed without a close frame"
                return received, exc.rcvd.code

    async def close(self, code: int = 1000) -> None:
        await self.ws.close(code)


async def open_peer(url: str, **kwargs: Any) -> RawPeer:
    """Connect without sending hello."""
    kwargs.setdefault("subprotocols", ["relay.v1"])
    ws = await connect(url, max_size=None, **kwargs)
    return RawPeer(ws)


async def join_as(
    url: str, peer_id: str | None = None, *, ssl: Any = None, **hello: Any
) -> RawPeer:
    """Connect and register; the welcome is in ``peer.welcome``."""
    peer = await open_peer(url, ssl=ssl) if ssl is not None else await open_peer(url)
    envelope = {"type": "hello", **hello}
    if peer_id is not None:
        envelope["id"] = peer_id
    peer.welcome = await peer.request(envelope)
    assert peer.welcome["type"] == "welcome", peer.welcome
    return peer


async def replay_window_after_a_busy_reader(
    url: str, hub: Any, *, ssl: Any = None, messages: int = 100, size: int = 16_384
) -> int:
    """Bytes the relay keeps for replay after sending a reader that keeps up ``messages``.

    The reader reads each message before the next is sent, so everything but
    the last frame or so is acknowledged by its host.
    """
    reader = await join_as(url, "reader", ssl=ssl)
    sender = await join_as(url, "sender", ssl=ssl)
    blob = b"x" * size
    for n in range(messages):
        await sender.send({"type": "send", "to": "reader", "d": [n, blob]})
        assert (await reader.expect(type="msg"))["d"][0] == n
    written: int = hub.peers["reader"].written_bytes
    await reader.close()
    await sender.close()
    return written
