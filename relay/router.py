"""Routing: how frames move between this node's peers and to the rest of the cluster.

``Router`` delivers to the peers of its own node directly and hands
everything else to its ``Broker``; it never asks which broker it has. Frames
are encoded once per request (``msg`` around the sender's raw payload) and
the same bytes go to every target. Routing is synchronous: a frame is written
to each local target's socket before the sender's next frame is read. A
target whose socket is full makes its senders wait (they are not read until
it drains), and a target that stops reading for ``slow_consumer_seconds`` is
closed 4008 by the hub's sweep, so one stalled reader holds nobody up for long.

``Routed`` collects what became of each target of one message and answers
its sender once, when all are known. ``relay.hub.Hub`` is a ``Router`` that
also registers peers and keeps them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Protocol

import anyio

from relay.auth import TokenVerifier
from relay.broker.base import Broker
from relay.decisions import Decider
from relay.exceptions import BadEnvelope, Forbidden
from relay.metrics import Metrics
from relay.peer import Peer
from relay.protocol import codec
from relay.protocol.codes import ErrorCode
from relay.protocol.envelopes import BACKEND_ID, SERVER_ID, Publish, Send
from relay.rooms import Rooms
from relay.session import Session
from relay.settings import Settings
from relay.values import (
    DELIVERED,
    OFFLINE,
    OVERLOADED,
    PENDING,
    QUEUED,
    Answer,
    Delivery,
    RequestId,
    Undelivered,
)


class Backend(Protocol):
    """Answers the ``send``s addressed to ``@backend`` (``relay.proxy``: RPC over HTTP)."""

    def call(self, session: Session, request: Send) -> None:
        """Start the call (a ``msg`` and the ``ok``, or an ``err``, follow); refuse by raising."""
        ...


def rooms_listed(session: Session) -> bool:
    """The session's token or admission lists its rooms: what ``_check_room`` let through."""
    claims = session.claims
    peer = session.peer
    return (claims is not None and claims.rooms is not None) or (
        peer is not None and peer.granted is not None
    )


class Router:
    """Moves frames between peers: ``send``, ``pub``, the broker's deliveries, the answers."""

    def __init__(
        self, settings: Settings, broker: Broker, metrics: Metrics, auth: TokenVerifier | None
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.metrics = metrics
        self.auth = auth  # None: open mode
        self.peers: dict[str, Peer] = {}
        self.rooms = Rooms()
        self.decider: Decider | None = None  # asked before each fresh hello, join and new pub room
        self.backend: Backend | None = None  # answers sends to @backend; None: they are refused

    def _check_room(self, peer: Peer, room: str) -> None:
        """Refuse a room the peer's token, or its admission, does not list (``Forbidden``)."""
        session = peer.session
        claims = session.claims if session is not None else None
        if self.auth is not None and (claims is None or not claims.allows_room(room)):
            raise Forbidden(f"the token does not allow room {room}")
        granted = peer.granted
        if granted is not None and not any(fnmatchcase(room, pattern) for pattern in granted):
            raise Forbidden(f"room {room} was not granted to this session")

    def send(self, session: Session, request: Send) -> None:
        """Deliver a ``send`` to each target; one ``ok`` or ``err`` answers it.

        Local targets get the frame at once, and the ``ok`` follows when
        their hosts have acknowledged it (``relay.delivery``); targets on
        other nodes are answered by their node later. The sender's next
        frames are read meanwhile (up to ``inflight_per_session`` sends to
        other nodes at a time).
        """
        sender = session.peer
        assert sender is not None
        frame = codec.encode_msg(
            sender.id, request.d_raw, ev=request.ev, rid=request.rid, re=request.re
        )
        to = request.to
        if isinstance(to, str):
            undelivered: Undelivered = (sender.id, request.id, False)
            target = self.peers.get(to)
            if target is not None:  # the common case: one local target
                if request.id is None:
                    delivery = target.enqueue(frame, "msg", undelivered)
                    if delivery is DELIVERED:
                        if target.queue:
                            session.wait_for(target)
                        return
                else:
                    answer = functools.partial(self._answer_one, undelivered, to)
                    delivery = target.enqueue(frame, "msg", undelivered, answer)
                    if delivery is PENDING:
                        sender.owed += 1
                        if target.queue:
                            session.wait_for(target)
                        return
                routed = Routed(self, sender, request.id, False, session)
                routed.add(to, delivery)
                routed.close()
                return
            if to == BACKEND_ID:
                self._call_backend(session, request)
                return
            if request.id is None:  # the common case on a cluster: one peer elsewhere
                RemoteSend(self, session, sender, to).send(frame, undelivered)
                return
            targets: tuple[str, ...] = (to,)
        else:
            undelivered = (sender.id, request.id, True)
            targets = to
        routed = Routed(self, sender, request.id, undelivered[2], session)
        self._route(targets, frame, undelivered, routed, session)
        routed.close()

    def _call_backend(self, session: Session, request: Send) -> None:
        """Hand a ``send`` to ``@backend`` to the backend, or say why it cannot go."""
        if self.backend is None:
            raise BadEnvelope(f"{BACKEND_ID} is not served here: the relay has no rpc_proxy_url")
        if request.rid is None:
            raise BadEnvelope(
                f"a send to {BACKEND_ID} needs a rid: its answer is a msg with that re"
            )
        self.backend.call(session, request)

    def _answer_one(self, undelivered: Undelivered, target: str, delivery: Delivery) -> None:
        """Answer a ``send`` to one local target (with an id), once its fate is known."""
        sender_id, request_id, _listed = undelivered
        assert request_id is not None
        sender = self.peers.get(sender_id)
        if sender is not None and sender.owed:
            sender.owed -= 1
        if delivery is DELIVERED:
            self.tell(sender_id, codec.encode_ok(request_id), "ok")
        else:
            self.tell_failure(sender_id, request_id, target, delivery)

    def tell_failure(
        self, sender_id: str, request_id: RequestId | None, target: str, delivery: Delivery
    ) -> None:
        """Tell the sender of a ``send`` to one target that it did not reach it."""
        routed = Routed(self, None, request_id, False, None)
        routed.add(target, delivery)
        frame, kind = routed.answer_frame()
        self.tell(sender_id, frame, kind)

    def tell(self, peer_id: str, frame: bytes, kind: str) -> None:
        """Send a frame of the relay's own (an answer, a report) to a peer wherever it is."""
        peer = self.peers.get(peer_id)
        if peer is not None:
            peer.enqueue(frame, kind, None)
        else:
            self.broker.send(peer_id, frame, None, _ignore)

    def _route(
        self,
        targets: tuple[str, ...],
        frame: bytes,
        undelivered: Undelivered,
        routed: Routed,
        waiter: Session | None,
    ) -> None:
        """Hand ``frame`` to each target, locally or through the broker.

        Local targets are answered when their hosts acknowledge the frame
        if ``routed`` waits for that (a request with an id, an API send).
        """
        acked = routed.waits_for_acks
        for target_id in targets:
            target = self.peers.get(target_id)
            if target is not None:
                answer = routed.answerer(target_id) if acked else None
                delivery = target.enqueue(frame, "msg", undelivered, answer)
                if delivery is PENDING:
                    routed.expect(remote=False)
                else:
                    routed.add(target_id, delivery)
                if waiter is not None and target.queue and delivery in _ON_ITS_WAY:
                    waiter.wait_for(target)
            else:
                routed.expect(remote=True)
                self.broker.send(target_id, frame, undelivered, routed.answerer(target_id))

    async def server_send(
        self, to: str | tuple[str, ...], d_raw: bytes, ev: str | None = None
    ) -> Routed:
        """Deliver a message from the server itself (``from`` is ``@server``)."""
        frame = codec.encode_msg(SERVER_ID, d_raw, ev=ev)
        targets = (to,) if isinstance(to, str) else to
        routed = Routed(self, None, None, False, None, waits_for_acks=True)
        done = anyio.Event()
        routed.on_done = done.set
        # A request id, so that other nodes too answer once acknowledged;
        # nothing is ever sent to @server with it.
        self._route(targets, frame, (SERVER_ID, 0, False), routed, None)
        routed.close()
        await done.wait()
        return routed

    async def server_publish(self, room: str, d_raw: bytes, ev: str | None = None) -> None:
        """Publish to ``room`` on every node from the server itself."""
        frame = codec.encode_msg(SERVER_ID, d_raw, ev=ev, room=room)
        self._publish_frame(room, frame, None, (SERVER_ID, None, False), None)

    def _publish_frame(
        self,
        room: str,
        frame: bytes,
        exclude: str | None,
        undelivered: Undelivered | None,
        waiter: Session | None,
        presence_only: bool = False,
    ) -> None:
        self._deliver_room(room, frame, exclude, presence_only, undelivered, waiter)
        self.broker.publish(room, frame, exclude, presence_only)

    def publish(self, session: Session, request: Publish) -> None:
        """Deliver a ``pub`` to the room's members on every node.

        With a decider, a room it has not decided for the sender yet is
        decided first, the session unread meanwhile (``decide_join``).
        """
        sender = session.peer
        assert sender is not None
        self._check_room(sender, request.room)
        decider = self.decider
        if (
            decider is not None
            and not rooms_listed(session)
            and not decider.room_decided(sender.id, request.room)
        ):
            session.run(self._decide_publish(session, request), request)
            return
        self._publish(session, request)

    async def _decide_publish(self, session: Session, request: Publish) -> None:
        sender = session.peer
        assert sender is not None and self.decider is not None
        await self.decider.decide_join(sender.id, request.room, session.meta)
        self._publish(session, request)

    def _publish(self, session: Session, request: Publish) -> None:
        sender = session.peer
        assert sender is not None
        frame = codec.encode_msg(sender.id, request.d_raw, ev=request.ev, room=request.room)
        exclude = None if request.echo else sender.id
        undelivered: Undelivered = (sender.id, request.id, False)
        queued = self._deliver_room(request.room, frame, exclude, False, undelivered, session)
        self.broker.publish(request.room, frame, exclude, False)
        if request.id is not None:
            sender.enqueue(codec.encode_ok(request.id, queued=queued), "ok", None)

    def _announce(self, room: str, peer_id: str, event: str, *, here: bool = True) -> None:
        """Tell ``room``'s presence watchers of ``event``; ``here=False``: on other nodes only."""
        frame = codec.encode({"type": "presence", "room": room, "peer": peer_id, "event": event})
        if here:
            self._publish_frame(room, frame, peer_id, None, None, presence_only=True)
        else:
            self.broker.publish(room, frame, peer_id, True)

    def report(self, undelivered: Undelivered, target: str, code: ErrorCode) -> None:
        """Tell a sender that what it sent to ``target`` was never delivered."""
        sender_id, request_id, listed = undelivered
        if sender_id == SERVER_ID:
            return  # the API caller got its answer already
        frame = codec.encode_err(
            code.value,
            f"{target} did not take the message",
            request_id=request_id,
            to=[target] if listed else target,
        )
        self.metrics.errors.labels(code.value).inc()
        self.tell(sender_id, frame, "err")

    # --- the broker's callbacks (NodeHandler) ---------------------------------

    def deliver(
        self,
        peer_id: str,
        frame: bytes,
        undelivered: Undelivered | None,
        answer: Answer | None = None,
    ) -> Delivery:
        """Hand ``frame`` to one of this node's peers (``answer``: see ``NodeHandler``)."""
        peer = self.peers.get(peer_id)
        if peer is None:
            return OFFLINE
        kind = "msg" if undelivered is not None else "err"
        delivery = peer.enqueue(frame, kind, undelivered, answer)
        if delivery is OVERLOADED:
            self.metrics.drops.labels("queue-full").inc()
        return delivery

    def deliver_room(
        self, room: str, frame: bytes, exclude: str | None, presence_only: bool
    ) -> None:
        """Hand ``frame`` (published on another node) to this node's members of ``room``."""
        self._deliver_room(room, frame, exclude, presence_only)

    def _deliver_room(
        self,
        room: str,
        frame: bytes,
        exclude: str | None,
        presence_only: bool,
        undelivered: Undelivered | None = None,
        waiter: Session | None = None,
    ) -> bool:
        """Hand ``frame`` to this node's members of ``room``; True if one was resuming."""
        kind = "presence" if presence_only else "msg"
        queued = False
        members = self.rooms.watchers(room) if presence_only else self.rooms.members(room)
        for member in members:
            if member.id == exclude:
                continue
            # Peer.enqueue's first case, inlined: a member whose socket takes
            # the frame now is written to here (a tenth of a delivery's
            # Python, micro.py room), the rest go through enqueue's rules.
            session = member.session
            if (
                session is not None
                and session.close_code is None
                and not member.queue
                and not session.transport.writing_paused
            ):
                session.write(frame, kind, undelivered, None)
                continue
            delivery = member.enqueue(frame, kind, undelivered)
            if delivery is OVERLOADED:
                self.metrics.drops.labels("queue-full").inc()
                if undelivered is not None:
                    self.report(undelivered, member.id, ErrorCode.OVERLOADED)
            elif delivery is QUEUED:
                queued = True
            elif waiter is not None and member.queue:
                waiter.wait_for(member)
        return queued


_ON_ITS_WAY = frozenset({DELIVERED, PENDING})


def _ignore(delivery: Delivery) -> None:
    """The answer to a report: nobody is told that a report was not delivered."""


class RemoteSend:
    """A ``send`` without id to one peer on another node: only a failure is answered.

    ``Routed`` answers any send the same way; this lean form, made once per
    frame on a cluster's busiest path, keeps only what that case needs: the
    sender's count of answers owed and of sends in flight to other nodes.
    """

    __slots__ = ("_router", "_sender", "_session", "_target")

    def __init__(self, router: Router, session: Session, sender: Peer, target: str) -> None:
        self._router = router
        self._session = session
        self._sender = sender
        self._target = target

    def send(self, frame: bytes, undelivered: Undelivered) -> None:
        """Hand ``frame`` to the broker; the broker calls this object with the outcome."""
        self._sender.owed += 1
        self._session.sent_elsewhere()
        self._router.broker.send(self._target, frame, undelivered, self)

    def __call__(self, delivery: Delivery) -> None:
        sender = self._sender
        if sender.owed:
            sender.owed -= 1
        self._session.answered_from_elsewhere()
        if delivery is not DELIVERED and delivery is not QUEUED:
            self._router.tell_failure(sender.id, None, self._target, delivery)


class Routed:
    """What became of each target of one message; answers the sender once all are known."""

    __slots__ = (
        "_hub",
        "_listed",
        "_owed",
        "_pending",
        "_remote",
        "_request_id",
        "_sender",
        "_session",
        "delivered",
        "offline",
        "on_done",
        "overloaded",
        "queued",
        "waits_for_acks",
    )

    def __init__(
        self,
        hub: Router,
        sender: Peer | None,
        request_id: RequestId | None,
        listed: bool,
        session: Session | None,
        *,
        waits_for_acks: bool = False,
    ) -> None:
        self._hub = hub
        self._sender = sender
        self._request_id = request_id
        self._listed = listed
        self._session = session
        self._pending = 1  # the routing itself, until close()
        self._remote = False
        self._owed = False  # counted in the sender's ``owed`` until answered
        # Local targets answer once their hosts acknowledge the frame: for
        # a request with an id (its ok says so), or the HTTP API's sends.
        self.waits_for_acks = waits_for_acks or request_id is not None
        self.on_done: Callable[[], None] | None = None
        self.delivered: list[str] = []
        self.queued: list[str] = []
        self.offline: list[str] = []
        self.overloaded: list[str] = []

    def add(self, target: str, delivery: Delivery) -> None:
        """Record what became of the frame for ``target``."""
        if delivery is DELIVERED:
            self.delivered.append(target)
        elif delivery is QUEUED:
            self.queued.append(target)
        elif delivery is OFFLINE:
            self.offline.append(target)
        else:
            self.overloaded.append(target)
            self._hub.metrics.drops.labels("queue-full").inc()

    def expect(self, *, remote: bool) -> None:
        """One more target will be answered later: by another node, or by its acknowledgement."""
        self._pending += 1
        if remote and not self._remote and self._session is not None:
            self._remote = True
            self._session.sent_elsewhere()

    def answerer(self, target: str) -> Callable[[Delivery], None]:
        """The callback a broker calls with ``target``'s outcome."""

        def answer(delivery: Delivery) -> None:
            self.add(target, delivery)
            self._settle()

        return answer

    def close(self) -> None:
        """Every target was handed over; answer now if nothing is awaited."""
        if self._pending > 1 and self._sender is not None:
            self._owed = True
            self._sender.owed += 1
        self._settle()

    def _settle(self) -> None:
        self._pending -= 1
        if self._pending:
            return
        if self._owed and self._sender is not None and self._sender.owed:
            self._sender.owed -= 1
        if self._remote and self._session is not None:
            self._session.answered_from_elsewhere()
        self._answer()
        if self.on_done is not None:
            self.on_done()

    def _answer(self) -> None:
        sender = self._sender
        if sender is None or (self._request_id is None and not self.offline + self.overloaded):
            return
        frame, kind = self.answer_frame()
        # The sender may have moved to another node meanwhile.
        self._hub.tell(sender.id, frame, kind)

    def answer_frame(self) -> tuple[bytes, str]:
        """The sender's answer (``ok`` or ``err``), and its kind for the metrics."""
        unreached = self.offline + self.overloaded
        if unreached:
            code = ErrorCode.PEER_OFFLINE if self.offline else ErrorCode.OVERLOADED
            what = "not connected" if self.offline else "cannot take more now"
            to: str | list[str] = unreached if self._listed else unreached[0]
            self._hub.metrics.errors.labels(code.value).inc()
            frame = codec.encode_err(
                code.value, f"{what}: {', '.join(unreached)}", request_id=self._request_id, to=to
            )
            return frame, "err"
        assert self._request_id is not None
        return codec.encode_ok(self._request_id, queued=bool(self.queued)), "ok"
