"""Staying connected: reconnect, resume, rejoin, offline buffer, terminal closes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
import relay_client
from relay_client import State, Undelivered

from tests.clients.python.reconnecting import FAST, States, recv, wait

if TYPE_CHECKING:
    from tests.conftest import RunningRelay

    from .conftest import Proxy, ProxyFactory, RelayProcess

pytestmark = pytest.mark.anyio


async def drop_and_hold(relay: RunningRelay, proxy: Proxy, peer: relay_client.Peer) -> None:
    """Close ``peer``'s socket from the relay (1001) while the proxy refuses reconnects."""
    states = States(peer)
    reconnecting = states.expect(State.RECONNECTING)
    proxy.refusing = True
    assert peer.id is not None
    await relay.hub.disconnect(peer.id, code=1001, reason="test")
    await wait(reconnecting)


@pytest.mark.parametrize("code", [1001, 4008, 4029])
async def test_reconnects_and_resumes_after_a_server_close(relay: RunningRelay, code: int) -> None:
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob", **FAST) as bob,
    ):
        await bob.join("lobby")
        first_secret = bob.resume_secret
        states = States(bob)
        back = states.expect(State.CONNECTED)
        await relay.hub.disconnect("bob", code=code, reason="test")
        await wait(back)
        assert states.seen == [State.RECONNECTING, State.CONNECTED]
        assert bob.resumed and bob.sessions == 2
        assert bob.resume_secret != first_secret  # rotated
        await alice.publish("lobby", "after")  # the relay kept bob's room
        assert (await recv(bob)).data == "after"
        await bob.send("alice", "bob is back")
        assert (await recv(alice)).data == "bob is back"


async def test_reconnects_after_the_socket_drops(
    relay: RunningRelay, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(relay)
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(proxy.url, id="bob", **FAST) as bob,
    ):
        states = States(bob)
        back = states.expect(State.CONNECTED)
        proxy.sever()
        await wait(back)
        assert bob.resumed
        await alice.send("bob", "hi again")
        assert (await recv(bob)).data == "hi again"


async def test_resume_delivers_queued_messages_exactly_once_in_order(
    relay: RunningRelay, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(relay)
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(proxy.url, id="bob", **FAST) as bob,
    ):
        await drop_and_hold(relay, proxy, bob)
        for i in range(5):
            ack = await alice.send("bob", i, ev="n")
            assert ack.queued  # bob is resuming: the relay keeps it for him
        back = States(bob).expect(State.CONNECTED)
        proxy.refusing = False
        await wait(back)
        assert bob.resumed
        assert [(await recv(bob)).data for _ in range(5)] == [0, 1, 2, 3, 4]
        await alice.send("bob", "marker")
        assert (await recv(bob)).data == "marker"  # nothing was delivered twice


async def test_rooms_are_rejoined_when_the_session_was_not_resumed(
    relay_factory: Callable[..., Awaitable[RunningRelay]],
) -> None:
    relay = await relay_factory(resume_seconds=0)
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob", **FAST) as bob,
    ):
        await bob.join("lobby")
        await bob.join("news", presence=True)
        back = States(bob).expect(State.CONNECTED)
        await relay.hub.disconnect("bob", code=1001)
        await wait(back)
        assert not bob.resumed  # the relay forgot bob: the client rejoined
        assert bob.rooms == {"lobby", "news"}
        await alice.publish("lobby", "l")
        await alice.publish("news", "n")
        assert [(await recv(bob)).data for _ in range(2)] == ["l", "n"]


async def test_survives_a_relay_restart_and_rejoins(
    relay_process: Callable[..., Awaitable[RelayProcess]],
) -> None:
    server = await relay_process()
    async with (
        relay_client.connect(server.url, id="alice", **FAST) as alice,
        relay_client.connect(server.url, id="bob", **FAST) as bob,
    ):
        await bob.join("lobby")
        bob_back = States(bob).expect(State.CONNECTED)
        alice_back = States(alice).expect(State.CONNECTED)
        await server.kill()
        await server.start()
        await wait(bob_back, 20)
        await wait(alice_back, 20)
        assert not bob.resumed and bob.rooms == {"lobby"}
        await alice.publish("lobby", "hello again")
        assert (await recv(bob)).data == "hello again"


async def test_drain_moves_peers_to_the_next_relay(
    relay_process: Callable[..., Awaitable[RelayProcess]],
) -> None:
    """SIGTERM drains with 1001; sends made meanwhile reach the relay that takes over."""
    server = await relay_process("--drain-seconds", "1")
    async with (
        relay_client.connect(server.url, id="alice", **FAST) as alice,
        relay_client.connect(server.url, id="bob", **FAST) as bob,
    ):
        await bob.join("lobby")
        alice_states, bob_states = States(alice), States(bob)
        alice_lost = alice_states.expect(State.RECONNECTING)
        alice_back = alice_states.expect(State.CONNECTED)
        bob_back = bob_states.expect(State.CONNECTED)
        assert await server.drain() == 0
        await wait(alice_lost)
        assert alice.close_error is None  # 1001 is not terminal
        await alice.publish("lobby", "sent while draining", ack=False)
        await server.start()
        await wait(bob_back, 20)
        await wait(alice_back, 20)
        assert not bob.resumed and bob.rooms == {"lobby"}
        await alice.publish("lobby", "after")
        got = [(await recv(bob)).data]
        if got[0] != "after":
            got.append((await recv(bob)).data)
        # the buffered publish went out first; bob gets it if he had rejoined by then
        assert got in (["after"], ["sent while draining", "after"])


async def test_offline_buffer_is_bounded_and_flushed_in_order(
    relay: RunningRelay, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(relay)
    async with (
        relay_client.connect(proxy.url, id="alice", buffer_size=4, **FAST) as alice,
        relay_client.connect(relay.url, id="bob") as bob,
    ):
        await drop_and_hold(relay, proxy, alice)
        for i in range(3):
            assert await alice.send("bob", i, ack=False) is None
        acked: list[Any] = []

        async def awaited_send() -> None:
            acked.append(await alice.send("bob", 3))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(awaited_send)
            with anyio.fail_after(5):
                while alice.buffered < 4:
                    await anyio.lowlevel.checkpoint()
            with pytest.raises(relay_client.OfflineBufferFull):
                await alice.send("bob", 4, ack=False)
            with pytest.raises(relay_client.OfflineBufferFull):
                await alice.publish("room", 4)
            with pytest.raises(relay_client.NotConnected):
                await alice.ping()
            assert alice.buffered == 4
            proxy.refusing = False
        assert acked and acked[0].queued is False
        assert [(await recv(bob)).data for _ in range(4)] == [0, 1, 2, 3]
        assert alice.buffered == 0


async def test_flushing_a_full_buffer_is_paced_under_the_rate_limit(
    relay_factory: Callable[..., Awaitable[RunningRelay]], proxy_factory: ProxyFactory
) -> None:
    relay = await relay_factory(rate_per_second=50, rate_burst=5, rate_strikes=3)
    proxy = await proxy_factory(relay)
    async with (
        relay_client.connect(proxy.url, id="alice", **FAST) as alice,
        relay_client.connect(relay.url, id="bob") as bob,
    ):
        errors: list[relay_client.RelayError] = []
        alice.on_error(errors.append)
        await drop_and_hold(relay, proxy, alice)
        for i in range(40):
            await alice.send("bob", i, ack=False)
        back = States(alice).expect(State.CONNECTED)
        proxy.refusing = False
        await wait(back)
        assert [(await recv(bob)).data for _ in range(40)] == list(range(40))
        assert errors == [] and alice.sessions == 2


async def test_unacknowledged_send_fails_with_connection_lost(
    relay: RunningRelay, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(relay)
    async with (
        relay_client.connect(proxy.url, id="alice", **FAST) as alice,
        relay_client.connect(relay.url, id="bob"),
    ):
        failures: list[BaseException] = []

        async def send() -> None:
            try:
                await alice.send("bob", "in flight")
            except relay_client.RelayError as exc:
                failures.append(exc)

        back = States(alice).expect(State.CONNECTED)
        proxy.freeze()  # the frame never reaches the relay
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(send)
            await anyio.lowlevel.checkpoint()
            proxy.sever()
            proxy.thaw()
        assert len(failures) == 1 and isinstance(failures[0], relay_client.ConnectionLost)
        await wait(back)
        await alice.send("bob", "after")


async def test_keepalive_notices_a_dead_link(
    relay: RunningRelay, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(relay)
    async with relay_client.connect(
        proxy.url, id="alice", ping_interval=0.1, ping_timeout=0.2, close_timeout=0.2, **FAST
    ) as alice:
        states = States(alice)
        lost, back = states.expect(State.RECONNECTING), states.expect(State.CONNECTED)
        proxy.freeze()
        await wait(lost)
        proxy.sever()
        proxy.thaw()
        await wait(back)
        assert await alice.ping() > 0


async def test_undelivered_is_reported_when_the_resume_window_expires(
    relay_factory: Callable[..., Awaitable[RunningRelay]], proxy_factory: ProxyFactory
) -> None:
    relay = await relay_factory(resume_seconds=0.3)
    proxy = await proxy_factory(relay)
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(proxy.url, id="bob", **FAST) as bob,
    ):
        reported: list[Undelivered] = []
        got = anyio.Event()

        def undelivered(item: Undelivered) -> None:
            reported.append(item)
            got.set()

        alice.on_undelivered(undelivered)
        await drop_and_hold(relay, proxy, bob)
        ack = await alice.send("bob", "never", ev="x")
        assert ack.queued
        await wait(got)
        assert reported == [
            Undelivered(id=ack.id, to="bob", code="peer-offline", message=reported[0].message,
                        data="never", ev="x")
        ]  # fmt: skip
        back = States(bob).expect(State.CONNECTED)
        proxy.refusing = False
        await wait(back)
        assert not bob.resumed


async def test_queued_request_fails_when_its_target_never_resumes(
    relay_factory: Callable[..., Awaitable[RunningRelay]], proxy_factory: ProxyFactory
) -> None:
    relay = await relay_factory(resume_seconds=0.3)
    proxy = await proxy_factory(relay)
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(proxy.url, id="bob", **FAST) as bob,
    ):
        await drop_and_hold(relay, proxy, bob)
        with anyio.fail_after(5), pytest.raises(relay_client.PeerOffline):
            await alice.request("bob", "q", timeout=5)


async def test_takeover_with_the_resume_secret_closes_the_old_session_with_4503(
    relay: RunningRelay,
) -> None:
    first = await relay_client.connect(relay.url, id="bob", **FAST)
    try:
        async with relay_client.connect(relay.url, id="bob", resume=first.resume_secret) as second:
            assert second.resumed
            with anyio.fail_after(5):
                error = await first.wait_closed()
            assert isinstance(error, relay_client.SessionReplaced)
            assert error.code == 4503
            assert first.sessions == 1  # never tried to reconnect
            with pytest.raises(relay_client.SessionReplaced):
                async for _ in first:
                    pass
            with pytest.raises(relay_client.SessionReplaced):
                await first.send("x", "y")
            assert await second.ping() > 0
    finally:
        await first.close()


@pytest.mark.parametrize("code", [4500, 4501, 4502, 4504, 1008, 1003, 1009])
async def test_terminal_close_codes_are_not_retried(relay: RunningRelay, code: int) -> None:
    async with relay_client.connect(relay.url, id="bob", **FAST) as bob:
        await relay.hub.disconnect("bob", code=code, reason="go away")
        with anyio.fail_after(5):
            error = await bob.wait_closed()
        assert isinstance(error, relay_client.ConnectionClosed)
        assert (error.code, error.reason) == (code, "go away")
        assert str(code) in str(error)
        assert bob.state is State.CLOSED and bob.sessions == 1


async def test_no_reconnect_when_disabled(relay: RunningRelay) -> None:
    async with relay_client.connect(relay.url, id="bob", reconnect=False) as bob:
        await relay.hub.disconnect("bob", code=1001)
        with anyio.fail_after(5):
            error = await bob.wait_closed()
        assert isinstance(error, relay_client.ConnectionClosed) and error.code == 1001


async def test_gives_up_after_max_retries(relay: RunningRelay, proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(relay)
    async with relay_client.connect(proxy.url, id="bob", max_retries=3, **FAST) as bob:
        proxy.refusing = True
        await relay.hub.disconnect("bob", code=1001)
        with anyio.fail_after(5):
            error = await bob.wait_closed()
        assert isinstance(error, relay_client.RelayUnavailable)
        assert "3 attempts" in str(error)


async def test_cancelled_send_leaves_the_offline_buffer(
    relay: RunningRelay, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(relay)
    async with (
        relay_client.connect(proxy.url, id="alice", **FAST) as alice,
        relay_client.connect(relay.url, id="bob") as bob,
    ):
        await drop_and_hold(relay, proxy, alice)
        with anyio.move_on_after(0.05):
            await alice.send("bob", "abandoned")
        assert alice.buffered == 0
        await alice.send("bob", "kept", ack=False)
        back = States(alice).expect(State.CONNECTED)
        proxy.refusing = False
        await wait(back)
        assert (await recv(bob)).data == "kept"


async def test_token_function_is_called_for_every_connect(
    relay: RunningRelay, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(relay)
    calls: list[int] = []

    async def token() -> str:
        calls.append(len(calls))
        return f"token-{len(calls)}"

    async with relay_client.connect(proxy.url, id="alice", token=token, **FAST) as alice:
        back = States(alice).expect(State.CONNECTED)
        proxy.sever()
        await wait(back)
    assert calls == [0, 1]


async def test_closed_state_is_reported(relay: RunningRelay) -> None:
    async with relay_client.connect(relay.url, id="alice") as alice:
        states = States(alice)
        closed = states.expect(State.CLOSED)
    await wait(closed)
    assert states.seen == [State.CLOSED]


async def test_frames_lost_in_a_dying_socket_are_replayed_on_resume(
    relay: RunningRelay, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(relay)
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(proxy.url, id="bob", **FAST) as bob,
    ):
        await alice.send("bob", "before")
        assert (await recv(bob)).data == "before"
        back = States(bob).expect(State.CONNECTED)
        proxy.freeze()  # the relay writes into a link that delivers nothing
        for n in range(5):
            ack = await alice.send("bob", n)
            assert ack is not None and not ack.queued  # the relay believes bob got it
        proxy.sever()
        proxy.thaw()
        await wait(back)
        assert bob.resumed
        assert [(await recv(bob)).data for _ in range(5)] == [0, 1, 2, 3, 4]
