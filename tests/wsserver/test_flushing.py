"""The flusher: every connection written to in a pass is flushed when it ends, by one callback."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
import uvicorn
from uvicorn.server import ServerState

from relay.wsserver import DirectConnection, RelayWebSocketProtocol
from relay.wsserver.flushing import Flusher, flusher_of
from tests.wsserver.conftest import DirectApp
from tests.wsserver.frames import upgrade_request
from tests.wsserver.test_direct import CountingTransport, frames_in

pytestmark = pytest.mark.anyio


class Gathered:
    """A connection that records its flushes, and may fail them."""

    def __init__(self, name: str, flushed: list[str], *, fails: bool = False) -> None:
        self.name = name
        self.flushed = flushed
        self.fails = fails

    def flush(self) -> None:
        self.flushed.append(self.name)
        if self.fails:
            raise OSError("the transport refused")


async def test_connections_asking_in_one_pass_are_flushed_in_order_when_it_ends() -> None:
    flushed: list[str] = []
    flusher = Flusher(asyncio.get_running_loop())
    for name in ("a", "b", "c"):
        flusher.flush_after_pass(Gathered(name, flushed))
    assert flushed == []  # nothing before the pass ends
    await asyncio.sleep(0)
    assert flushed == ["a", "b", "c"]
    assert flusher.due == []


async def test_one_failing_flush_is_logged_and_the_others_still_leave(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flushed: list[str] = []
    flusher = Flusher(asyncio.get_running_loop())
    flusher.flush_after_pass(Gathered("a", flushed))
    flusher.flush_after_pass(Gathered("broken", flushed, fails=True))
    flusher.flush_after_pass(Gathered("c", flushed))
    with caplog.at_level(logging.ERROR, logger="uvicorn.error"):
        await asyncio.sleep(0)
    assert flushed == ["a", "broken", "c"]
    assert "flushing a WebSocket connection failed" in caplog.text


async def test_a_connection_asking_while_others_are_flushed_leaves_in_the_next_pass() -> None:
    flushed: list[str] = []
    flusher = Flusher(asyncio.get_running_loop())
    late = Gathered("late", flushed)

    class AsksForAnother(Gathered):
        def flush(self) -> None:
            super().flush()
            flusher.flush_after_pass(late)

    flusher.flush_after_pass(AsksForAnother("first", flushed))
    await asyncio.sleep(0)
    assert flushed == ["first"]
    await asyncio.sleep(0)
    assert flushed == ["first", "late"]


def test_the_connections_of_one_server_share_its_flusher() -> None:
    loop = asyncio.new_event_loop()
    try:
        one, other = ServerState(), ServerState()
        assert flusher_of(one, loop) is flusher_of(one, loop)
        assert flusher_of(one, loop) is not flusher_of(other, loop)
    finally:
        loop.close()


async def open_connections(
    count: int,
) -> list[tuple[RelayWebSocketProtocol, CountingTransport, DirectConnection]]:
    """``count`` open connections of one server, each on a transport that records its writes."""
    app = DirectApp()
    config = uvicorn.Config(app, ws=RelayWebSocketProtocol, lifespan="off", log_level="warning")
    config.load()
    server_state = ServerState()
    opened = []
    for _ in range(count):
        protocol = RelayWebSocketProtocol(config=config, server_state=server_state, app_state={})
        transport = CountingTransport()
        protocol.connection_made(transport)
        protocol.data_received(upgrade_request(80))
        opened.append((protocol, transport, (await app.next()).conn))
        transport.calls.clear()  # the 101
    return opened


async def test_frames_written_to_many_connections_in_one_pass_leave_from_one_callback() -> None:
    opened = await open_connections(3)
    transports = [transport for _, transport, _ in opened]
    connections = [connection for _, _, connection in opened]
    loop = asyncio.get_running_loop()
    scheduled: list[object] = []
    original = loop.call_soon

    def counting_call_soon(callback: object, *args: object, **kwargs: object) -> object:
        scheduled.append(callback)
        return original(callback, *args, **kwargs)  # type: ignore[arg-type]

    loop.call_soon = counting_call_soon  # type: ignore[method-assign,assignment]
    try:
        for index, connection in enumerate(connections):
            connection.write(b"first %d" % index)
            connection.write(b"second %d" % index)
    finally:
        loop.call_soon = original  # type: ignore[method-assign]
    assert len(scheduled) == 1  # one callback for the three connections
    assert all(transport.calls == [] for transport in transports)
    await asyncio.sleep(0)
    for index, transport in enumerate(transports):
        assert len(transport.calls) == 1
        assert frames_in(transport.calls[0]) == [b"first %d" % index, b"second %d" % index]


async def test_a_lone_frame_waiting_for_the_flush_is_untracked_by_the_collector() -> None:
    # A room's publish leaves one frame waiting on each of thousands of
    # connections while the pass goes on: held in a list, each outlived the
    # pass's collections and was promoted, and full collections followed.
    [(protocol, transport, connection)] = await open_connections(1)
    connection.write(b"only")
    gc.collect()
    assert not gc.is_tracked(protocol._out)
    await asyncio.sleep(0)
    assert [frames_in(call) for call in transport.calls] == [[b"only"]]


async def test_frames_after_the_first_in_a_pass_leave_with_it_in_order() -> None:
    [(_, transport, connection)] = await open_connections(1)
    for n in range(4):
        connection.write(b"frame %d" % n)
    await asyncio.sleep(0)
    assert [frames_in(call) for call in transport.calls] == [
        [b"frame 0", b"frame 1", b"frame 2", b"frame 3"]
    ]
