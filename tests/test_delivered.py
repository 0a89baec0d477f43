"""``ok`` for a ``send`` means the receiver's host acknowledged the message.

The relay answers a ``send`` only once the target's TCP stack has
acknowledged the frame (``relay.delivery``), so a message answered ``ok``
survives the relay's own crash: it is in the receiver's kernel, not in the
relay's memory or send buffer.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import anyio
import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import RunningRelay
from tests.peers import RawPeer, join_as
from tests.relay_process import relay_process
from tests.test_slow_consumers import ended_event
from tests.wsserver.frames import RawStream, client_frame, close_frame

pytestmark = pytest.mark.anyio


async def join_with_small_window(url: str, peer_id: str, receive_buffer: int) -> RawPeer:
    """A peer whose socket's receive buffer is ``receive_buffer`` bytes (set before connecting)."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
    ws = await connect(url, sock=sock, subprotocols=["relay.v1"], max_size=None, max_queue=1)
    peer = RawPeer(ws)
    peer.welcome = await peer.request({"type": "hello", "id": peer_id})
    assert peer.welcome["type"] == "welcome"
    return peer


async def test_ok_waits_until_the_receivers_host_acknowledged(relay: RunningRelay) -> None:
    stuck = await join_with_small_window(relay.url, "stuck", 8192)
    stuck.ws.transport.pause_reading()  # its kernel takes a few frames, then its window is shut
    sender = await join_as(relay.url, "sender")
    blob = b"x" * 8000
    for n in range(40):
        await sender.send({"type": "send", "to": "stuck", "d": [n, blob], "id": n})
    # Every frame is on its way (written to stuck's socket or queued), none acknowledged.
    pong = await sender.request({"type": "ping", "id": "barrier"})
    oks_before = []
    while pong["type"] != "pong":
        oks_before.append(pong["id"])
        pong = await sender.recv()
    peer = relay.hub.peers["stuck"]
    assert peer.acks or peer.queue, "frames for stuck should wait for acknowledgement"
    # stuck's host holds at most a few 8 KB frames: the relay's send buffer
    # alone would have taken all 40, and answered them, before.
    assert len(oks_before) <= 8, oks_before
    stuck.ws.transport.resume_reading()
    received = [(await stuck.expect(type="msg"))["d"][0] for _ in range(40)]
    assert received == list(range(40))
    answers = list(oks_before)
    while len(answers) < 40:
        answers.append((await sender.expect(type="ok"))["id"])
    assert sorted(answers) == list(range(40))


async def test_a_pub_to_a_resuming_member_is_answered_queued(relay: RunningRelay) -> None:
    member = await join_as(relay.url, "member")
    assert (await member.request({"type": "join", "room": "r", "id": 1}))["type"] == "ok"
    publisher = await join_as(relay.url, "publisher")
    ended = ended_event(relay.hub, "member")
    member.ws.transport.abort()  # a dropped link: the member is kept for a resume
    with anyio.fail_after(5):
        await ended.wait()
    ok = await publisher.request({"type": "pub", "room": "r", "d": 1, "id": 7})
    assert ok == {"type": "ok", "id": 7, "queued": True}


async def test_sigkill_loses_no_message_answered_ok() -> None:
    """A slow reader that also sends, a sender faster than it reads, then kill -9."""
    with relay_process() as (process, url):
        # A small window, so that the backlog waits on the relay rather than
        # in the reader's kernel (where it would survive the crash anyway).
        reader = await join_with_small_window(url, "reader", 16384)
        sender = await join_as(url, "sender")
        blob = b"y" * 4000
        oks: set[int] = set()
        received: list[int] = []
        backlog = anyio.Event()  # ~3 s of sending: ~1 MB waits behind the reader
        killed = False

        async def send() -> None:
            start = time.monotonic()
            sent = 0
            with pytest.raises(ConnectionClosed):
                while True:
                    if sent > (time.monotonic() - start) * 180:
                        await anyio.sleep(1 / 180)  # pacing, not synchronisation
                        continue
                    envelope = {"type": "send", "to": "reader", "d": [sent, blob], "id": sent}
                    await sender.send(envelope)
                    sent += 1
                    if sent == 600:
                        backlog.set()

        async def answers() -> None:
            with pytest.raises(ConnectionClosed):
                while True:
                    reply = msgpack.unpackb(await sender.ws.recv())
                    if reply["type"] == "ok":
                        oks.add(reply["id"])

        async def read_slowly() -> None:
            with pytest.raises(ConnectionClosed):
                while True:
                    message = msgpack.unpackb(await reader.ws.recv())
                    received.append(message["d"][0])
                    if killed:
                        continue  # reads what its kernel holds as fast as it can
                    # Writing to a reset socket would make the client library
                    # drop what it has not read yet: it sends only before.
                    if len(received) % 10 == 0:
                        await reader.send({"type": "send", "to": "sender", "d": "still here"})
                    await anyio.sleep(1 / 100)  # reads 100/s while the relay lives

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(send)
            tasks.start_soon(answers)
            tasks.start_soon(read_slowly)
            with anyio.fail_after(30):
                await backlog.wait()
            killed = True
            process.send_signal(signal.SIGKILL)
    assert len(oks) > 100, "the run should have answered many sends"
    missing = oks - set(received)
    assert not missing, f"{len(missing)} messages answered ok never arrived: {sorted(missing)[:20]}"


async def test_a_peer_that_closes_first_gets_what_was_sent_before_and_its_senders_hear_ok(
    relay: RunningRelay,
) -> None:
    """What the relay wrote before a peer's close arrived is the peer's to read: not lost."""
    closer = await RawStream.open(relay.port, "/v1/ws", subprotocols=("relay.v1",), rcvbuf=8192)
    closer.send(client_frame(0x2, msgpack.packb({"type": "hello", "id": "closer"})))
    assert msgpack.unpackb((await closer.frame()).payload)["type"] == "welcome"
    sender = await join_as(relay.url, "sender")
    blob = b"x" * 8000
    for n in range(40):  # 320 KB: more than the closer's host takes before it reads
        await sender.send({"type": "send", "to": "closer", "d": [n, blob], "id": n})
    await sender.send({"type": "ping", "id": "barrier"})
    answers: dict[Any, dict[str, Any]] = {}
    while "barrier" not in answers:
        reply = await sender.recv()
        answers[reply["id"]] = reply
    assert relay.hub.peers["closer"].acks, "frames for closer should wait for acknowledgement"
    closer.send(close_frame(1000))  # it closes first, then reads what was already on its way
    received = []
    while (frame := await closer.frame()).opcode != 0x8:
        received.append(msgpack.unpackb(frame.payload)["d"][0])
    closer.close()
    with anyio.fail_after(5):
        while len(answers) < 41:
            reply = await sender.recv()
            answers[reply["id"]] = reply
    assert received == list(range(40))
    assert all(answers[n] == {"type": "ok", "id": n} for n in range(40)), answers
