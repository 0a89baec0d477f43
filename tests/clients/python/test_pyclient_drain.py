"""A drain (1001): the requests the relay left unanswered are sent again after reconnecting.

The relay's contract (docs/protocol.md): at a 1001 close from the relay,
every request it had not answered before its close frame was not acted on.
The relay is real; a proxy in front of it (:mod:`.drainproxy`) plays the
drain: it reads the client's requests, keeps them from the relay, and
closes the client's socket.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
import relay_client
from relay_client import Ack, State

from tests.clients.python.reconnecting import FAST, States, recv, wait

if TYPE_CHECKING:
    from tests.conftest import RunningRelay

    from .conftest import DrainProxyFactory
    from .drainproxy import DrainProxy

pytestmark = pytest.mark.anyio


def asked(envelopes: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """What a socket asked of the relay after its hello: each envelope's type, and data or room."""
    return [(e["type"], e.get("d", e.get("room"))) for e in envelopes if e["type"] != "hello"]


class Calls:
    """Runs a peer's calls as tasks and keeps what each returned or raised, by name."""

    def __init__(self, tasks: anyio.abc.TaskGroup) -> None:
        self._tasks = tasks
        self.results: dict[str, Any] = {}

    def start(self, name: str, call: Callable[[], Awaitable[Any]]) -> None:
        async def run() -> None:
            try:
                self.results[name] = await call()
            except relay_client.RelayError as exc:
                self.results[name] = exc

        self._tasks.start_soon(run)

    async def held(self, proxy: DrainProxy, name: str, call: Callable[[], Awaitable[Any]]) -> None:
        """Start ``call``; wait until the proxy holds its envelope (so calls keep their order)."""
        session = len(proxy.sessions) - 1
        count = len(proxy.held[session])
        self.start(name, call)
        await proxy.wait_held(count + 1, session=session)


async def test_a_request_unanswered_at_a_drain_is_sent_again_and_answered_once(
    relay: RunningRelay, drain_proxy_factory: DrainProxyFactory
) -> None:
    proxy = await drain_proxy_factory(relay)
    async with (
        relay_client.connect(relay.url, id="bob") as bob,
        relay_client.connect(proxy.url, id="alice", **FAST) as alice,
    ):
        await alice.send("bob", "answered")
        assert (await recv(bob)).data == "answered"
        proxy.hold()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                calls = Calls(tasks)
                await calls.held(proxy, "send", lambda: alice.send("bob", "unanswered"))
                await proxy.end(1001, "draining")
        ack = calls.results["send"]
        assert isinstance(ack, Ack) and not ack.queued
        assert (await recv(bob)).data == "unanswered"
        await alice.send("bob", "marker")
        assert (await recv(bob)).data == "marker"  # the request reached bob once
        assert alice.resumed and alice.sessions == 2
        # The relay was asked once more, with a new id: the one the caller's Ack carries.
        assert asked(proxy.sessions[1]) == [("send", "unanswered"), ("send", "marker")]
        held_id = proxy.sessions[0][-1]["id"]
        assert ack.id == proxy.sessions[1][1]["id"] != held_id
        # What the relay answered before its close is not sent again.
        assert asked(proxy.sessions[0]) == [("send", "answered"), ("send", "unanswered")]


async def test_requests_are_sent_again_in_order_ahead_of_the_offline_buffer(
    relay: RunningRelay, drain_proxy_factory: DrainProxyFactory
) -> None:
    proxy = await drain_proxy_factory(relay)
    async with (
        relay_client.connect(relay.url, id="bob") as bob,
        relay_client.connect(proxy.url, id="alice", **FAST) as alice,
    ):
        await bob.join("lobby")
        states = States(alice)
        lost, back = states.expect(State.RECONNECTING), states.expect(State.CONNECTED)
        proxy.hold()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                calls = Calls(tasks)
                await calls.held(proxy, "send", lambda: alice.send("bob", 0))
                await calls.held(proxy, "pub", lambda: alice.publish("lobby", 1))
                await calls.held(proxy, "join", lambda: alice.join("news"))
                await calls.held(proxy, "ping", lambda: alice.ping())
                proxy.refusing = True
                await proxy.end(1001, "draining")
                await wait(lost)
                await alice.send("bob", 2, ack=False)
                calls.start("buffered", lambda: alice.send("bob", 3))
                while alice.buffered < 2:
                    await anyio.lowlevel.checkpoint()
                proxy.refusing = False
                await wait(back)
        assert [(await recv(bob)).data for _ in range(4)] == [0, 1, 2, 3]
        assert asked(proxy.sessions[-1]) == [
            ("send", 0), ("pub", 1), ("join", "news"), ("ping", None), ("send", 2), ("send", 3),
        ]  # fmt: skip
        results = calls.results
        assert all(isinstance(results[name], Ack) for name in ("send", "pub", "buffered"))
        assert results["join"] is None and isinstance(results["ping"], float)
        assert alice.rooms == {"news"}
        await bob.publish("news", "to the room alice joined")
        assert (await recv(alice)).data == "to the room alice joined"


@pytest.mark.parametrize("code", [None, 1011, 4008])
async def test_other_ends_fail_what_was_in_flight_with_connection_lost(
    relay: RunningRelay, drain_proxy_factory: DrainProxyFactory, code: int | None
) -> None:
    """A reset (1006) or another close may come after the relay acted: nothing is sent again."""
    proxy = await drain_proxy_factory(relay)
    async with (
        relay_client.connect(relay.url, id="bob") as bob,
        relay_client.connect(proxy.url, id="alice", **FAST) as alice,
    ):
        back = States(alice).expect(State.CONNECTED)
        proxy.hold()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                calls = Calls(tasks)
                await calls.held(proxy, "send", lambda: alice.send("bob", "in flight"))
                await proxy.end(code, "going")
        assert isinstance(calls.results["send"], relay_client.ConnectionLost)
        await wait(back)
        await alice.send("bob", "marker")
        assert (await recv(bob)).data == "marker"
        assert asked(proxy.sessions[1]) == [("send", "marker")]


async def test_a_caller_that_gave_up_is_not_sent_again(
    relay: RunningRelay, drain_proxy_factory: DrainProxyFactory
) -> None:
    proxy = await drain_proxy_factory(relay)
    async with (
        relay_client.connect(relay.url, id="bob") as bob,
        relay_client.connect(proxy.url, id="alice", **FAST) as alice,
    ):
        states = States(alice)
        lost, back = states.expect(State.RECONNECTING), states.expect(State.CONNECTED)
        proxy.hold()
        proxy.refusing = True
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                calls = Calls(tasks)
                await calls.held(proxy, "abandoned", lambda: alice.send("bob", "abandoned"))
                await proxy.end(1001, "draining")
                await wait(lost)
                tasks.cancel_scope.cancel()
        assert "abandoned" not in calls.results
        proxy.refusing = False
        await wait(back)
        await alice.send("bob", "marker")
        assert (await recv(bob)).data == "marker"
        assert asked(proxy.sessions[1]) == [("send", "marker")]


async def test_a_request_too_large_for_the_next_relay_fails_with_too_large(
    relay_factory: Callable[..., Awaitable[RunningRelay]],
    drain_proxy_factory: DrainProxyFactory,
) -> None:
    first, smaller = await relay_factory(), await relay_factory(max_frame_bytes=1024)
    proxy = await drain_proxy_factory(first)
    async with (
        relay_client.connect(smaller.url, id="bob") as bob,
        relay_client.connect(proxy.url, id="alice", **FAST) as alice,
    ):
        back = States(alice).expect(State.CONNECTED)
        proxy.hold()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                calls = Calls(tasks)
                await calls.held(proxy, "large", lambda: alice.send("bob", "x" * 2000))
                await calls.held(proxy, "small", lambda: alice.send("bob", "small"))
                proxy.relay_url = smaller.url  # the drained relay's peers move to another one
                await proxy.end(1001, "draining")
                await wait(back)
        assert isinstance(calls.results["large"], relay_client.TooLarge)
        assert isinstance(calls.results["small"], Ack)
        assert (await recv(bob)).data == "small"
        assert asked(proxy.sessions[1]) == [("send", "small")]


async def test_rooms_in_flight_at_a_drain_end_as_asked_on_a_fresh_session(
    relay_factory: Callable[..., Awaitable[RunningRelay]],
    drain_proxy_factory: DrainProxyFactory,
) -> None:
    """The remembered rooms are rejoined first, then the joins and leaves in flight
    are sent again, in order: the session ends in the rooms the caller asked for."""
    relay = await relay_factory(resume_seconds=0)  # the relay forgets alice: a fresh session
    proxy = await drain_proxy_factory(relay)
    async with (
        relay_client.connect(relay.url, id="bob") as bob,
        relay_client.connect(proxy.url, id="alice", **FAST) as alice,
    ):
        await alice.join("lobby")
        await alice.join("old")
        back = States(alice).expect(State.CONNECTED)
        proxy.hold()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                calls = Calls(tasks)
                await calls.held(proxy, "presence", lambda: alice.join("lobby", presence=True))
                await calls.held(proxy, "leave", lambda: alice.leave("old"))
                await calls.held(proxy, "join", lambda: alice.join("news"))
                await proxy.end(1001, "draining")
                await wait(back)
        assert calls.results == {"presence": None, "leave": None, "join": None}
        assert not alice.resumed
        assert asked(proxy.sessions[1]) == [
            ("join", "lobby"), ("join", "old"),  # the rejoin of the rooms the relay had confirmed
            ("join", "lobby"), ("leave", "old"), ("join", "news"),  # then what was in flight
        ]  # fmt: skip
        assert alice.rooms == {"lobby", "news"}
        for room in ("old", "lobby", "news"):
            await bob.publish(room, room)
        assert (await recv(alice)).data == "lobby"
        assert (await recv(alice)).data == "news"


async def test_a_rejoin_cut_by_a_drain_is_not_sent_twice(
    relay_factory: Callable[..., Awaitable[RunningRelay]],
    drain_proxy_factory: DrainProxyFactory,
) -> None:
    """A drain during the rejoin of a fresh session: the next fresh session rejoins
    the room anyway, so the unanswered rejoin is dropped; a request that was
    waiting for the rejoin to finish still goes, once."""
    relay = await relay_factory(resume_seconds=0)
    proxy = await drain_proxy_factory(relay)
    async with (
        relay_client.connect(relay.url, id="bob") as bob,
        relay_client.connect(proxy.url, id="alice", **FAST) as alice,
    ):
        await alice.join("lobby")
        back = States(alice).expect(State.CONNECTED)
        proxy.hold()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                calls = Calls(tasks)
                await calls.held(proxy, "join", lambda: alice.join("news"))
                proxy.hold_after_hello = True  # the next socket's rejoin stays in the proxy
                await proxy.end(1001, "draining")
                await proxy.wait_held(1, session=1)
                assert asked(proxy.held[1]) == [("join", "lobby")]
                proxy.hold_after_hello = False
                await proxy.end(1001, "draining again")
                await wait(back)
        assert calls.results == {"join": None}
        await alice.ping()  # a round trip: what the socket carried before it is recorded
        assert asked(proxy.sessions[2]) == [("join", "lobby"), ("join", "news"), ("ping", None)]
        assert alice.rooms == {"lobby", "news"}
        await bob.publish("lobby", "still in the room")
        assert (await recv(alice)).data == "still in the room"
