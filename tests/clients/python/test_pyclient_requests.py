"""Request/reply between peers, built from send with rid/re."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
import relay_client
from relay_client import Message

if TYPE_CHECKING:
    from tests.conftest import RunningRelay

pytestmark = pytest.mark.anyio


async def test_request_both_ways_with_sync_and_async_handlers(relay: RunningRelay) -> None:
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob") as bob,
    ):

        async def double(msg: Message) -> Any:
            await anyio.lowlevel.checkpoint()
            return {"from": msg.sender, "double": msg.data * 2}

        bob.on_request("double", double)
        alice.on_request("upper", lambda msg: msg.data.upper())
        with anyio.fail_after(5):
            assert await alice.request("bob", 21, ev="double") == {"from": "alice", "double": 42}
            assert await bob.request("alice", "shout", ev="upper") == "SHOUT"
            # several in flight at once, each matched by its rid
            results = [None] * 5

            async def one(i: int) -> None:
                results[i] = await alice.request("bob", i, ev="double")

            async with anyio.create_task_group() as tasks:
                for i in range(5):
                    tasks.start_soon(one, i)
        assert [r["double"] for r in results] == [0, 2, 4, 6, 8]  # type: ignore[index]


async def test_handler_error_raises_remote_error(relay: RunningRelay) -> None:
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob") as bob,
    ):

        def broken(msg: Message) -> Any:
            raise ValueError("no such account")

        bob.on_request("lookup", broken)
        with anyio.fail_after(5), pytest.raises(relay_client.RemoteError) as caught:
            await alice.request("bob", "x", ev="lookup")
        assert caught.value.message == "no such account"
        assert caught.value.peer == "bob"


async def test_error_reply_uses_the_cross_client_wire_convention(relay: RunningRelay) -> None:
    """A failed handler answers with ev "relay.error" and d the message; a success has no ev."""
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob") as bob,
    ):
        bob.on_request("ok", lambda msg: "fine")

        def fail(msg: Message) -> Any:
            raise RuntimeError("boom")

        bob.on_request("fail", fail)
        # alice sends raw requests (rid set by hand) and reads the replies from her inbox
        await alice.send("bob", None, ev="ok")  # not a request: goes to bob's inbox
        assert (await bob.recv()).ev == "ok"
        await alice._submit(
            {"type": "send", "to": "bob", "d": 1, "ev": "ok", "rid": "r1"}, "send", wait=True
        )
        await alice._submit(
            {"type": "send", "to": "bob", "d": 1, "ev": "fail", "rid": "r2"}, "send", wait=True
        )
        with anyio.fail_after(5):
            first, second = await alice.recv(), await alice.recv()
        replies = {m.re: m for m in (first, second)}
        assert (replies["r1"].ev, replies["r1"].data) == (None, "fine")
        assert (replies["r2"].ev, replies["r2"].data) == ("relay.error", "boom")


async def test_manual_reply_from_the_inbox(relay: RunningRelay) -> None:
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob") as bob,
    ):

        async def serve() -> None:
            msg = await bob.recv()
            assert msg.is_request
            if msg.data == "bad":
                await bob.reply_error(msg, "refused")
            else:
                await bob.reply(msg, ["echo", msg.data])

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(serve)
            with anyio.fail_after(5):
                assert await alice.request("bob", "hi") == ["echo", "hi"]
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(serve)
            with anyio.fail_after(5), pytest.raises(relay_client.RemoteError, match="refused"):
                await alice.request("bob", "bad")


async def test_request_to_offline_peer_raises_peer_offline(relay: RunningRelay) -> None:
    async with relay_client.connect(relay.url, id="alice") as alice:
        with anyio.fail_after(5), pytest.raises(relay_client.PeerOffline):
            await alice.request("nobody", "x", ev="q")


async def test_request_timeout_is_a_timeout_error(relay: RunningRelay) -> None:
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob") as bob,
    ):

        async def slow(msg: Message) -> Any:
            await anyio.sleep(10)
            return "late"

        bob.on_request("slow", slow)
        with anyio.fail_after(5), pytest.raises(relay_client.RequestTimeout) as caught:
            await alice.request("bob", None, ev="slow", timeout=0.2)
        assert isinstance(caught.value, TimeoutError)
        assert isinstance(caught.value, relay_client.RelayError)
        # a request nobody answers (no handler, bob does not read) times out too
        with anyio.fail_after(5), pytest.raises(relay_client.RequestTimeout):
            await alice.request("bob", None, ev="unhandled", timeout=0.2)


async def test_late_reply_after_timeout_is_ignored(relay: RunningRelay) -> None:
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob") as bob,
    ):
        replied = anyio.Event()

        async def slow(msg: Message) -> Any:
            await anyio.sleep(0.3)
            replied.set()
            return "late"

        bob.on_request("slow", slow)
        with pytest.raises(relay_client.RequestTimeout):
            await alice.request("bob", None, ev="slow", timeout=0.1)
        with anyio.fail_after(5):
            await replied.wait()
        bob.on_request("fast", lambda m: "now")
        with anyio.fail_after(5):
            assert await alice.request("bob", None, ev="fast") == "now"
        # the stale reply landed in the inbox as a plain message, not as an answer
        with anyio.fail_after(5):
            stale = await alice.recv()
        assert stale.data == "late" and stale.re is not None
