"""Value types shared by the hub, sessions and brokers.

What became of a frame (``Delivery``), who to tell when it never arrives
(``Undelivered``), what waits in a peer's queue and what moves with a peer
between nodes (``Handover``), what a join changed (``Joined``) and what a
node that died left behind (``LostNode``), and what a node reaped while cut
off registered again (``Rejoined``). This module imports nothing of the relay, so
every other module may depend on it and it on none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import NamedTuple

RequestId = int | str  # a request's ``id``, as the peer sent it


class Delivery(Enum):
    """What became of a frame handed to a peer."""

    DELIVERED = "delivered"  # the peer's host acknowledged it (or, without an answer owed, written)
    QUEUED = "queued"  # kept for a peer inside its resume window
    OFFLINE = "offline"  # no session holds that id
    OVERLOADED = "overloaded"  # the peer's queue is full
    PENDING = "pending"  # on its way to a live session: the answer callback tells the rest


# The members again, as module names for the per-message paths: on Python 3.11
# reading a member from its Enum class costs ~90 ns (3.12 made it as cheap as a
# global), and a room's fan-out reads three per member.
DELIVERED = Delivery.DELIVERED
QUEUED = Delivery.QUEUED
OFFLINE = Delivery.OFFLINE
OVERLOADED = Delivery.OVERLOADED
PENDING = Delivery.PENDING


# Who to tell if a frame is never delivered: (sender, request id, listed).
# One serves every target of a request; ``listed`` says whether the ``err``
# names the unreached peer as a list (the request's ``to`` was a list) or as a
# string. A plain tuple on purpose: the garbage collector stops tracking tuples
# of plain values, so the frames every peer keeps for replay cost it nothing,
# where a NamedTuple stays tracked (full collections of 100 ms under fan-out).
Undelivered = tuple[str, RequestId | None, bool]


class Joined(Enum):
    """What ``Broker.join`` did, as the registry saw it."""

    FULL = "full"  # refused: the room has its limit of members
    MEMBER = "member"  # a member: already, moved from another node, or with others in the room
    FIRST = "first"  # the first member: the room had none on any node


class LostNode(NamedTuple):
    """What the registry held for a node that died, as the one reap that removed it found it."""

    node: str
    peers: list[str]  # the ids it held, freed by the reap
    memberships: list[tuple[str, str]]  # (room, peer) it had registered, removed by the reap
    vacated: set[str]  # the rooms the reap left without a member on any node


class Rejoined(NamedTuple):
    """What a node registered again after finding it had been reaped while cut off."""

    peers: list[str]  # the ids it holds, registered again
    memberships: list[
        tuple[str, str, bool]
    ]  # (room, peer, whether its re-join found the room empty)


class Proof(NamedTuple):
    """What a session offers to take over a peer id held elsewhere."""

    secret: str | None  # the resume secret from the peer's last welcome
    verified: bool  # True when a valid token for this very id was presented


QueueEntry = tuple[bytes, str, Undelivered | None]  # frame, kind for metrics, who to tell


Answer = Callable[[Delivery], None]  # told what became of one frame (through a broker, or later)


class Handover(NamedTuple):
    """A peer's state, moved from the node that held it to the one taking over."""

    rooms: dict[str, bool]  # room -> receives presence
    queue: list[QueueEntry]  # not yet written to any socket
    written: list[QueueEntry]  # the replay window of the last socket
    written_count: int
    meta: object = None  # what a decider said of the session (relay.decisions.Admitted)
    granted: tuple[str, ...] | None = None  # the rooms it restricted the session to


# One frame in a peer's queue: the frame, its kind for metrics, who to tell
# if it is never delivered, and who waits for its acknowledgement.
Queued = tuple[bytes, str, Undelivered | None, Answer | None]
