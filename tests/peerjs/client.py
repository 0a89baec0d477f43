"""A raw PeerJS client for the server's tests: websockets and JSON, no PeerJS library."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import RunningRelay

TIMEOUT = 5.0


class PeerJSClient:
    """One PeerJS WebSocket, spoken by hand."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def send_raw(self, frame: str | bytes) -> None:
        await self.ws.send(frame)

    async def recv(self) -> dict[str, Any]:
        with anyio.fail_after(TIMEOUT):
            frame = await self.ws.recv()
        assert isinstance(frame, str), f"expected a text frame, got {frame!r}"
        message = json.loads(frame)
        assert isinstance(message, dict)
        return message

    async def expect(self, **fields: Any) -> dict[str, Any]:
        """Receive one message and check the given fields (``type`` and the others)."""
        message = await self.recv()
        for key, value in fields.items():
            assert message.get(key) == value, f"{key}: {message!r}"
        return message

    async def drain(self) -> tuple[list[dict[str, Any]], int]:
        """Everything received until the server closes the socket, and the close code."""
        received: list[dict[str, Any]] = []
        with anyio.fail_after(TIMEOUT):
            try:
                while True:
                    received.append(json.loads(await self.ws.recv()))
            except ConnectionClosed as exc:
                assert exc.rcvd is not None, "closed without a close frame"
                return received, exc.rcvd.code

    async def close(self) -> None:
        await self.ws.close()


def peerjs_url(relay: RunningRelay, path: str = "/peerjs", **query: str) -> str:
    """The PeerJS socket URL of ``relay`` with ``query`` (key defaults to peerjs)."""
    return f"ws://127.0.0.1:{relay.port}{path}/peerjs?{urlencode({'key': 'peerjs', **query})}"


async def open_peerjs(url: str, **kwargs: Any) -> PeerJSClient:
    """Connect, expecting nothing yet."""
    return PeerJSClient(await connect(url, max_size=None, **kwargs))


async def join_peerjs(
    relay: RunningRelay, peer_id: str, token: str = "tok", **query: str
) -> PeerJSClient:
    """Connect as ``peer_id`` and wait for ``OPEN``."""
    client = await open_peerjs(peerjs_url(relay, id=peer_id, token=token, **query))
    await client.expect(type="OPEN")
    return client


async def until(condition: Any, seconds: float = TIMEOUT) -> None:
    """Wait for a condition of the server's state that no message announces."""
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 -- the hub exposes no event to await
            await anyio.sleep(0.01)
