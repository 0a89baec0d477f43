"""Interop of the frame layer with other clients, through the real relay.

Each client does hello -> welcome, sends 64 B, 4 KiB and 60 KiB messages to a
peer that sends them back, a fragmented message (where the client can), a
ping, and a clean close. Chromium is covered by the JS client's browser test.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import RunningRelay
from tests.peers import open_peer

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
SIZES = (64, 4096, 61440)


@pytest.fixture
async def echo_peer(relay: RunningRelay) -> AsyncIterator[None]:
    """A peer "echo" that sends every message back to its sender."""
    assert relay.settings.ws_impl == "relay"
    peer = await open_peer(relay.url)
    await peer.send({"type": "hello", "id": "echo"})
    await peer.expect(type="welcome")

    async def bounce() -> None:
        try:
            while True:
                envelope = msgpack.unpackb(await peer.ws.recv())
                if envelope["type"] == "msg":
                    await peer.send({"type": "send", "to": envelope["from"], "d": envelope["d"]})
        except ConnectionClosed:
            return

    task = asyncio.create_task(bounce())
    yield
    task.cancel()
    await peer.close()


def send_envelope(request_id: int, payload: bytes) -> bytes:
    packed: bytes = msgpack.packb({"type": "send", "to": "echo", "d": payload, "id": request_id})
    return packed


def check_round_trip(replies: list[Any], request_id: int, payload: bytes) -> None:
    by_type = {reply["type"]: reply for reply in map(msgpack.unpackb, replies)}
    assert by_type["ok"]["id"] == request_id
    assert (by_type["msg"]["from"], by_type["msg"]["d"]) == ("echo", payload)


async def test_python_websockets_client(relay: RunningRelay, echo_peer: None) -> None:
    async with connect(relay.url, subprotocols=["relay.v1"], max_size=None) as ws:
        assert ws.subprotocol == "relay.v1"
        await ws.send(msgpack.packb({"type": "hello", "id": "py"}))
        assert msgpack.unpackb(await ws.recv())["type"] == "welcome"
        for request_id, size in enumerate(SIZES):
            payload = os.urandom(size)
            await ws.send(send_envelope(request_id, payload))
            check_round_trip([await ws.recv(), await ws.recv()], request_id, payload)
        payload = os.urandom(5000)
        frame = send_envelope(9, payload)
        await ws.send([frame[:10], frame[10:3000], frame[3000:]])  # three frames
        check_round_trip([await ws.recv(), await ws.recv()], 9, payload)
        with anyio.fail_after(5):
            await (await ws.ping(b"are you there"))
    assert ws.close_code == 1000


async def test_aiohttp_client(relay: RunningRelay, echo_peer: None) -> None:
    # aiohttp has no public API to send a fragmented message: that part is left out.
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            relay.url, protocols=("relay.v1",), autoping=False, max_msg_size=0
        ) as ws,
    ):
        assert ws.protocol == "relay.v1"
        await ws.send_bytes(msgpack.packb({"type": "hello", "id": "aio"}))
        assert msgpack.unpackb(await ws.receive_bytes(timeout=5))["type"] == "welcome"
        for request_id, size in enumerate(SIZES):
            payload = os.urandom(size)
            await ws.send_bytes(send_envelope(request_id, payload))
            replies = [await ws.receive_bytes(timeout=5) for _ in range(2)]
            check_round_trip(replies, request_id, payload)
        await ws.ping(b"are you there")
        pong = await ws.receive(timeout=5)
        assert (pong.type, pong.data) == (aiohttp.WSMsgType.PONG, b"are you there")
        await ws.close()
        assert ws.close_code == 1000


async def test_node_ws_client(relay: RunningRelay, echo_peer: None) -> None:
    script = Path(__file__).with_name("node_client.mjs")
    with anyio.fail_after(30):
        result = await anyio.run_process(
            ["node", str(script), str(ROOT / "clients" / "js"), relay.url], check=False
        )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "ok"
