"""HTTP-transport sessions for the deploy tests: registered, and put through their paces."""

from __future__ import annotations

import anyio
import httpx

from tests.httppeer import HTTPPeer, StreamReader
from tests.peers import RawPeer


async def streaming(
    base: str, client: httpx.AsyncClient, tasks: anyio.abc.TaskGroup, peer_id: str
) -> tuple[HTTPPeer, StreamReader]:
    """An HTTP session at ``base`` (…/v1/http), registered as ``peer_id``, its stream read."""
    peer = HTTPPeer(client, base)
    opened = await peer.open()
    assert opened.status_code == 200, f"{peer_id}: {opened.status_code} {opened.text}"
    reader = StreamReader(peer)
    tasks.start_soon(reader.run)
    assert (await peer.send({"type": "hello", "id": peer_id})).status_code == 204
    await reader.envelope(type="welcome", id=peer_id)
    return peer, reader


async def exchange_over_a_stream(peer: HTTPPeer, stream: StreamReader, bob: RawPeer) -> None:
    """``peer`` (registered as alice) and the WebSocket peer ``bob``: both ways, a room, ok and
    err, as between two WebSockets."""
    assert (
        await peer.send({"type": "send", "to": "bob", "d": b"\x00hi", "id": 1})
    ).status_code == 204
    await bob.expect(type="msg", **{"from": "alice", "d": b"\x00hi"})
    await stream.envelope(type="ok", id=1)
    await bob.send({"type": "send", "to": "alice", "d": {"n": 1}, "id": 2})
    await stream.envelope(type="msg", **{"from": "bob", "d": {"n": 1}})
    assert (await peer.ack()).status_code == 204
    await bob.expect(type="ok", id=2)
    assert (await peer.send({"type": "join", "room": "r", "id": 3})).status_code == 204
    await stream.envelope(type="ok", id=3)
    await bob.send({"type": "pub", "room": "r", "d": 7})
    await stream.envelope(type="msg", room="r", d=7)
    assert (await peer.send({"type": "send", "to": "nobody", "d": 1, "id": 4})).status_code == 204
    await stream.envelope(type="err", code="peer-offline", id=4)
