"""Routing: the hub registers peers and moves frames between them.

The hub delivers to the peers of its own node directly and hands everything
else to its ``Broker``; it never asks which broker it has. Frames are encoded
once per request (``msg`` around the sender's raw payload) and the same bytes
go to every target's queue, so a slow target never holds up the sender or
anyone else: a full queue closes that target (4008), nothing waits on it.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskGroup

from relay.auth import Claims, load_verifier
from relay.broker.base import (
    Broker,
    BrokerUnavailable,
    Delivery,
    Handover,
    Proof,
    Undelivered,
)
from relay.exceptions import Forbidden, IdTaken, Overloaded, PeerOffline, RoomFull
from relay.metrics import Metrics
from relay.protocol import codec
from relay.protocol.codes import CloseCode, ErrorCode
from relay.protocol.envelopes import Hello, Join, Leave, Publish, Refresh, Send
from relay.rooms import Rooms
from relay.session import Peer, Session
from relay.settings import Settings

log = logging.getLogger("relay.hub")

_CLEAN_CLIENT_CLOSES = frozenset({CloseCode.NORMAL, CloseCode.GOING_AWAY})
_KEEP_FOR_RESUME = frozenset({CloseCode.GOING_AWAY, CloseCode.SLOW_CONSUMER, CloseCode.RATE_LIMITED,
                              CloseCode.INTERNAL_ERROR})  # fmt: skip


SERVER_ID = "@server"  # ``from`` of server-originated messages; no peer id can start with @


class Routed:
    """Which targets of one message got it how (a dict keyed by enum costs more)."""

    __slots__ = ("delivered", "offline", "overloaded", "queued")

    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.queued: list[str] = []
        self.offline: list[str] = []
        self.overloaded: list[str] = []


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
        self._tasks: TaskGroup | None = None
        self._changed = anyio.Event()  # set when a session or a peer goes away

    # --- lifecycle -----------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Hub]:
        """Serve while the context is open: broker started, timers running."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            await self.broker.start(self)
            self.accepting = True
            try:
                yield self
            finally:
                self.accepting = False
                tasks.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await self.broker.close()

    async def drain(self, seconds: float) -> None:
        """Stop taking peers and let the ones this node holds move elsewhere.

        Readiness goes false and new sockets are refused; every queue is
        flushed and every socket closed with 1001. When other nodes serve
        the cluster, the peers stay resumable until they reconnect there
        (their rooms and queues move with them). Whatever is left at the
        deadline is removed, and its senders are told it was not delivered.
        """
        self.accepting = False
        for session in list(self.sessions):
            session.close(
                CloseCode.GOING_AWAY, "server going away", reason="drain", flush_seconds=seconds
            )
        with anyio.move_on_after(seconds):
            await self._until(lambda: not self.sessions)
            if await self.broker.other_nodes():
                await self._until(lambda: not self.peers)
        for peer in list(self.peers.values()):
            await self._remove(peer)

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
        lost = peer.replay(hello.received if resumed else None)
        if lost:
            self.metrics.drops.labels("replay-window").inc(lost)
        peer.session = session
        peer.secret = self._make_secret()
        session.peer = peer
        session.claims = claims
        if claims is not None:
            await self._leave_forbidden_rooms(peer, claims)
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
            replay_messages=self.settings.replay_messages,
        )
        if handover is not None:
            peer.rooms.update(handover.rooms)
            for room in handover.rooms:
                self.rooms.add(room, peer)
            self.metrics.rooms.set(len(self.rooms))
            peer.queue.extend(handover.queue)
            peer.queued_bytes = sum(len(entry[0]) for entry in handover.queue)
            peer.written.extend(handover.written)
            peer.written_count = handover.written_count
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
        if peer.expiry is not None:
            peer.expiry.cancel()
        del self.peers[peer_id]
        self.metrics.peers.dec()
        self._changed.set()
        for room in peer.rooms:
            self.rooms.discard(room, peer)
        self.metrics.rooms.set(len(self.rooms))
        handover = Handover(
            dict(peer.rooms), list(peer.queue), list(peer.written), peer.written_count
        )
        peer.queue.clear()
        peer.queued_bytes = 0
        return handover

    def _unused_peer_id(self) -> str:
        while (peer_id := self._make_peer_id()) in self.peers:
            pass
        return peer_id

    async def closed(self, session: Session, client_code: int | None) -> None:
        """A socket ended; its peer waits for a resume or is removed.

        A peer that said goodbye (1000/1001 from the client) or was closed
        for good is removed now; one whose link dropped, or that the relay
        asked to reconnect, keeps its id, rooms and queue for the window.
        """
        self.sessions.discard(session)
        self.metrics.connections.dec()
        self._changed.set()
        peer = session.peer
        if peer is None or peer.session is not session:
            return
        peer.session = None
        if session.close_code is not None:
            resumable = session.close_code in _KEEP_FOR_RESUME
        else:
            resumable = client_code not in _CLEAN_CLIENT_CLOSES
        if resumable and self.settings.resume_seconds > 0:
            self._start_expiry(peer)
        else:
            await self._remove(peer)

    def _start_expiry(self, peer: Peer) -> None:
        assert self._tasks is not None
        scope = anyio.CancelScope()
        peer.expiry = scope

        async def expire() -> None:
            with scope:
                await anyio.sleep(self.settings.resume_seconds)
                if peer.session is None and self.peers.get(peer.id) is peer:
                    await self._remove(peer)

        self._tasks.start_soon(expire)

    async def _remove(self, peer: Peer) -> None:
        """Forget ``peer``: leave its rooms, free its id, report what it never got."""
        if self.peers.get(peer.id) is not peer:
            return
        del self.peers[peer.id]
        self.metrics.peers.dec()
        self._changed.set()
        pending, peer.queue = peer.queue, type(peer.queue)()
        peer.queued_bytes = 0
        try:
            for room in list(peer.rooms):
                await self._leave_room(peer, room)
            await self.broker.release(peer.id)
            for _frame, _kind, undelivered in pending:
                if undelivered is not None:
                    await self._report(undelivered, peer.id, ErrorCode.PEER_OFFLINE)
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
            session.claims = claims
            session.claims_changed.set()
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

    async def send(self, sender: Peer, request: Send) -> None:
        """Deliver a ``send`` to each target; one ``ok`` or ``err`` answers it."""
        frame = codec.encode_msg(
            sender.id, request.d_raw, ev=request.ev, rid=request.rid, re=request.re
        )
        listed = not isinstance(request.to, str)
        undelivered = Undelivered(sender.id, request.id, listed)
        targets = (request.to,) if isinstance(request.to, str) else request.to
        outcome = await self._route(targets, frame, undelivered)
        queued = bool(outcome.queued)
        offline = outcome.offline
        overloaded = outcome.overloaded
        if offline or overloaded:
            unreached = offline + overloaded
            to: str | list[str] = unreached if listed else unreached[0]
            if offline:
                raise PeerOffline(f"not connected: {', '.join(unreached)}", to=to)
            raise Overloaded(f"cannot take more now: {', '.join(unreached)}", to=to)
        if request.id is not None:
            sender.enqueue(codec.encode_ok(request.id, queued=queued), "ok", None)

    async def _route(
        self, targets: tuple[str, ...], frame: bytes, undelivered: Undelivered
    ) -> Routed:
        """Queue ``frame`` for each target, locally or through the broker."""
        outcome = Routed()
        for target_id in targets:
            target = self.peers.get(target_id)
            if target is not None:
                result = target.enqueue(frame, "msg", undelivered)
            else:
                result = await self.broker.send(target_id, frame, undelivered)
            if result is Delivery.DELIVERED:
                outcome.delivered.append(target_id)
            elif result is Delivery.QUEUED:
                outcome.queued.append(target_id)
            elif result is Delivery.OFFLINE:
                outcome.offline.append(target_id)
            else:
                outcome.overloaded.append(target_id)
                self.metrics.drops.labels("queue-full").inc()
        return outcome

    async def server_send(
        self, to: str | tuple[str, ...], d_raw: bytes, ev: str | None = None
    ) -> Routed:
        """Deliver a message from the server itself (``from`` is ``@server``)."""
        frame = codec.encode_msg(SERVER_ID, d_raw, ev=ev)
        targets = (to,) if isinstance(to, str) else to
        return await self._route(targets, frame, Undelivered(SERVER_ID, None, False))

    async def server_publish(self, room: str, d_raw: bytes, ev: str | None = None) -> None:
        """Publish to ``room`` on every node from the server itself."""
        frame = codec.encode_msg(SERVER_ID, d_raw, ev=ev, room=room)
        await self._publish_frame(room, frame, None, Undelivered(SERVER_ID, None, False))

    async def _publish_frame(
        self,
        room: str,
        frame: bytes,
        exclude: str | None,
        undelivered: Undelivered | None,
        presence_only: bool = False,
    ) -> None:
        self.deliver_room(room, frame, exclude, presence_only, undelivered)
        await self.broker.publish(room, frame, exclude, presence_only)

    async def publish(self, sender: Peer, request: Publish) -> None:
        """Deliver a ``pub`` to the room's members on every node."""
        self._check_room(sender, request.room)
        frame = codec.encode_msg(sender.id, request.d_raw, ev=request.ev, room=request.room)
        exclude = None if request.echo else sender.id
        await self._publish_frame(
            request.room, frame, exclude, Undelivered(sender.id, request.id, False)
        )
        if request.id is not None:
            sender.enqueue(codec.encode_ok(request.id), "ok", None)

    async def join(self, peer: Peer, request: Join) -> None:
        """Add ``peer`` to a room, announcing it to members who watch presence."""
        room = request.room
        self._check_room(peer, room)
        if room not in peer.rooms:
            if len(peer.rooms) >= self.settings.rooms_per_peer:
                raise RoomFull(f"already in {self.settings.rooms_per_peer} rooms")
            if not await self.broker.join(room, peer.id, self.settings.peers_per_room):
                raise RoomFull(f"{room} has {self.settings.peers_per_room} members")
            self.rooms.add(room, peer)
            self.metrics.rooms.set(len(self.rooms))
            await self._announce(room, peer.id, "join")
        peer.rooms[room] = request.presence
        if request.presence:
            members = await self.broker.members(room)
            snapshot = {"type": "presence", "room": room, "peer": peer.id, "event": "join"}
            peer.enqueue(codec.encode({**snapshot, "members": members}), "presence", None)
        if request.id is not None:
            peer.enqueue(codec.encode_ok(request.id), "ok", None)

    async def leave(self, peer: Peer, request: Leave) -> None:
        """Remove ``peer`` from a room (a no-op if it is not a member)."""
        if request.room in peer.rooms:
            await self._leave_room(peer, request.room)
        if request.id is not None:
            peer.enqueue(codec.encode_ok(request.id), "ok", None)

    async def _leave_room(self, peer: Peer, room: str) -> None:
        del peer.rooms[room]
        self.rooms.discard(room, peer)
        self.metrics.rooms.set(len(self.rooms))
        await self.broker.leave(room, peer.id)
        await self._announce(room, peer.id, "leave")

    async def _announce(self, room: str, peer_id: str, event: str) -> None:
        frame = codec.encode({"type": "presence", "room": room, "peer": peer_id, "event": event})
        await self._publish_frame(room, frame, peer_id, None, presence_only=True)

    async def _report(self, undelivered: Undelivered, target: str, code: ErrorCode) -> None:
        """Tell a sender that what it sent to ``target`` was never delivered."""
        if undelivered.sender == SERVER_ID:
            return  # the API caller got its answer already
        frame = codec.encode_err(
            code.value,
            f"{target} did not take the message",
            request_id=undelivered.request_id,
            to=[target] if undelivered.listed else target,
        )
        sender = self.peers.get(undelivered.sender)
        if sender is not None:
            sender.enqueue(frame, "err", None)
        else:
            await self.broker.send(undelivered.sender, frame, None)

    # --- the broker's callbacks (NodeHandler) ---------------------------------

    def deliver(self, peer_id: str, frame: bytes, undelivered: Undelivered | None) -> Delivery:
        """Queue ``frame`` for one of this node's peers."""
        peer = self.peers.get(peer_id)
        if peer is None:
            return Delivery.OFFLINE
        return peer.enqueue(frame, "msg" if undelivered is not None else "err", undelivered)

    def deliver_room(
        self,
        room: str,
        frame: bytes,
        exclude: str | None,
        presence_only: bool,
        undelivered: Undelivered | None = None,
    ) -> None:
        """Queue ``frame`` for this node's members of ``room``."""
        kind = "presence" if presence_only else "msg"
        for member in self.rooms.members(room):
            if member.id == exclude or (presence_only and not member.rooms.get(room)):
                continue
            if member.enqueue(frame, kind, undelivered) is Delivery.OVERLOADED:
                self.metrics.drops.labels("queue-full").inc()
                if undelivered is not None and self._tasks is not None:
                    self._tasks.start_soon(self._report_quietly, undelivered, member.id)

    async def _report_quietly(self, undelivered: Undelivered, target: str) -> None:
        try:
            await self._report(undelivered, target, ErrorCode.OVERLOADED)
        except BrokerUnavailable:
            log.warning("backplane unavailable: could not tell %s", undelivered.sender)
