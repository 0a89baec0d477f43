"""Session events, for whoever wants to hear them (webhooks, an admin view, tests).

A ``SessionObserver`` is told when a peer id comes online or goes offline
for good, joins or leaves a room, is refused, or has its connection closed by
the relay, and when a room gets its first member or loses its last one on any
node. The hub calls every observer in ``Hub.observers`` synchronously, from
the event loop, at the moment the event happens; an observer must not block
(queue the event and send it elsewhere). Events are never per message,
so a node with no observer pays nothing for them.
"""

from __future__ import annotations


class SessionObserver:
    """Override the events you want; the others do nothing."""

    def online(self, peer_id: str, *, resumed: bool, meta: object = None) -> None:
        """``peer_id`` registered on this node (``resumed``: it took over a kept session).

        Also a peer told offline (``node_lost``) by another node while this
        one was cut off, and registered again now that it is back.

        ``meta``: what the decider (``relay.decisions``) said of its session, or None.
        """

    def offline(self, peer_id: str, reason: str, *, lost_node: str | None = None) -> None:
        """``peer_id`` is gone for good from this node (not kept for a resume, or its window ended).

        ``reason``: ``closed`` (the client said goodbye or the relay closed it
        for good), ``expired`` (its resume window ended), ``drained`` (the
        node shut down), ``moved`` (another node took the session over), or
        ``node_lost``: ``lost_node``, the node that held it, died, and this
        node is the one that removed what it held.
        """

    def joined(self, room: str, peer_id: str) -> None:
        """``peer_id`` joined ``room`` (from this node)."""

    def left(self, room: str, peer_id: str) -> None:
        """``peer_id`` left ``room``: a ``leave``, going offline, an operator, or its node died."""

    def occupied(self, room: str) -> None:
        """``room`` had no member on any node, and this node's join is its first.

        Told before ``joined``, by one node only: the one whose join the
        registry found the room empty for.
        """

    def vacated(self, room: str) -> None:
        """``room`` has no member left on any node (after the ``left`` that emptied it).

        Told by one node only: the one whose leave (or reap of a dead node)
        emptied the room in the registry; a leave the registry could not be
        told at once is told when it is (``NodeHandler.member_lost``).
        """

    def refused(self, peer_id: str | None, code: str, message: str) -> None:
        """A request of ``peer_id`` (None: an unnamed ``hello``) was refused with ``code``."""

    def closed(self, peer_id: str | None, code: int, message: str, label: str) -> None:
        """The relay is closing a connection with ``code`` and ``message`` (``label``: metrics)."""
