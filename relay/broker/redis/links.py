"""Frames between nodes, each answered exactly once over an at-most-once backplane.

Pub/sub loses what is published while a node is not listening, and an answer
can be lost the same way. So the frames one node sends to another are
numbered on that pair of nodes (a *link*), and the receiving node keeps, per
link, the highest number it has taken or fenced (``top``) and the outcome of
each frame whose answer its sender may still be missing (the *log*):

- frames are taken in order; one numbered at or below ``top`` arrived late
  and is refused, and the numbers a gap skipped are recorded as ``LOST``;
- outcomes go back in *acks*: runs of one-byte codes, gathered per event-loop
  pass and carried, with the deliveries going the other way, in one message
  per destination node;
- a sender missing outcomes (an ack lost, the backplane down) sends a
  *status* query with the highest number it used: the receiver first fences
  (raises ``top`` to it, recording what it never got as ``LOST``), then
  answers with its log from the lowest number the sender still waits for.

So a frame's answer is what became of it, or ``LOST``, which means it never
was and never will be delivered (``err overloaded``: try again). A sender
waits for an answer at most ``give_up_seconds`` (the backplane may stay away
longer than anyone should wait); past that it answers ``overloaded`` without
knowing, and logs it if the receiver later reports the frame delivered. A
frame the receiver answered ``PENDING`` for a live session (its sender waits
for the peer's host to acknowledge it, which takes as long as the peer takes
to read) is not given up on: only the receiver's answer, or its death, ends
that wait.

Senders cache which node holds each peer (a ``Route``, with the *epoch* of
that node's hold, a number it drew when it registered the peer). A node
refuses a frame for a peer it does not hold at that epoch (``MOVED``): the
sender looks the peer up again and sends it there, ahead of anything it was
given for that peer since, so order per sender and target holds across
moves. A frame for a peer whose registration is still in flight here waits
for it (``PENDING``, answered in a later ack).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from relay.broker import wire
from relay.broker.base import NodeHandler
from relay.broker.redis.link_state import (
    CODES,
    DELIVERED,
    DELIVERIES,
    GONE,
    MOVED,
    PENDING,
    QUEUED,
    Inbound,
    Outbound,
    Route,
    Sent,
)
from relay.broker.redis.resp import UNKNOWN, Done
from relay.values import Answer, Delivery, Undelivered

log = logging.getLogger("relay.broker.links")
MAX_MOVES = 3  # a frame whose peer keeps moving is answered overloaded (try again)
# Acks nobody waits on (a send without id, delivered) wait this long for a
# batch going the same way to ride on, rather than cost a publish of their own.
ACK_DELAY = 0.005
_MAX_INBOUND = 4096  # links from other node incarnations remembered at most
# Read per frame: a module name costs a tenth of an Enum member's lookup.
_DELIVERED = Delivery.DELIVERED

Publish = Callable[[str, bytes, Done], None]  # (node, payload, done(receivers or a Fate))
Lookup = Callable[[str], Awaitable["tuple[str, int] | None"]]
Alive = Callable[[str], Awaitable[bool]]
Spawn = Callable[[Coroutine[Any, Any, None]], None]


class Links:
    """Every link of one node: numbering, acks, status queries, routes, fences."""

    def __init__(
        self,
        node: NodeHandler,
        incarnation: str,
        *,
        publish: Publish,
        wake: Callable[[], None],
        lookup: Lookup,
        alive: Alive,
        spawn: Spawn,
        timeout_seconds: float,
        give_up_seconds: float,
        limit: int,
    ) -> None:
        self._node = node
        self._node_id = node.node_id
        self.incarnation = incarnation
        self._publish = publish
        self._wake_flush = wake
        self._lookup = lookup
        self._alive = alive
        self._spawn = spawn
        self._timeout = timeout_seconds
        self._give_up = give_up_seconds
        self._limit = limit
        self.recovering = False  # the cluster view is not back: OFFLINE becomes OVERLOADED
        self.holds: dict[str, int] = {}  # peer -> epoch of this node's hold
        self._arriving: dict[str, list[tuple[Inbound, str, int, bytes, Undelivered | None]]] = {}
        self._routes: dict[str, Route] = {}
        self._out: dict[str, Outbound] = {}
        self._in: dict[str, Inbound] = {}
        self._dirty: set[str] = set()  # nodes with something to flush now
        self._lazy: set[str] = set()  # nodes with only acks that can wait
        self._lazy_scheduled = False
        self._count = 0  # frames waiting for a lookup or an answer
        self._from: dict[str, int] = {}  # sender peer -> its frames not answered yet
        self._settled: dict[str | None, list[asyncio.Future[None]]] = {}
        self.gave_up_delivered = 0  # frames answered overloaded that had been delivered

    # --- sending ------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Frames waiting for a lookup or an answer."""
        return self._count

    def send(
        self, peer: str, frame: bytes, undelivered: Undelivered | None, answer: Answer
    ) -> None:
        """Send ``frame`` to ``peer`` on another node; ``answer`` is told its outcome once."""
        if self._count >= self._limit:
            answer(Delivery.OVERLOADED)
            return
        sent = Sent(peer, frame, undelivered, answer)
        self._count += 1
        if undelivered is not None:
            sender = undelivered[0]
            self._from[sender] = self._from.get(sender, 0) + 1
        route = self._routes.get(peer)
        if route is None:
            route = self._routes[peer] = Route()
            route.waiting = [sent]
            self._spawn(self._find(peer, route))
        elif route.waiting is not None:
            route.waiting.append(sent)
        else:
            self._emit(sent, route)

    def _emit(self, sent: Sent, route: Route) -> None:
        link = self._out.get(route.node)
        if link is None:
            link = self._out[route.node] = Outbound(route.node)
        seq = link.seq = link.seq + 1
        link.pending[seq] = sent
        batch = link.batch
        batch.append((sent.peer, route.epoch, sent.frame, sent.undelivered))
        sent.seq = seq
        sent.route = route
        sent.epoch = route.epoch
        sent.at = time.monotonic()
        route.inflight += 1
        if len(batch) == 1:  # later frames ride on the flush this one asks for
            link.first = seq
            self._mark(route.node)

    async def _find(self, peer: str, route: Route) -> None:
        try:
            route.found = await self._lookup(peer)
        except Exception as exc:
            log.debug("could not look %s up: %s", peer, exc)
            route.found = True  # unknown: what waits is answered overloaded
        self._dispatch(peer, route)

    def _dispatch(self, peer: str, route: Route) -> None:
        """Send what waited for ``route`` once it is found and nothing is in flight on it."""
        if route.found is False or route.inflight or route.waiting is None:
            return
        found = route.found
        # Refused frames come back in the order their acks arrive; all went
        # out on one link before anything now waiting was given.
        frames = sorted(route.returned, key=_seq) + route.waiting
        route.returned = []
        if isinstance(found, tuple) and found[0] != self._node_id:
            route.node, route.epoch = found
            route.waiting = None
            route.found = False
            for sent in frames:
                self._emit(sent, route)
            return
        if self._routes.get(peer) is route:
            del self._routes[peer]
        route.waiting = None
        for sent in frames:
            if isinstance(found, tuple):  # the peer is held here now
                self._deliver_here(peer, sent)
            elif found is None:
                self._answer(sent, self._offline())
            else:
                self._answer(sent, Delivery.OVERLOADED)

    def _deliver_here(self, peer: str, sent: Sent) -> None:
        """``sent`` was meant for another node, but its peer is held here now."""
        undelivered = sent.undelivered
        if undelivered is None or undelivered[1] is None:
            self._answer(sent, self._node.deliver(peer, sent.frame, undelivered))
            return
        answer = functools.partial(self._answer, sent)
        delivery = self._node.deliver(peer, sent.frame, undelivered, answer)
        if delivery is not Delivery.PENDING:
            self._answer(sent, delivery)

    def _offline(self) -> Delivery:
        # Until every node is back after an outage, a peer that no node
        # holds may belong to one that has not registered again yet.
        return Delivery.OVERLOADED if self.recovering else Delivery.OFFLINE

    def _answer(self, sent: Sent, delivery: Delivery) -> None:
        self._count -= 1
        undelivered = sent.undelivered
        if undelivered is not None:
            sender = undelivered[0]
            left = self._from[sender] - 1
            if left:
                self._from[sender] = left
            else:
                del self._from[sender]
                self._wake(sender)
        if not self._count:
            self._wake(None)
        try:
            sent.answer(delivery)
        except Exception:
            log.exception("answering a cross-node send failed")

    def _resolve(self, link: Outbound, seq: int, code: int) -> None:
        """The receiver's outcome for frame ``seq`` of ``link``."""
        if code == PENDING:
            sent = link.pending.get(seq)
            if sent is not None:
                sent.accepted = True
            return
        sent = link.pending.pop(seq, None)
        if sent is None:  # answered already (a repeated ack, or given up on)
            if link.given_up and seq in link.given_up:
                link.given_up.discard(seq)
                if code in (DELIVERED, QUEUED):
                    self.gave_up_delivered += 1
                    log.error("a frame to node %s answered overloaded had been delivered",
                              link.node)  # fmt: skip
            return
        if code == MOVED:
            self._moved(sent)
            return
        self._land(sent)
        if code < MOVED:
            self._answer(sent, DELIVERIES[code])
        else:
            self._answer(sent, Delivery.OFFLINE if code == GONE else Delivery.OVERLOADED)

    def _land(self, sent: Sent) -> None:
        route = sent.route
        assert route is not None
        route.inflight -= 1
        if route.waiting is not None and not route.inflight:
            self._dispatch(sent.peer, route)

    def _moved(self, sent: Sent) -> None:
        """The node ``sent`` went to does not hold its peer (any more): find it again."""
        peer = sent.peer
        route = self._routes.get(peer)
        sent.moves += 1
        if sent.moves > MAX_MOVES or route is None or route is not sent.route:
            # Moving too often, or its route was dropped (its node went away)
            # and newer frames may have gone another way since: sending it
            # now could overtake them.
            self._land(sent)
            self._answer(sent, Delivery.OVERLOADED)
            return
        if route.waiting is None:
            route.waiting = []
            self._spawn(self._find(peer, route))
        # Returned before it lands: the route sends nothing on until every
        # frame still out on the old node is back or answered.
        route.returned.append(sent)
        self._land(sent)

    def _mark(self, node: str, urgent: bool = True) -> None:
        if urgent:
            self._dirty.add(node)
            self._wake_flush()
        else:
            self._lazy.add(node)
            if not self._lazy_scheduled:
                self._lazy_scheduled = True
                asyncio.get_running_loop().call_later(ACK_DELAY, self._flush_lazy)

    def _flush_lazy(self) -> None:
        self._lazy_scheduled = False
        if self._lazy:
            self._dirty |= self._lazy
            self._wake_flush()

    def flush(self) -> None:
        """Publish what gathered for each node: deliveries and acks, one message per node.

        ``wake`` asks for this to be called once the current event-loop pass is over.
        """
        dirty, self._dirty = self._dirty, set()
        self._lazy -= dirty
        for node in dirty:
            link = self._out.get(node)
            batch: list[wire.Carried] = []
            first = low = 0
            if link is not None and link.batch:
                batch, link.batch = link.batch, []
                first = link.first
                low = link.low()
            acks = None
            inbound = self._in.get(node)
            if inbound is not None and inbound.runs:
                acks = (inbound.incarnation, inbound.runs)
                inbound.runs = []
            if not batch and acks is None:
                continue
            payload = wire.encode_batch(self._node_id, self.incarnation, low, first, batch, acks)
            self._publish(node, payload, self._published(node, first, len(batch)))

    def _published(self, node: str, first: int, count: int) -> Done:
        def done(receivers: Any) -> None:
            if not count or receivers is UNKNOWN or (isinstance(receivers, int) and receivers > 0):
                return  # received, or unknown: the acks or a status query will tell
            link = self._out.get(node)
            if receivers == 0:
                # Nobody listens on the node's channel: it is gone (or not back yet).
                self._forget_node(node)
                delivery = self._offline()
            else:
                delivery = Delivery.OVERLOADED  # never sent, or refused by Redis
            for seq in range(first, first + count):
                sent = link.pending.pop(seq, None) if link is not None else None
                if sent is not None:
                    self._land(sent)
                    self._answer(sent, delivery)

        return done

    def _forget_node(self, node: str) -> None:
        for peer, route in list(self._routes.items()):
            if route.waiting is None and route.node == node:
                del self._routes[peer]

    # --- receiving ----------------------------------------------------------------

    def received(self, batch: wire.Batch) -> None:
        """A message from another node: acks for this node's frames, and frames for its peers."""
        node = batch.node
        if batch.acks is not None:
            incarnation, runs = batch.acks
            link = self._out.get(node)
            if link is not None and incarnation == self.incarnation:
                pending = link.pending
                for first, codes in runs:
                    seq = first
                    for code in codes:
                        sent = pending.pop(seq, None) if code == DELIVERED else None
                        if sent is not None:  # the common case, inline
                            self._land(sent)
                            self._answer(sent, _DELIVERED)
                        else:
                            self._resolve(link, seq, code)
                        seq += 1
        if not batch.deliveries:
            return
        inbound = self._inbound(node, batch.incarnation, batch.low)
        inbound.trim(batch.low)
        deliveries = batch.deliveries
        late = inbound.take(batch.first, len(deliveries))
        if late:
            log.info("refused %d late frames from %s", late, node)
            if late == len(deliveries):
                return
            deliveries = deliveries[late:]
        seq = batch.first + late
        holds = self.holds
        arriving = self._arriving
        deliver = self._node.deliver
        outcomes = bytearray()
        urgent = False  # an ack somebody waits on: a request id, or news other than delivered
        for peer, epoch, frame, undelivered in deliveries:
            if holds.get(peer) != epoch:
                code = MOVED
            elif arriving and peer in arriving:
                arriving[peer].append((inbound, node, seq + len(outcomes), frame, undelivered))
                code = PENDING
            elif undelivered is None or undelivered[1] is None:
                delivery = deliver(peer, frame, undelivered)
                code = DELIVERED if delivery is _DELIVERED else CODES[delivery]
            else:  # its sender waits for the acknowledgement
                answer = self._later(inbound, node, seq + len(outcomes))
                code = CODES[deliver(peer, frame, undelivered, answer)]
            outcomes.append(code)
            if code == PENDING:
                continue  # the ack that matters comes when it is resolved
            if code or (undelivered is not None and undelivered[1] is not None):
                urgent = True
        inbound.record(seq, outcomes)
        self._mark(node, urgent)

    def _later(self, inbound: Inbound, node: str, seq: int) -> Answer:
        """The answer for frame ``seq`` of ``node``'s link, recorded PENDING until called."""

        def answer(delivery: Delivery) -> None:
            inbound.resolve(seq, CODES[delivery])
            self._mark(node)

        return answer

    def status(self, query: wire.Status) -> None:
        """Another node asks what became of its frames: fence, then report."""
        inbound = self._inbound(query.node, query.incarnation, query.low)
        inbound.fence(query.up_to)
        inbound.trim(query.low)
        inbound.report(query.low)
        self._mark(query.node)

    def _inbound(self, node: str, incarnation: str, low: int) -> Inbound:
        inbound = self._in.get(node)
        if inbound is None or inbound.incarnation != incarnation:
            if inbound is None and len(self._in) >= _MAX_INBOUND:
                del self._in[next(iter(self._in))]
            inbound = self._in[node] = Inbound(incarnation, low)
        return inbound

    # --- holds --------------------------------------------------------------------

    def arriving(self, peer: str) -> None:
        """``peer`` is being registered here: frames for it wait until ``arrived``."""
        self._arriving.setdefault(peer, [])

    def arrived(self, peer: str) -> None:
        """Registration of ``peer`` finished (the hub holds it now, or it failed)."""
        parked = self._arriving.pop(peer, None)
        for inbound, node, seq, frame, undelivered in parked or ():
            if peer not in self.holds:
                code = MOVED
            elif undelivered is None or undelivered[1] is None:
                code = CODES[self._node.deliver(peer, frame, undelivered)]
            else:
                answer = self._later(inbound, node, seq)
                code = CODES[self._node.deliver(peer, frame, undelivered, answer)]
            if code != PENDING:
                inbound.resolve(seq, code)
                self._mark(node)

    async def settled(self, sender: str | None = None) -> None:
        """Wait until every frame ``sender`` (None: anyone) sent has its answer."""
        if not self._count if sender is None else sender not in self._from:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._settled.setdefault(sender, []).append(waiter)
        await waiter

    def _wake(self, sender: str | None) -> None:
        for waiter in self._settled.pop(sender, ()):
            if not waiter.done():
                waiter.set_result(None)

    # --- time ---------------------------------------------------------------------

    def tick(self, connected: bool) -> None:
        """Ask about frames whose answers are late; give up on those past the bound."""
        now = time.monotonic()
        for link in list(self._out.values()):
            if any(now - s.at > self._give_up and not s.accepted for s in link.pending.values()):
                self._give_up_on(link, now)
            late = bool(link.pending) and now - next(iter(link.pending.values())).at > self._timeout
            if connected and (late or link.fence_due) and now - link.asked > self._timeout:
                link.asked = now
                self._ask(link)

    def reconnected(self) -> None:
        """The backplane is back: ask about every frame still waiting, now."""
        for link in self._out.values():
            link.asked = 0.0
        self.tick(True)

    def _give_up_on(self, link: Outbound, now: float) -> None:
        expired = [
            seq
            for seq, sent in link.pending.items()
            if now - sent.at > self._give_up and not sent.accepted
        ]
        for seq in expired:
            sent = link.pending.pop(seq)
            link.given_up.add(seq)
            self._land(sent)
            self._answer(sent, Delivery.OVERLOADED)
        log.warning("%d frames to node %s answered overloaded: no word from it", len(expired),
                    link.node)  # fmt: skip
        link.fence_due = True

    def _ask(self, link: Outbound) -> None:
        self.flush()  # numbered frames not out yet go first, or the query would fence them
        payload = wire.encode_status(self._node_id, self.incarnation, link.seq, link.low())
        node = link.node

        def done(receivers: Any) -> None:
            if isinstance(receivers, int) and receivers > 0:
                link.fence_due = False
            elif receivers == 0:
                self._spawn(self._check(node))

        self._publish(node, payload, done)

    async def _check(self, node: str) -> None:
        """A node does not listen: if its lease is gone too, it is dead."""
        try:
            if self.recovering or await self._alive(node):
                return  # reconnecting (or may be): ask again later
        except Exception:
            return  # cut off ourselves: ask again later
        link = self._out.get(node)
        self._forget_node(node)
        if link is None:
            return
        pending, link.pending = link.pending, {}
        link.fence_due = False
        link.given_up.clear()  # it will never report them
        for sent in pending.values():
            self._land(sent)
            self._answer(sent, Delivery.OFFLINE)

    def close(self) -> None:
        """The node stops: everything still waiting is answered overloaded."""
        for link in self._out.values():
            pending, link.pending = link.pending, {}
            link.batch = []
            for sent in pending.values():
                self._answer(sent, Delivery.OVERLOADED)
        routes, self._routes = self._routes, {}
        for route in routes.values():
            for sent in route.returned + (route.waiting or []):
                self._answer(sent, Delivery.OVERLOADED)
            route.returned, route.waiting = [], None


def _seq(sent: Sent) -> int:
    return sent.seq
