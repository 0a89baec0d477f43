"""The hub: one node's peers and sessions.

The hub registers peers (fresh, resumed, or taken over from another node),
keeps them through their resume window, removes them, and adds them to rooms
and takes them out. It is the ``Router`` (``relay.router``) that moves
frames between them, the ``Routing`` its sessions talk to
(``relay.session``), and the ``NodeHandler`` its broker calls back. Its
timers run on an injected ``relay.clock`` scheduler; its asynchronous steps
(the broker's calls) run in its task group while the session that asked
waits, unread.
"""

from __future__ import annotations

import asyncio
import binascii
import hmac
import logging
import os
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
from anyio.abc import TaskGroup

from relay.auth import Claims, load_verifier
from relay.broker.base import Broker, BrokerUnavailable
from relay.clock import Deadlines, LoopScheduler, Scheduler, Timer
from relay.decisions import Admitted, HelloAsked
from relay.delivery import AckWatch
from relay.eager import start_eagerly
from relay.events import SessionObserver
from relay.exceptions import Forbidden, IdTaken, RoomFull
from relay.metrics import Metrics
from relay.peer import Peer
from relay.protocol import codec
from relay.protocol.codes import CloseCode, ErrorCode
from relay.protocol.envelopes import Hello, Join, Leave, Refresh
from relay.router import Router, rooms_listed
from relay.session import Session
from relay.settings import Settings
from relay.values import Delivery, Handover, Joined, LostNode, Proof, Rejoined

log = logging.getLogger("relay.hub")

_CLEAN_CLIENT_CLOSES = frozenset({CloseCode.NORMAL, CloseCode.GOING_AWAY})
_KEEP_FOR_RESUME = frozenset({CloseCode.GOING_AWAY, CloseCode.SLOW_CONSUMER, CloseCode.RATE_LIMITED,
                              CloseCode.INTERNAL_ERROR})  # fmt: skip


# The close reason of a drain: the contract a client relies on to send again.
DRAIN_REASON = "relay going away: requests not answered before this close were not acted on"
_DRAIN_POLL_SECONDS = 0.005


_URL_SAFE = bytes.maketrans(b"+/", b"-_")


def _new_secret() -> str:
    # secrets.token_urlsafe(24) (no padding: 24 bytes), without its four Python calls
    return binascii.b2a_base64(os.urandom(24), newline=False).translate(_URL_SAFE).decode()


def _new_peer_id() -> str:
    return secrets.token_urlsafe(9)


class Hub(Router):
    """One node: its peers and sessions, their registration, rooms and routing."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        metrics: Metrics,
        *,
        make_peer_id: Callable[[], str] = _new_peer_id,
        make_secret: Callable[[], str] = _new_secret,
        scheduler: Scheduler | None = None,
    ) -> None:
        super().__init__(settings, broker, metrics, load_verifier(settings))
        self.scheduler: Scheduler = scheduler or LoopScheduler()
        self.hello_deadlines: Deadlines[Session] = Deadlines(
            self.scheduler, settings.hello_timeout_seconds, Session.hello_timed_out
        )
        self.codec_limits = settings.codec_limits()
        self.node_id = settings.node_id or f"node-{secrets.token_hex(4)}"
        self._welcome = codec.WelcomeEncoder(settings.advertised_limits(), self.node_id)
        self.sessions: set[Session] = set()
        self.accepting = False
        self._make_peer_id = make_peer_id
        self._make_secret = make_secret
        self.backlogged: set[Peer] = set()  # live peers whose queue is not empty
        self.acks = AckWatch(self.scheduler)  # sessions whose senders wait for acknowledgements
        self.observers: list[SessionObserver] = []
        self._sweep_timer: Timer | None = None
        self._deciding: set[str] = set()  # ids whose registration waits for the decider
        self.draining = False
        self._drain_keeps = True  # a drained peer can resume on another node
        self._tasks: TaskGroup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # while running
        self._steps: set[asyncio.Task[None]] = set()  # what spawn started and is running
        self._changed = anyio.Event()  # set when a session or a peer goes away
        # Read when scraped: an inc and a dec at every open, registration and
        # end took a lock each time, in a reconnect storm's every registration.
        metrics.connections.set_function(lambda: len(self.sessions))
        metrics.peers.set_function(lambda: len(self.peers))

    # --- lifecycle -----------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Hub]:
        """Serve while the context is open: broker started, timers running."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            self._loop = asyncio.get_running_loop()
            await self.broker.start(self)
            self.sweep_slow_consumers()
            self.accepting = True
            try:
                yield self
            finally:
                self.accepting = False
                if self._sweep_timer is not None:
                    self._sweep_timer.cancel()
                tasks.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    for step in self._steps:
                        step.cancel()
                    if self._steps:
                        await asyncio.wait(self._steps)
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
            session.close(CloseCode.GOING_AWAY, DRAIN_REASON, label="drain", flush_seconds=left)
        with anyio.move_on_after(left):
            await self._until(lambda: not self.sessions)
            if self._drain_keeps:
                await self._until(lambda: not self.peers)
        for peer in list(self.peers.values()):
            await self._remove(peer, "drained")

    @staticmethod
    async def _poll_until(done: Callable[[], bool], deadline: float) -> bool:
        """Check ``done`` every few milliseconds until it holds or ``deadline`` passes."""
        while not done():
            if anyio.current_time() >= deadline:
                return False
            await anyio.sleep(_DRAIN_POLL_SECONDS)
        return True

    def spawn(self, work: Coroutine[Any, Any, None], *, eager: bool = True) -> None:
        """Run ``work`` in a task that ends with the hub: at once up to its first wait if ``eager``.

        A session's steps are eager (``relay.eager``): on one node most of
        them never wait, and their answer then goes out in the pass that read
        the request. The hub's own clean-up is not, since it can be set off
        from inside loops over peers and sessions. An exception ``work`` lets
        out is raised in the task group, which ends the hub as it would have
        before.
        """
        assert self._tasks is not None and self._loop is not None, "the hub is not running"
        if eager:
            if (step := start_eagerly(work, self._loop)) is not None:
                self._track(step)
        else:
            self._track(self._loop.create_task(work))

    def _track(self, step: asyncio.Task[None]) -> None:
        # Plain asyncio tasks: the task group's ``start_soon`` cost a tenth
        # of a registration in a reconnect storm (issue 22).
        self._steps.add(step)
        step.add_done_callback(self._step_done)

    def _step_done(self, step: asyncio.Task[None]) -> None:
        self._steps.discard(step)
        if not step.cancelled() and (exc := step.exception()) is not None and self._tasks:
            self._tasks.start_soon(_reraise, exc)

    def sweep_slow_consumers(self) -> None:
        """Close 4008 every live peer whose queue has not moved for ``slow_consumer_seconds``.

        Runs again every quarter of that limit (at most every second).
        """
        limit = self.settings.slow_consumer_seconds
        now = self.scheduler.time()
        for peer in [p for p in self.backlogged if now - p.backlog_since > limit]:
            self.backlogged.discard(peer)
            if peer.session is not None:
                peer.session.close(
                    CloseCode.SLOW_CONSUMER, "not reading: outbound queue stalled", label="slow"
                )
        self._sweep_timer = self.scheduler.call_later(
            min(1.0, limit / 4), self.sweep_slow_consumers
        )

    async def _until(self, done: Callable[[], bool]) -> None:
        while not done():
            self._changed = anyio.Event()
            await self._changed.wait()

    # --- sessions ------------------------------------------------------------

    def opened(self, session: Session) -> None:
        """A socket was accepted."""
        self.sessions.add(session)

    def session_closing(self, session: Session, code: int, message: str, label: str) -> None:
        """The relay decided to close ``session``: observers hear it."""
        peer_id = session.peer.id if session.peer is not None else None
        for observer in self.observers:
            observer.closed(peer_id, code, message, label)

    def refused(self, peer_id: str | None, code: ErrorCode, message: str) -> None:
        """A request of ``peer_id`` was refused: observers hear it."""
        for observer in self.observers:
            observer.refused(peer_id, code.value, message)

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
        if peer_id in self._deciding:
            raise IdTaken(f"{peer_id} is held by another session")
        peer = self.peers.get(peer_id)
        resumed = False
        if peer is not None:
            if not verified and (
                hello.resume is None or not hmac.compare_digest(hello.resume, peer.secret)
            ):
                raise IdTaken(f"{peer_id} is held by another session")
            old = peer.session
            if old is not None:
                old.close(CloseCode.REPLACED, "replaced by a newer session", label="replaced")
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
            admitted = None
            if handover is None and self.decider is not None:
                admitted = await self._decide_hello(session, hello, peer_id, claims)
            peer = self._new_peer(peer_id, handover)
            resumed = handover is not None
            if admitted is not None:
                peer.meta, peer.granted = admitted.meta, admitted.rooms
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
        session.meta = peer.meta
        session.set_claims(claims)
        if peer.queue:
            session.queue_started(peer)
        for observer in self.observers:
            observer.online(peer_id, resumed=resumed, meta=peer.meta)
        return self._welcome.encode(peer_id, peer.secret, resumed=resumed)

    async def _decide_hello(
        self, session: Session, hello: Hello, peer_id: str, claims: Claims | None
    ) -> Admitted:
        """Ask the decider about a fresh registration; the id stays reserved meanwhile."""
        assert self.decider is not None
        asked = HelloAsked(peer_id, hello.token, claims, session.connect_info, self.node_id)
        self._deciding.add(peer_id)
        try:
            return await self.decider.decide_hello(asked)
        except BaseException:
            await self.broker.release(peer_id)
            raise
        finally:
            self._deciding.discard(peer_id)

    def _new_peer(self, peer_id: str, handover: Handover | None) -> Peer:
        peer = Peer(
            peer_id,
            max_queue_messages=self.settings.queue_messages,
            max_queue_bytes=self.settings.queue_bytes,
            replay_bytes=self.settings.replay_bytes,
        )
        if handover is not None:
            peer.take_over(handover)
            for room, watching in handover.rooms.items():
                self.rooms.add(room, peer, watching=watching)
            self.metrics.rooms.set(len(self.rooms))
        self.peers[peer_id] = peer
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
            session.close(CloseCode.REPLACED, "replaced by a newer session", label="replaced")
            peer.acknowledged(session.transport.acked_bytes())
        if peer.expiry is not None:
            peer.expiry.cancel()
        del self.peers[peer_id]
        self._changed.set()
        for room in peer.rooms:
            self.rooms.discard(room, peer)
        self.metrics.rooms.set(len(self.rooms))
        for observer in self.observers:
            observer.offline(peer_id, "moved")
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
            peer.expiry = self.scheduler.call_later(
                self.settings.resume_seconds, self._expire, peer
            )
        else:
            self.spawn(self._remove(peer, "closed"), eager=False)

    def _expire(self, peer: Peer) -> None:
        peer.expiry = None
        if peer.session is None and self.peers.get(peer.id) is peer:
            self.spawn(self._remove(peer, "expired"), eager=False)

    async def _remove(self, peer: Peer, reason: str) -> None:
        """Forget ``peer``: leave its rooms, free its id, report what it never got."""
        if self.peers.get(peer.id) is not peer:
            return
        del self.peers[peer.id]
        self._changed.set()
        for observer in self.observers:
            observer.offline(peer.id, reason)
        for undelivered, answer in peer.take_undelivered():
            if answer is not None:
                answer(Delivery.OFFLINE)
            elif undelivered is not None:
                self.report(undelivered, peer.id, ErrorCode.PEER_OFFLINE)
        try:
            for room in list(peer.rooms):
                await self.leave_room(peer, room)
            await self.broker.release(peer.id)
        except BrokerUnavailable:
            # The broker forgets this node's registrations when it recovers.
            log.warning("backplane unavailable while removing %s", peer.id)

    async def disconnect(
        self, peer_id: str, code: int = CloseCode.GOING_AWAY, reason: str = ""
    ) -> bool:
        """Close a peer's live socket; False when this node holds no socket for it.

        What happens to the peer then follows the code, as for any close the
        relay makes: a reconnect code keeps it for a resume.
        """
        peer = self.peers.get(peer_id)
        if peer is None or peer.session is None:
            return False
        peer.session.close(code, reason, label="kicked")
        return True

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

    async def _leave_forbidden_rooms(self, peer: Peer, claims: Claims) -> None:
        """Drop rooms (kept from a resumed session) the current token no longer lists."""
        for room in [r for r in peer.rooms if not claims.allows_room(r)]:
            await self.leave_room(peer, room)

    async def join(self, session: Session, request: Join) -> None:
        """Add the session's peer to a room, announcing it to members who watch presence."""
        peer = session.peer
        assert peer is not None
        room = request.room
        self._check_room(peer, room)
        if room not in peer.rooms and self.decider is not None and not rooms_listed(session):
            await self.decider.decide_join(peer.id, room, session.meta)
        if room not in peer.rooms:
            if len(peer.rooms) >= self.settings.rooms_per_peer:
                raise RoomFull(f"already in {self.settings.rooms_per_peer} rooms")
            joined = await self.broker.join(room, peer.id, self.settings.peers_per_room)
            if joined is Joined.FULL:
                raise RoomFull(f"{room} has {self.settings.peers_per_room} members")
            self.rooms.add(room, peer, watching=request.presence)
            self.metrics.rooms.set(len(self.rooms))
            self._announce(room, peer.id, "join")
            for observer in self.observers:
                if joined is Joined.FIRST:
                    observer.occupied(room)
                observer.joined(room, peer.id)
        else:  # joined again: presence as this join asks
            self.rooms.add(room, peer, watching=request.presence)
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
            await self.leave_room(peer, request.room)
        if request.id is not None:
            peer.enqueue(codec.encode_ok(request.id), "ok", None)

    async def leave_room(self, peer: Peer, room: str) -> None:
        """Take ``peer`` out of ``room`` on every node, announcing it to presence watchers."""
        del peer.rooms[room]
        self.rooms.discard(room, peer)
        self.metrics.rooms.set(len(self.rooms))
        vacated = await self.broker.leave(room, peer.id)
        self._announce(room, peer.id, "leave")
        for observer in self.observers:
            observer.left(room, peer.id)
            if vacated:
                observer.vacated(room)

    def member_lost(self, room: str, peer_id: str, vacated: bool) -> None:
        """A membership of this node the registry removed later (``NodeHandler.member_lost``).

        Presence watchers get the ``leave`` here and on other nodes. Observers
        heard ``left`` when the hub let the peer go; they hear ``vacated`` if
        this removal emptied the room.
        """
        self._announce_lost(room, peer_id)
        if vacated:
            for observer in self.observers:
                observer.vacated(room)

    def node_lost(self, lost: LostNode) -> None:
        """Node ``lost.node`` died and this node reaped it (``NodeHandler.node_lost``).

        Presence watchers get a ``leave`` for each of its memberships, here
        and on other nodes. Observers hear, for each peer it held, ``offline``
        (``node_lost``) then ``left`` for each of its rooms, as for a peer of
        this node, and ``vacated`` after the last member of each room the
        reap emptied.
        """
        rooms_of: dict[str, list[str]] = {}
        for room, peer_id in lost.memberships:
            rooms_of.setdefault(peer_id, []).append(room)
        remaining = Counter(room for room, _peer in lost.memberships)
        held = set(lost.peers)
        # Members it no longer held (their ids freed or taken since) leave too.
        for peer_id in [*lost.peers, *(p for p in rooms_of if p not in held)]:
            if peer_id in held:
                for observer in self.observers:
                    observer.offline(peer_id, "node_lost", lost_node=lost.node)
            for room in rooms_of.get(peer_id, ()):
                self._announce_lost(room, peer_id)
                remaining[room] -= 1
                for observer in self.observers:
                    observer.left(room, peer_id)
                    if not remaining[room] and room in lost.vacated:
                        observer.vacated(room)

    def rejoined(self, rejoined: Rejoined) -> None:
        """This node was reaped while cut off and registered again (``NodeHandler.rejoined``).

        The node that reaped it told its peers offline (``node_lost``) and out
        of their rooms. Observers hear, for each peer still here, ``online``;
        then ``occupied`` for each room a re-join found empty, just before the
        ``joined`` of that member, and ``joined`` for each membership still
        here. Presence watchers on other nodes get a ``join`` (this node's own
        never heard the leave).
        """
        for peer_id in rejoined.peers:
            peer = self.peers.get(peer_id)
            if peer is not None:
                for observer in self.observers:
                    observer.online(peer_id, resumed=False, meta=peer.meta)
        for room, peer_id, first in rejoined.memberships:
            # A member let go since was told left, and its room's vacated
            # comes when the registry hears of it: the occupied still goes.
            peer = self.peers.get(peer_id)
            member = peer is not None and room in peer.rooms
            if member:
                with suppress(BrokerUnavailable):  # not keeping up: dropped, as any frame is then
                    self._announce(room, peer_id, "join", here=False)
            for observer in self.observers:
                if first:
                    observer.occupied(room)
                if member:
                    observer.joined(room, peer_id)

    def _announce_lost(self, room: str, peer_id: str) -> None:
        with suppress(BrokerUnavailable):  # not keeping up: dropped, as any frame is then
            self._announce(room, peer_id, "leave")


async def _reraise(exc: BaseException) -> None:
    raise exc
