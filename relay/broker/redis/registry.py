"""The registry: which node holds each peer id, and the members of each room.

This node's own view (the ids it holds with the epoch of each hold, in
``links.holds``; its rooms' members) is the truth it serves from. The
registry in Redis is kept in step with it: at each change while the
backplane is up, and from it after an outage (``register``, ``reconcile``),
because what a node could not tell Redis while cut off (a release, a leave)
never fails for the hub.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import relay.broker.redis.scripts as scripts
from relay.broker.base import BrokerUnavailable
from relay.broker.redis.commands import Commands, pairs, text
from relay.broker.redis.links import Links
from relay.broker.redis.scripts import Keys
from relay.values import Handover, Joined, LostNode, Rejoined

log = logging.getLogger("relay.broker.redis")

_JOINED = (Joined.FULL, Joined.MEMBER, Joined.FIRST)  # by the JOIN script's answer
_LEFT_EMPTY = 2  # the LEAVE script's answer when the room has no member left

LostMember = tuple[str, str, bool]  # room, peer, whether its removal emptied the room


class Registry:
    """What this node holds, and its registration in Redis."""

    def __init__(
        self,
        node_id: str,
        keys: Keys,
        commands: Commands,
        links: Links,
        *,
        lease_ms: int,
        lost: Callable[[str], None],
    ) -> None:
        self._node_id = node_id
        self._keys = keys
        self._commands = commands
        self._links = links
        self._lease_ms = lease_ms
        self._lost = lost  # a peer another node took while this one was cut off
        self._epoch = time.time_ns() // 1000  # grows across restarts of a node
        # What this node holds, to re-register after Redis lost it.
        self.rooms: dict[str, set[str]] = {}
        self.dirty = False  # the registry may hold what this node let go
        # A reap removed this node (its lease ended while it was cut off) and
        # nobody has heard it register again yet: ``take_rejoined``.
        self.reaped = False
        self._firsts: set[tuple[str, str]] = set()  # re-joins, since, that found a room empty

    @property
    def holds(self) -> dict[str, int]:
        """The peer ids this node holds -> the epoch of each hold."""
        return self._links.holds

    def _key(self, kind: str, name: str) -> str:
        return self._keys.key(kind, name)

    def _next_epoch(self) -> int:
        self._epoch += 1
        return self._epoch

    # --- peers ---------------------------------------------------------------

    async def claim(self, peer_id: str) -> str | None:
        # Held before Redis answers, so that a concurrent reconcile never
        # takes a claim in flight for a stale entry, and frames routed here
        # with the new epoch wait for the hub to have the peer.
        holds = self.holds
        previous = holds.get(peer_id)
        epoch = holds[peer_id] = self._next_epoch()
        links = self._links
        links.arriving(peer_id)
        try:
            holder = await self._commands.call(
                "EVAL", scripts.CLAIM, 1, self._key("peer", peer_id),
                self._node_id, self._keys.prefix, peer_id, epoch, "0",
            )  # fmt: skip
        except BrokerUnavailable:
            self._restore(peer_id, epoch, previous)
            raise
        if holder is not None:
            self._restore(peer_id, epoch, previous)
            return text(holder)
        # The hub registers the peer as soon as this returns, before the
        # loop runs anything else: frames that waited go to it after that.
        asyncio.get_running_loop().call_soon(links.arrived, peer_id)
        return None

    def _restore(self, peer_id: str, epoch: int, previous: int | None) -> None:
        holds = self.holds
        if holds.get(peer_id) == epoch:
            if previous is None:
                del holds[peer_id]
            else:
                holds[peer_id] = previous
        self._links.arrived(peer_id)

    async def release(self, peer_id: str) -> None:
        # Forgetting never fails: what the registry could not be told now is
        # put right from this node's own state when it can (``reconcile``).
        self.holds.pop(peer_id, None)
        try:
            await self._commands.call(
                "EVAL", scripts.RELEASE, 1, self._key("peer", peer_id),
                self._node_id, self._keys.prefix, peer_id,
            )  # fmt: skip
        except BrokerUnavailable:
            self.dirty = True

    def post_release(self, peer_id: str) -> None:
        """Free an id the registry names this node for, without waiting."""
        self._commands.post(
            "EVAL", scripts.RELEASE, 1, self._key("peer", peer_id),
            self._node_id, self._keys.prefix, peer_id,
        )  # fmt: skip

    async def other_nodes(self) -> int:
        try:
            count = await self._commands.call(
                "EVAL", scripts.OTHER_NODES, 0, self._keys.prefix, self._node_id
            )
        except BrokerUnavailable:
            return 0  # none that a peer could be handed to from here
        return int(count)

    async def lookup(self, peer_id: str) -> tuple[str, int] | None:
        """The node holding ``peer_id`` and the epoch of its hold, if that node is alive."""
        found = await self._commands.call(
            "EVAL", scripts.LOCATE, 1, self._key("peer", peer_id), self._keys.prefix, peer_id
        )
        if not found:
            return None
        node, epoch = found
        return text(node), int(epoch)

    async def alive(self, node_id: str) -> bool:
        return bool(await self._commands.call("EXISTS", self._key("alive", node_id)))

    async def took(self, peer_id: str, holder: str, handover: Handover) -> None:
        """Hold ``peer_id``, handed over by ``holder``, and its rooms."""
        # The peer is ours now, whatever happens next: its state must not be
        # lost. Should the registry be unreachable, the reconnect registers it.
        epoch = self.holds[peer_id] = self._next_epoch()
        links = self._links
        links.arriving(peer_id)
        for room in handover.rooms:
            self.rooms.setdefault(room, set()).add(peer_id)
        try:
            await self._commands.call(
                "EVAL", scripts.TAKE, 1, self._key("peer", peer_id),
                self._node_id, self._keys.prefix, peer_id, holder, epoch,
            )  # fmt: skip
            for room in handover.rooms:
                await self.join(room, peer_id, -1)
        except BrokerUnavailable:
            log.warning("took over %s but could not register it yet", peer_id)
        # As in claim: the hub has the peer before anything else runs.
        asyncio.get_running_loop().call_soon(links.arrived, peer_id)

    def gave(self, peer_id: str, rooms: dict[str, bool]) -> None:
        """``peer_id`` was handed over to another node, with ``rooms``."""
        self.holds.pop(peer_id, None)
        for room in rooms:
            self._forget_membership(room, peer_id)

    # --- rooms ---------------------------------------------------------------

    async def join(self, room: str, peer_id: str, limit: int) -> Joined:
        members = self.rooms.setdefault(room, set())
        fresh = peer_id not in members
        members.add(peer_id)  # before Redis answers, as in claim()
        joined = Joined.FULL
        try:
            result = await self._commands.call(
                "EVAL", scripts.JOIN, 2, self._key("room", room), self._key("roomnodes", room),
                self._node_id, peer_id, limit, self._keys.prefix, room,
            )  # fmt: skip
            joined = _JOINED[int(result)]
        finally:
            if fresh and joined is Joined.FULL:
                self._forget_membership(room, peer_id)
        return joined

    async def leave(self, room: str, peer_id: str) -> bool:
        """Leave ``room``; True when that left it without a member on any node."""
        self._forget_membership(room, peer_id)
        try:
            result = await self._commands.call(
                "EVAL", scripts.LEAVE, 2, self._key("room", room), self._key("roomnodes", room),
                self._node_id, peer_id, self._keys.prefix, room,
            )  # fmt: skip
        except BrokerUnavailable:
            self.dirty = True  # left later by reconcile, which tells whether it emptied the room
            return False
        return int(result) == _LEFT_EMPTY

    async def members(self, room: str) -> list[str]:
        found = await self._commands.call(
            "EVAL", scripts.MEMBERS, 1, self._key("room", room), self._keys.prefix
        )
        return sorted(text(member) for member in found)

    def _forget_membership(self, room: str, peer_id: str) -> None:
        members = self.rooms.get(room)
        if members is not None:
            members.discard(peer_id)
            if not members:
                del self.rooms[room]

    # --- the node ------------------------------------------------------------

    async def renew(self, state: bytes) -> None:
        """Renew the node's lease: ``0`` while it registers, ``1`` once it serves.

        Sets ``reaped`` when a reap removed the node since its last renewal.
        """
        reaped = await self._commands.raw(
            "EVAL", scripts.RENEW, 0, self._keys.prefix, self._node_id, state, self._lease_ms
        )
        if int(reaped):
            self.reaped = True

    async def register(self) -> list[LostMember]:
        """Register the node, and again every peer and membership it holds.

        After an outage the registry may hold less (Redis restarted empty) or
        more (a release or leave that failed while it was unreachable) than
        this node holds: both are put right. Returns the memberships that are
        no longer here, to be announced as gone.
        """
        raw = self._commands.raw
        await self.renew(b"0")
        self.dirty = False
        stale = await self.reconcile()
        for peer_id, epoch in list(self.holds.items()):
            holder = await raw(
                "EVAL", scripts.CLAIM, 1, self._key("peer", peer_id),
                self._node_id, self._keys.prefix, peer_id, epoch, "1",
            )  # fmt: skip
            if holder is not None:
                # Another node took the id while this one was cut off: it wins.
                log.warning("%s was taken by %s during an outage", peer_id, text(holder))
                self.holds.pop(peer_id, None)
                for members in self.rooms.values():
                    members.discard(peer_id)
                self._lost(peer_id)
        for room, members in list(self.rooms.items()):
            for peer_id in list(members):
                result = await raw(
                    "EVAL", scripts.JOIN, 2, self._key("room", room), self._key("roomnodes", room),
                    self._node_id, peer_id, -1, self._keys.prefix, room,
                )  # fmt: skip
                if self.reaped and _JOINED[int(result)] is Joined.FIRST:
                    self._firsts.add((room, peer_id))
        return stale

    def take_rejoined(self) -> Rejoined | None:
        """What this node registered again since a reap removed it (None: not reaped).

        Taken once, when the node serves again: ``reaped`` is cleared. The
        memberships whose re-join found their room empty come first, with
        those let go since (their room's ``vacated`` is told when the registry
        hears of the leave).
        """
        if not self.reaped:
            return None
        self.reaped = False
        firsts, self._firsts = self._firsts, set()
        current = [(room, peer) for room, members in self.rooms.items() for peer in members]
        memberships = [(room, peer, True) for room, peer in sorted(firsts)]
        memberships += [(room, peer, False) for room, peer in current if (room, peer) not in firsts]
        return Rejoined(list(self.holds), memberships)

    async def reconcile(self) -> list[LostMember]:
        """Drop what the registry holds for this node that the node no longer has.

        Returns the memberships removed, to be announced as presence leave,
        each with whether its removal emptied the room.
        """
        raw = self._commands.raw
        stale: list[LostMember] = []
        registered = await raw("HKEYS", self._key("held", self._node_id))
        for peer_id in {text(item) for item in registered} - self.holds.keys():
            await raw(
                "EVAL", scripts.RELEASE, 1, self._key("peer", peer_id),
                self._node_id, self._keys.prefix, peer_id,
            )  # fmt: skip
        rooms = await raw("SMEMBERS", self._key("rooms", self._node_id))
        for room in {text(item) for item in rooms}:
            entries: dict[bytes, bytes] = await raw("HGETALL", self._key("room", room))
            for peer_id, node in ((text(k), text(v)) for k, v in entries.items()):
                if node == self._node_id and peer_id not in self.rooms.get(room, ()):
                    left = await raw(
                        "EVAL", scripts.LEAVE, 2,
                        self._key("room", room), self._key("roomnodes", room),
                        self._node_id, peer_id, self._keys.prefix, room,
                    )  # fmt: skip
                    if int(left):  # not left meanwhile by another node's join of the peer
                        stale.append((room, peer_id, int(left) == _LEFT_EMPTY))
        return stale

    async def reap(self) -> list[LostNode]:
        """Remove every other node whose lease is gone; returns what each held.

        The script removes a node from the node set as it removes what the
        node held, so each dead node comes back from one reap in the cluster.
        """
        reaped = await self._commands.raw(
            "EVAL", scripts.REAP, 0, self._keys.prefix, self._node_id, ""
        )
        return lost_nodes(reaped)

    async def serving(self, min_lease_ms: int) -> set[str]:
        """The other nodes serving now: listening, with ``min_lease_ms`` of lease left at least."""
        found = await self._commands.raw(
            "EVAL", scripts.SERVING, 0, self._keys.prefix, self._node_id, min_lease_ms
        )
        return {text(node) for node in found}

    async def unregister(self) -> list[LostMember]:
        """Remove this node (as it closes); returns the memberships removed with it."""
        pool = self._commands.pool
        assert pool is not None
        reaped = await pool.eval(scripts.REAP, 0, self._keys.prefix, self._node_id, self._node_id)
        await pool.delete(self._key("alive", self._node_id))
        removed: list[LostMember] = []
        for lost in lost_nodes(reaped):
            lasts = _lasts(lost.memberships)
            removed += [
                (room, peer_id, last and room in lost.vacated)
                for (room, peer_id), last in zip(lost.memberships, lasts, strict=True)
            ]
        return removed


def lost_nodes(reply: object) -> list[LostNode]:
    """The REAP script's answer: what each node it removed held."""
    found = []
    for node, peers, memberships, vacated in reply if isinstance(reply, list) else []:
        found.append(
            LostNode(
                text(node),
                [text(peer) for peer in peers],
                pairs(memberships),
                {text(room) for room in vacated},
            )
        )
    return found


def _lasts(memberships: list[tuple[str, str]]) -> list[bool]:
    """For each membership, whether it is the last one of its room in the list."""
    seen: set[str] = set()
    lasts: list[bool] = []
    for room, _peer in reversed(memberships):
        lasts.append(room not in seen)
        seen.add(room)
    return lasts[::-1]
