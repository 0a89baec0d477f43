"""Routing: the hub registers peers and moves frames between them.

The hub delivers to the peers of its own node directly and hands everything
else to its ``Broker``; it never asks which broker it has. Frames are encoded
once per request (``msg`` around the sender's raw payload) and the same bytes
go to every target. Routing is synchronous: a frame is written to each local
target's socket before the sender's next frame is read. A target whose socket
is full makes its senders wait (they are not read until it drains), and a
target that stops reading for ``slow_consumer_seconds`` is closed 4008 by the
sweep, so one stalled reader holds nobody up for long.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
from anyio.abc import TaskGroup

from relay.auth import Claims, load_verifier
from relay.broker.base import Broker, BrokerUnavailable
from relay.delivery import AckWatch
from relay.exceptions import Forbidden, IdTaken, RoomFull
from relay.metrics import Metrics
from relay.protocol import codec
from relay.protocol.codes import CloseCode, ErrorCode
from relay.protocol.envelopes import Hello, Join, Leave, Publish, Refresh, Send
from relay.rooms import Rooms
from relay.session import Peer, Session
from relay.settings import Settings
from relay.values import Answer, Delivery, Handover, Proof, RequestId, Undelivered

log = logging.getLogger("relay.hub")

_CLEAN_CLIENT_CLOSES = frozenset({CloseCode.NORMAL, CloseCode.GOING_AWAY})
_KEEP_FOR_RESUME = frozenset({CloseCode.GOING_AWAY, CloseCode.SLOW_CONSUMER, CloseCode.RATE_LIMITED,
                              CloseCode.INTERNAL_ERROR})  # fmt: skip


SERVER_ID = "@server"  # ``from`` of server-originated messages; no peer id can start with @

# The close reason of a drain: the contract a client relies on to send again.
DRAIN_REASON = "relay going away: requests not answered before this close were not acted on"
_DRAIN_POLL_SECONDS = 0.005


def _new_secret() -> str:
    return secrets.token_urlsafe(24)


def _new_peer_id() -> str:
    return secrets.token_urlsafe(9)


class Hub:
    """One node's peers, rooms and routing."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        metrics: Metrics,
        *,
        make_peer_id: Callable[[], str] = _new_peer_id,
        make_secret: Callable[[], str] = _new_secret,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.metrics = metrics
        self.auth = load_verifier(settings)  # None: open mode
        self.codec_limits = settings.codec_limits()
        self.node_id = settings.node_id or f"node-{secrets.token_hex(4)}"
        self.peers: dict[str, Peer] = {}
        self.sessions: set[Session] = set()
        self.rooms = Rooms()
        self.accepting = False
        self._make_peer_id = make_peer_id
        self._make_secret = make_secret
        self.backlogged: set[Peer] = set()  # live peers whose queue is not empty
        self.acks = AckWatch()  # sessions whose peers' senders wait for acknowledgements
        self.draining = False
        self._drain_keeps = True  # a drained peer can resume on another node
        self._tasks: TaskGroup | None = None
        self._changed = anyio.Event()  # set when a session or a peer goes away

    # --- lifecycle -----------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Hub]:
        """Serve while the context is open: broker started, timers running."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            await self.broker.start(self)
            tasks.start_soon(self._sweep_slow_consumers)
            self.accepting = True
            try:
                yield self
            finally:
                self.accepting = False
                tasks.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await self.broker.close()

    async def drain(self, seconds: float) -> None:
        """Stop taking peers, answer every request read, and let the peers move elsewhere.

        Readiness goes false and new sockets are refused. Then, within
        ``seconds``: each session is read until nothing its peer had sent
        waits any more, full target queues notwithstanding (what they cannot
        take is refused ``overloaded``), and reading stops (by 40% of the
        time); every request read is answered (by 70%: a reader whose
        acknowledgements are still missing then is aborted, so what it never
        got is answered as it would be for any lost link); then every queue
        is flushed and every socket closed with 1001 and ``DRAIN_REASON``:
        a request not answered by then was not acted on. When other nodes
        serve the cluster, the peers stay resumable until they reconnect
        there (their rooms and queues move with them); alone, the node
        removes them as they end. Whatever is left at the deadline is
        removed, and its senders are told it was not delivered.
        """
        self.accepting = False
        self.draining = True
        start = anyio.current_time()
        try:
            self._drain_keeps = seconds > 0 and await self.broker.other_nodes() > 0
        except BrokerUnavailable:
            self._drain_keeps = False
        for session in self.sessions:
            session.draining = True
        for peer in list(self.peers.values()):
            peer.release_waiters()

        def stopped() -> bool:
            return all([session.stop_reading() for session in list(self.sessions)])

        await self._poll_until(stopped, start + 0.4 * seconds)
        for session in list(self.sessions):
            session.stop_reading(now=True)

        def answered() -> bool:
            return not any(session.owes_answers for session in self.sessions)

        if not await self._poll_until(answered, start + 0.7 * seconds):
            for session in [session for session in self.sessions if session.holds_answers]:
                session.abort()
            await self._poll_until(answered, start + 0.8 * seconds)
        left = max(0.0, start + seconds - anyio.current_time())
        for session in list(self.sessions):
            session.close(CloseCode.GOING_AWAY, DRAIN_REASON, reason="drain", flush_seconds=left)
        with anyio.move_on_after(left):
            await self._until(lambda: not self.sessions)
            if self._drain_keeps:
                await self._until(lambda: not self.peers)
        for peer in list(self.peers.values()):
            await self._remove(peer)

    @staticmethod
    async def _poll_until(done: Callable[[], bool], deadline: float) -> bool:
        """Check ``done`` every few milliseconds until it holds or ``deadline`` passes."""
        while not done():
            if anyio.current_time() >= deadline:
                return False
            await anyio.sleep(_DRAIN_POLL_SECONDS)
        return True

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the hub's task group (it ends with the hub)."""
        assert self._tasks is not None, "the hub is not running"
        self._tasks.start_soon(lambda: work)

    async def _sweep_slow_consumers(self) -> None:
        """Close 4008 every live peer whose queue has not moved for ``slow_consumer_seconds``."""
        limit = self.settings.slow_consumer_seconds
        while True:
            await anyio.sleep(min(1.0, limit / 4))
            now = time.monotonic()
            for peer in [p for p in self.backlogged if now - p.backlog_since > limit]:
                self.backlogged.discard(peer)
                if peer.session is not None:
                    peer.session.close(
                        CloseCode.SLOW_CONSUMER, "not reading: outbound queue stalled",
                        reason="slow",
                    )  # fmt: skip

    async def _until(self, done: Callable[[], bool]) -> None:
        while not done():
            self._changed = anyio.Event()
            await self._changed.wait()

    # --- sessions ------------------------------------------------------------

    def opened(self, session: Session) -> None:
        """A socket was accepted."""
        self.sessions.add(session)
        self.metrics.connections.inc()

    async def register(self, session: Session, hello: Hello) -> bytes:
        """Attach ``session`` to the peer ``hello`` asks for; returns the ``welcome``.

        A held id is taken over only by a session proving it is the same peer
        (its resume secret, or a valid token for that id); the old session is
        closed with 4503. With auth on, every hello needs a valid token whose
        ``sub`` is the id (``Unauthorized`` / ``Forbidden`` otherwise).
        """
        claims: Claims | None = None
        if self.auth is not None:
            claims = self.auth.authenticate(hello)
            peer_id = claims.sub
        else:
            peer_id = hello.peer_id or self._unused_peer_id()
        verified = claims is not None  # a valid token for this very id
        peer = self.peers.get(peer_id)
        resumed = False
        if peer is not None:
            if not verified and (
                hello.resume is None or not hmac.compare_digest(hello.resume, peer.secret)
            ):
                raise IdTaken(f"{peer_id} is held by another session")
            old = peer.session
            if old is not None:
                old.close(CloseCode.REPLACED, "replaced by a newer session", reason="replaced")
                # Its socket lives on a little: what it has not acknowledged
                # by now is replayed on the new one.
                peer.acknowledged(old.transport.acked_bytes())
                peer.answer_queued()
            resumed = True
        else:
            handover = None
            holder = await self.broker.claim(peer_id)
            if holder is not None and (hello.resume is not None or verified):
                handover = await self.broker.take_over(
                    peer_id, holder, Proof(hello.resume, verified)
                )
            if (holder is not None and handover is None) or peer_id in self.peers:
                raise IdTaken(f"{peer_id} is held by another session")
            peer = self._new_peer(peer_id, handover)
            resumed = handover is not None
        if peer.expiry is not None:
            peer.expiry.cancel()
            peer.expiry = None
        if claims is not None:
            await self._leave_forbidden_rooms(peer, claims)
        # Nothing below waits: the session is attached and its welcome
        # written before any frame for the peer can reach its socket.
        lost = peer.replay(hello.received if resumed else None)
        if lost:
            self.metrics.drops.labels("replay-window").inc(lost)
        peer.session = session
        peer.secret = self._make_secret()
        session.peer = peer
        session.set_claims(claims)
        if peer.queue:
            self.backlogged.add(peer)
        return codec.encode(
            {
                "type": "welcome",
                "id": peer_id,
                "resume": peer.secret,
                "limits": self.settings.advertised_limits(),
                "node": self.node_id,
                "resumed": resumed,
            }
        )

    def _new_peer(self, peer_id: str, handover: Handover | None) -> Peer:
        peer = Peer(
            peer_id,
            max_queue_messages=self.settings.queue_messages,
            max_queue_bytes=self.settings.queue_bytes,
            replay_bytes=self.settings.replay_bytes,
        )
        if handover is not None:
            peer.take_over(handover)
            for room in handover.rooms:
                self.rooms.add(room, peer)
            self.metrics.rooms.set(len(self.rooms))
        self.peers[peer_id] = peer
        self.metrics.peers.inc()
        return peer

    async def hand_over(self, peer_id: str, proof: Proof) -> Handover | None:
        """Give ``peer_id`` up to another node, which proved it is the same peer."""
        peer = self.peers.get(peer_id)
        if peer is None or not (
            proof.verified
            or (proof.secret is not None and hmac.compare_digest(proof.secret, peer.secret))
        ):
            return None
        session, peer.session = peer.session, None
        if session is not None:
            session.close(CloseCode.REPLACED, "replaced by a newer session", reason="replaced")
            peer.acknowledged(session.transport.acked_bytes())
        if peer.expiry is not None:
            peer.expiry.cancel()
        del self.peers[peer_id]
        self.metrics.peers.dec()
        self._changed.set()
        for room in peer.rooms:
            self.rooms.discard(room, peer)
        self.metrics.rooms.set(len(self.rooms))
        return peer.hand_over()

    def _unused_peer_id(self) -> str:
        while (peer_id := self._make_peer_id()) in self.peers:
            pass
        return peer_id

    def session_ended(self, session: Session, client_code: int) -> None:
        """A socket ended; its peer waits for a resume or is removed.

        A peer that said goodbye (1000/1001 from the client) or was closed
        for good is removed now; one whose link dropped, or that the relay
        asked to reconnect, keeps its id, rooms and queue for the window.
        """
        if session in self.sessions:
            self.sessions.discard(session)
            self.metrics.connections.dec()
            self._changed.set()
        peer = session.peer
        if peer is None or peer.session is not session:
            return
        peer.session = None
        self.backlogged.discard(peer)
        if session.close_code is not None:
            resumable = session.close_code in _KEEP_FOR_RESUME
        else:
            resumable = client_code not in _CLEAN_CLIENT_CLOSES
        if self.draining and not self._drain_keeps:
            resumable = False  # nobody would be left to resume with
        if resumable and session.resumable and self.settings.resume_seconds > 0:
            peer.answer_queued()
            loop = asyncio.get_running_loop()
            peer.expiry = loop.call_later(self.settings.resume_seconds, self._expire, peer)
        else:
            self.spawn(self._remove(peer))

    def _expire(self, peer: Peer) -> None:
        peer.expiry = None
        if peer.session is None and self.peers.get(peer.id) is peer:
            self.spawn(self._remove(peer))

    async def _remove(self, peer: Peer) -> None:
        """Forget ``peer``: leave its rooms, free its id, report what it never got."""
        if self.peers.get(peer.id) is not peer:
            return
        del self.peers[peer.id]
        self.metrics.peers.dec()
        self._changed.set()
        for undelivered, answer in peer.take_undelivered():
            if answer is not None:
                answer(Delivery.OFFLINE)
            elif undelivered is not None:
                self.report(undelivered, peer.id, ErrorCode.PEER_OFFLINE)
        try:
            for room in list(peer.rooms):
                await self._leave_room(peer, room)
            await self.broker.release(peer.id)
        except BrokerUnavailable:
            # The broker forgets this node's registrations when it recovers.
            log.warning("backplane unavailable while removing %s", peer.id)

    async def disconnect(
        self, peer_id: str, code: int = CloseCode.GOING_AWAY, reason: str = ""
    ) -> None:
        """Close a peer's live socket; its session stays resumable for reconnect codes."""
        peer = self.peers.get(peer_id)
        if peer is not None and peer.session is not None:
            peer.session.close(code, reason, reason="kicked")

    async def refresh(self, session: Session, refresh: Refresh) -> None:
        """Replace the session's token with a fresh one for the same id.

        In open mode there is nothing to refresh and the answer is ``ok``. A
        bad token (``Unauthorized``) or one for another id (``Forbidden``)
        changes nothing: the session keeps its current token until it expires.
        """
        if self.auth is not None:
            claims = self.auth.verify(refresh.token)
            peer = session.peer
            if peer is None or claims.sub != peer.id:
                raise Forbidden("the token is for another id")
            session.set_claims(claims)
            await self._leave_forbidden_rooms(peer, claims)
        if refresh.id is not None:
            session.reply(codec.encode_ok(refresh.id), "ok")

    def _check_room(self, peer: Peer, room: str) -> None:
        """Refuse a room the peer's token does not list (``Forbidden``)."""
        session = peer.session
        claims = session.claims if session is not None else None
        if self.auth is not None and (claims is None or not claims.allows_room(room)):
            raise Forbidden(f"the token does not allow room {room}")

    async def _leave_forbidden_rooms(self, peer: Peer, claims: Claims) -> None:
        """Drop rooms (kept from a resumed session) the current token no longer lists."""
        for room in [r for r in peer.rooms if not claims.allows_room(r)]:
            await self._leave_room(peer, room)

    # --- routing -------------------------------------------------------------

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
                    if delivery is Delivery.DELIVERED:
                        if target.queue:
                            session.wait_for(target)
                        return
                else:
                    answer = functools.partial(self._answer_one, undelivered, to)
                    delivery = target.enqueue(frame, "msg", undelivered, answer)
                    if delivery is Delivery.PENDING:
                        sender.owed += 1
                        if target.queue:
                            session.wait_for(target)
                        return
                routed = Routed(self, sender, request.id, False, session)
                routed.add(to, delivery)
                routed.close()
                return
            targets: tuple[str, ...] = (to,)
        else:
            undelivered = (sender.id, request.id, True)
            targets = to
        routed = Routed(self, sender, request.id, undelivered[2], session)
        self._route(targets, frame, undelivered, routed, session)
        routed.close()

    def _answer_one(self, undelivered: Undelivered, target: str, delivery: Delivery) -> None:
        """Answer a ``send`` to one local target (with an id), once its fate is known."""
        sender_id, request_id, _listed = undelivered
        assert request_id is not None
        sender = self.peers.get(sender_id)
        if sender is not None and sender.owed:
            sender.owed -= 1
        if delivery is Delivery.DELIVERED:
            frame, kind = codec.encode_ok(request_id), "ok"
        else:
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
                if delivery is Delivery.PENDING:
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
        """Deliver a ``pub`` to the room's members on every node."""
        sender = session.peer
        assert sender is not None
        self._check_room(sender, request.room)
        frame = codec.encode_msg(sender.id, request.d_raw, ev=request.ev, room=request.room)
        exclude = None if request.echo else sender.id
        undelivered: Undelivered = (sender.id, request.id, False)
        queued = self._deliver_room(request.room, frame, exclude, False, undelivered, session)
        self.broker.publish(request.room, frame, exclude, False)
        if request.id is not None:
            sender.enqueue(codec.encode_ok(request.id, queued=queued), "ok", None)

    async def join(self, session: Session, request: Join) -> None:
        """Add the session's peer to a room, announcing it to members who watch presence."""
        peer = session.peer
        assert peer is not None
        room = request.room
        self._check_room(peer, room)
        if room not in peer.rooms:
            if len(peer.rooms) >= self.settings.rooms_per_peer:
                raise RoomFull(f"already in {self.settings.rooms_per_peer} rooms")
            if not await self.broker.join(room, peer.id, self.settings.peers_per_room):
                raise RoomFull(f"{room} has {self.settings.peers_per_room} members")
            self.rooms.add(room, peer)
            self.metrics.rooms.set(len(self.rooms))
            self._announce(room, peer.id, "join")
        peer.rooms[room] = request.presence
        if request.presence:
            members = await self.broker.members(room)
            snapshot = {"type": "presence", "room": room, "peer": peer.id, "event": "join"}
            peer.enqueue(codec.encode({**snapshot, "members": members}), "presence", None)
        if request.id is not None:
            peer.enqueue(codec.encode_ok(request.id), "ok", None)

    async def leave(self, session: Session, request: Leave) -> None:
        """Remove the session's peer from a room (a no-op if it is not a member)."""
        peer = session.peer
        assert peer is not None
        if request.room in peer.rooms:
            await self._leave_room(peer, request.room)
        if request.id is not None:
            peer.enqueue(codec.encode_ok(request.id), "ok", None)

    async def _leave_room(self, peer: Peer, room: str) -> None:
        del peer.rooms[room]
        self.rooms.discard(room, peer)
        self.metrics.rooms.set(len(self.rooms))
        await self.broker.leave(room, peer.id)
        self._announce(room, peer.id, "leave")

    def _announce(self, room: str, peer_id: str, event: str) -> None:
        frame = codec.encode({"type": "presence", "room": room, "peer": peer_id, "event": event})
        self._publish_frame(room, frame, peer_id, None, None, presence_only=True)

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
            return Delivery.OFFLINE
        kind = "msg" if undelivered is not None else "err"
        delivery = peer.enqueue(frame, kind, undelivered, answer)
        if delivery is Delivery.OVERLOADED:
            self.metrics.drops.labels("queue-full").inc()
        return delivery

    def deliver_room(
        self, room: str, frame: bytes, exclude: str | None, presence_only: bool
    ) -> None:
        """Hand ``frame`` (published on another node) to this node's members of ``room``."""
        self._deliver_room(room, frame, exclude, presence_only)

    def member_lost(self, room: str, peer_id: str) -> None:
        """Announce a member the registry lost without its hub leaving (see ``NodeHandler``)."""
        with suppress(BrokerUnavailable):  # not keeping up: dropped, as any frame is then
            self._announce(room, peer_id, "leave")

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
        for member in self.rooms.members(room):
            if member.id == exclude or (presence_only and not member.rooms.get(room)):
                continue
            delivery = member.enqueue(frame, kind, undelivered)
            if delivery is Delivery.OVERLOADED:
                self.metrics.drops.labels("queue-full").inc()
                if undelivered is not None:
                    self.report(undelivered, member.id, ErrorCode.OVERLOADED)
            elif delivery is Delivery.QUEUED:
                queued = True
            elif waiter is not None and member.queue:
                waiter.wait_for(member)
        return queued


_ON_ITS_WAY = frozenset({Delivery.DELIVERED, Delivery.PENDING})


def _ignore(delivery: Delivery) -> None:
    """The answer to a report: nobody is told that a report was not delivered."""


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
        hub: Hub,
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
        if delivery is Delivery.DELIVERED:
            self.delivered.append(target)
        elif delivery is Delivery.QUEUED:
            self.queued.append(target)
        elif delivery is Delivery.OFFLINE:
            self.offline.append(target)
        else:
            self.overloaded.append(target)
            self._hub.metrics.drops.labels("queue-full").inc()

    def expect(self, *, remote: bool) -> None:
        """One more target will be answered later: by another node, or by its acknowledgement."""
        self._pending += 1
        if remote and not self._remote and self._session is not None:
            self._remote = True
            session = self._session
            session.inflight += 1
            if session.inflight == self._hub.settings.inflight_per_session:
                session.hold()

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
        session = self._session
        if self._remote and session is not None:
            session.inflight -= 1
            if session.inflight == self._hub.settings.inflight_per_session - 1:
                session.resume()
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
