"""The peer's inner modules on their own, without a socket: what is in flight,
where an envelope goes, the inbox and the pacing bucket."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import msgpack
import pytest
import relay_client
from relay_client._dispatch import Dispatcher
from relay_client._handlers import Handlers, Inbox
from relay_client._inflight import InFlight, Pending, new_future
from relay_client._pacing import TokenBucket
from relay_client._rooms import Rooms

pytestmark = pytest.mark.anyio


def frame(**envelope: Any) -> bytes:
    data: bytes = msgpack.packb(envelope, use_bin_type=True)
    return data


def sent(inflight: InFlight, envelope: dict[str, Any]) -> Pending:
    envelope["id"] = inflight.next_id()
    pending = Pending(new_future(), envelope["type"], envelope)
    inflight.expect(pending)
    return pending


class Replies:
    """Stands in for the peer that answers requests on a handler's behalf."""

    def __init__(self, expected: int = 0) -> None:
        self.expected = expected
        self.sent: list[tuple[str, Any, Any]] = []
        self.all_sent = anyio.Event()

    async def reply(self, request: relay_client.Message, data: Any = None) -> None:
        self._record(("reply", request.rid, data))

    async def reply_error(self, request: relay_client.Message, message: str) -> None:
        self._record(("error", request.rid, message))

    def _record(self, item: tuple[str, Any, Any]) -> None:
        self.sent.append(item)
        if len(self.sent) >= self.expected:
            self.all_sent.set()


@dataclass
class Routing:
    """A dispatcher and everything it routes to."""

    inflight: InFlight = field(default_factory=InFlight)
    handlers: Handlers = field(default_factory=Handlers)
    inbox: Inbox = field(default_factory=lambda: Inbox(10))
    rooms: Rooms = field(default_factory=Rooms)
    replies: Replies = field(default_factory=Replies)

    def receive(self, data: bytes) -> None:
        Dispatcher(self.inflight, self.handlers, self.inbox, self.rooms, self.replies).receive(data)


async def test_a_queued_send_that_is_never_delivered_is_reported_with_its_data() -> None:
    inflight = InFlight()
    rid, reply = inflight.open_request("bob")
    pending = sent(inflight, {"type": "send", "to": "bob", "d": "hi", "ev": "chat", "rid": rid})
    inflight.settle_ok({"type": "ok", "id": pending.envelope["id"], "queued": True})
    assert pending.future.result() == relay_client.Ack(pending.envelope["id"], queued=True)

    err = {"type": "err", "id": pending.envelope["id"], "code": "peer-offline", "msg": "gone"}
    report = inflight.settle_err(err)
    assert report == relay_client.Undelivered(
        id=pending.envelope["id"], to="bob", code="peer-offline", message="gone",
        data="hi", ev="chat",
    )  # fmt: skip
    with pytest.raises(relay_client.PeerOffline):
        reply.result()  # the request it carried cannot be answered any more


async def test_an_err_nobody_waits_for_is_handed_back() -> None:
    inflight = InFlight()
    exc = inflight.settle_err({"type": "err", "code": "rate-limited", "msg": "slow down"})
    assert isinstance(exc, relay_client.RateLimited)


async def test_a_reply_counts_only_from_the_target() -> None:
    inflight = InFlight()
    rid, reply = inflight.open_request("bob")
    assert not inflight.settle_reply(relay_client.Message("mallory", "forged", re=rid))
    assert not inflight.settle_reply(relay_client.Message("bob", "x", re=[rid]))  # unhashable
    assert inflight.settle_reply(relay_client.Message("bob", "real", re=rid))
    assert reply.result() == "real"


async def test_a_lost_socket_fails_what_it_carried_and_closing_fails_the_rest() -> None:
    inflight = InFlight()
    written = sent(inflight, {"type": "join", "room": "lobby"})
    inflight.lose()
    with pytest.raises(relay_client.ConnectionLost):
        written.future.result()
    _, reply = inflight.open_request("bob")
    inflight.fail(relay_client.ConnectionClosed(1000))
    with pytest.raises(relay_client.ConnectionClosed):
        reply.result()


async def test_what_a_drain_left_unanswered_waits_in_the_order_it_was_written() -> None:
    inflight = InFlight()
    first = sent(inflight, {"type": "send", "to": "bob", "d": 1})
    answered = sent(inflight, {"type": "send", "to": "bob", "d": 2})
    inflight.settle_ok({"type": "ok", "id": answered.envelope["id"]})
    abandoned = sent(inflight, {"type": "send", "to": "bob", "d": 3})
    abandoned.future.cancel()
    second = sent(inflight, {"type": "pub", "room": "lobby", "d": 4})
    inflight.keep_for_resend()
    assert list(inflight.resend) == [first, second]
    # The first goes out again on the next socket, which a drain ends before the second went.
    inflight.expect(inflight.resend.popleft())
    inflight.keep_for_resend()
    assert list(inflight.resend) == [first, second]
    inflight.lose()  # a dropped socket: nothing waiting here was on it
    assert list(inflight.resend) == [first, second] and not first.future.done()
    inflight.fail(relay_client.ConnectionClosed(1000))
    for pending in (first, second):
        with pytest.raises(relay_client.ConnectionClosed):
            pending.future.result()


async def test_dispatch_order_reply_then_request_handler_then_ev_handlers_then_inbox() -> None:
    route = Routing(replies=Replies(expected=2))
    rid, reply = route.inflight.open_request("bob")
    handled: list[Any] = []
    route.handlers.add_message("chat", lambda msg: handled.append(msg.data))
    route.handlers.set_request("add", lambda msg: sum(msg.data))

    def fail(msg: relay_client.Message) -> None:
        raise ValueError("no such thing")

    route.handlers.set_request("fail", fail)
    route.receive(frame(type="msg", **{"from": "bob"}, d="the reply", re=rid))
    route.receive(frame(type="msg", **{"from": "bob"}, d=[1, 2], ev="add", rid=7))
    route.receive(frame(type="msg", **{"from": "bob"}, d="hello", ev="chat"))
    route.receive(frame(type="msg", **{"from": "bob"}, d="other", ev="news", room="lobby"))
    route.receive(frame(type="msg", **{"from": "bob"}, d=None, ev="fail", rid=8))
    route.receive(b"\xc1")  # not msgpack: ignored
    route.receive(frame(type="msg", d="no sender"))  # ignored

    assert reply.result() == "the reply"
    assert handled == ["hello"]
    with anyio.fail_after(5):
        inboxed = await route.inbox.get()
        await route.replies.all_sent.wait()  # request handlers run as tasks
    assert inboxed == relay_client.Message("bob", "other", ev="news", room="lobby")
    assert sorted(route.replies.sent) == [("error", 8, "no such thing"), ("reply", 7, 3)]


async def test_presence_updates_members_before_the_handlers_see_it() -> None:
    route = Routing()
    seen: list[frozenset[str]] = []
    route.handlers.add(route.handlers.presence, lambda p: seen.append(route.rooms.members(p.room)))
    route.receive(frame(type="presence", room="r", peer="a", event="join", members=["a", "b"]))
    route.receive(frame(type="presence", room="r", peer="b", event="leave"))
    route.receive(frame(type="presence", room="r", peer=3, event="join"))  # malformed: ignored
    assert seen == [frozenset({"a", "b"}), frozenset({"a"})]


async def test_inbox_drops_the_oldest_and_ends_with_the_closing_error() -> None:
    inbox = Inbox(2)
    for n in range(3):
        inbox.put(relay_client.Message("a", n))
    inbox.close(relay_client.ConnectionClosed(4500))
    assert inbox.dropped == 1
    assert [(await inbox.get()).data for _ in range(2)] == [1, 2]
    with pytest.raises(relay_client.ConnectionClosed):
        await inbox.get()


async def test_pacing_waits_only_past_the_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr("relay_client._pacing.asyncio.sleep", sleep)
    bucket = TokenBucket(enabled=True)
    bucket.reset({"rate_per_second": 10, "rate_burst": 4})  # 9 per second, starts with 2
    for _ in range(3):
        await bucket.take()
    assert len(waits) == 1 and 0.05 < waits[0] <= 1 / 9
    off = TokenBucket(enabled=False)
    off.reset({"rate_per_second": 1, "rate_burst": 1})
    for _ in range(100):
        await off.take()
    assert len(waits) == 1
