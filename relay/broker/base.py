"""The ``Broker`` seam and the callbacks a node offers to it.

A broker knows which node holds each peer id and which nodes have members in
each room, and carries frames between nodes. Frames are opaque bytes already
encoded for the receiving peer; a broker never decodes payloads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from relay.values import (
    Answer,
    Delivery,
    Handover,
    Joined,
    LostNode,
    Proof,
    Rejoined,
    Undelivered,
)

RequestHandler = Callable[[bytes], Awaitable[bytes]]  # a request's body -> the reply's

# Requests one node may wait on replies for at once (``Broker.request``);
# past it a request is refused at once rather than pile up.
MAX_PENDING_REQUESTS = 1024


class BrokerUnavailable(Exception):
    """The backplane cannot be reached now; the caller answers without waiting."""


class NodeUnreachable(BrokerUnavailable):
    """The node a request went to gave no reply: not alive, too busy, or not in time."""


class RequestFailed(Exception):
    """The node a request went to refused it: it serves no such kind, or its handler raised."""


class NodeHandler(Protocol):
    """What a broker calls back on the node it serves (the hub)."""

    node_id: str

    def deliver(
        self,
        peer_id: str,
        frame: bytes,
        undelivered: Undelivered | None,
        answer: Answer | None = None,
    ) -> Delivery:
        """Hand ``frame`` to a peer held by this node.

        With ``answer``, a frame written to a live socket is answered once
        the peer's host has acknowledged it (``PENDING`` is returned, and
        ``answer`` called later, exactly once); without, writing it counts.
        """
        ...

    def deliver_room(
        self, room: str, frame: bytes, exclude: str | None, presence_only: bool
    ) -> None:
        """Queue ``frame`` for this node's members of ``room``."""
        ...

    async def hand_over(self, peer_id: str, proof: Proof) -> Handover | None:
        """Give up ``peer_id`` (closing its socket 4503) if ``proof`` is good."""
        ...

    def member_lost(self, room: str, peer_id: str, vacated: bool) -> None:
        """The registry removed this node's member ``peer_id`` from ``room`` later: announce it.

        A broker never builds frames, so it leaves the announcement (presence
        ``leave`` to the room's members here and, with ``Broker.publish``, on
        the other nodes) to the node. It calls this once in the cluster for
        each membership of this node it removes on its own: when the node
        closes, and those this node let go while the backplane was down
        (their leave could not reach the other nodes then). The hub had
        already let them go, and its observers heard them leave; ``vacated``
        says that this removal left ``room`` without a member on any node.
        It never raises.
        """
        ...

    def node_lost(self, lost: LostNode) -> None:
        """Node ``lost.node`` died, and this node removed what it held from the registry.

        Called on exactly one node of the cluster per node that died: the one
        whose reap removed it. The node announces the memberships as it does
        in ``member_lost``, and tells its observers the peers are gone. It
        never raises.
        """
        ...

    def rejoined(self, rejoined: Rejoined) -> None:
        """This node was reaped while cut off (``node_lost`` elsewhere) and registered again.

        Called once the node serves again, with the peers it still holds and
        their memberships, each saying whether its re-join found the room
        empty. The node tells its observers they are back, and the other
        nodes' members of their rooms. It never raises.
        """
        ...


class Broker(Protocol):
    """Everything a hub needs from the rest of the cluster.

    Any method may raise ``BrokerUnavailable`` when the backplane is down;
    it must do so promptly rather than wait or buffer without bound.
    """

    @property
    def ready(self) -> bool:
        """Whether the backplane is connected and serving (for /readyz)."""
        ...

    async def start(self, node: NodeHandler) -> None:
        """Begin serving ``node``: deliveries for its peers reach it from now on."""
        ...

    async def close(self) -> None:
        """Stop serving the node and forget what it registered."""
        ...

    async def claim(self, peer_id: str) -> str | None:
        """Register ``peer_id`` on this node unless another holds it.

        Returns None when the claim succeeded, else the holding node's id.
        """
        ...

    async def release(self, peer_id: str) -> None:
        """Forget that this node holds ``peer_id``."""
        ...

    async def other_nodes(self) -> int:
        """How many other live nodes serve the cluster (where peers can move to)."""
        ...

    async def serving_nodes(self) -> list[str]:
        """The ids of the other nodes serving now (for an operator's view of the cluster)."""
        ...

    async def locate(self, peer_id: str) -> str | None:
        """The id of the node holding ``peer_id``, or None when no node does."""
        ...

    async def take_over(self, peer_id: str, holder: str, proof: Proof) -> Handover | None:
        """Move ``peer_id`` from node ``holder`` to this one, if ``proof`` convinces it.

        On success this node holds the id from then on.
        """
        ...

    def send(
        self,
        peer_id: str,
        frame: bytes,
        undelivered: Undelivered | None,
        answer: Answer,
    ) -> None:
        """Deliver ``frame`` to a peer held by another node, without waiting.

        ``answer`` is called exactly once with what became of the frame: at
        once (offline, or the backplane is down: overloaded) or when the
        holder's node has answered. It never raises. Frames one node sends
        to one peer arrive in the order of the calls.
        """
        ...

    def publish(self, room: str, frame: bytes, exclude: str | None, presence_only: bool) -> None:
        """Deliver ``frame`` to the members of ``room`` on other nodes, without waiting.

        Ordered with ``send``; raises ``BrokerUnavailable`` at once when the
        frame cannot go out.
        """
        ...

    async def join(self, room: str, peer_id: str, limit: int) -> Joined:
        """Record ``peer_id`` as a member of ``room``, unless it already has ``limit``.

        ``Joined.FIRST`` when the room had no member on any node: of joins on
        several nodes at once, exactly one is first. A peer moving from
        another node (a handover) is ``MEMBER``: the room never was empty.
        """
        ...

    async def leave(self, room: str, peer_id: str) -> bool:
        """Remove ``peer_id`` from ``room``; True when that left it without a member on any node.

        Of leaves on several nodes at once, at most one is last. False too
        when the backplane could not be told now: the broker removes the
        membership later, and says then whether that emptied the room
        (``NodeHandler.member_lost``).
        """
        ...

    async def members(self, room: str) -> list[str]:
        """The members of ``room`` on every node."""
        ...

    def serve(self, kind: str, handler: RequestHandler) -> None:
        """Answer requests of ``kind`` (a short name) from any node, this one too, with ``handler``.

        ``handler`` takes the request's body and returns the reply's, both
        opaque bytes the caller encodes. It is cancelled once the requester
        stops waiting; if it raises, the requester gets ``RequestFailed`` and
        this node logs the error. Serving a kind again replaces its handler.
        """
        ...

    async def request(
        self,
        node_id: str,
        kind: str,
        body: bytes,
        timeout: float,  # noqa: ASYNC109 - it travels: the node asked bounds its handler by it
    ) -> bytes:
        """Ask node ``node_id``'s handler of ``kind``: its reply, within ``timeout`` seconds.

        Raises ``BrokerUnavailable`` at once when the backplane is down or
        ``MAX_PENDING_REQUESTS`` requests wait already (and when it goes down
        meanwhile); ``NodeUnreachable`` when the node is not alive, is
        running as many handlers as it may, or gave no reply within
        ``timeout``; ``RequestFailed`` when it serves no ``kind`` or its
        handler raised.
        """
        ...
