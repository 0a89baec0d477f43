"""Operator commands: look at one peer, disconnect it, take it out of a room.

What an admin view or an operator's tool needs from a node, in one place.
``inspect`` is cheap (it reads what the peer keeps anyway) and allocates
nothing ahead of being asked; ``inspect_anywhere`` finds the peer's node and,
when it is another, asks that node over the broker (``Broker.request``; each
node answers once ``serve`` was called, as the app factory does).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import msgpack

from relay.broker.base import RequestFailed
from relay.hub import Hub
from relay.session import Session

INSPECT = "peer-state"  # the kind of request one node's operator asks another


@dataclass(frozen=True, slots=True)
class PeerState:
    """One peer as this node holds it (the admin page shows every field)."""

    peer_id: str
    node: str
    connected: bool  # a live connection is attached (False: resuming)
    closing: int | None  # the close code the relay is closing its connection with
    rooms: dict[str, bool]  # room -> receives presence
    queue_messages: int  # waiting for its connection (full, or resuming)
    queue_bytes: int
    replay_frames: int  # kept for a resume
    awaiting_acks: int  # frames whose senders wait for the peer's host to acknowledge them
    owed_answers: int  # requests of this peer answered later
    rate_tokens: float | None  # requests the rate limit would take now (None: not connected)
    connected_seconds: float | None  # since its socket was accepted (None: not connected)
    received_envelopes: int | None  # on its connection so far (None: not connected)
    errors_sent: int | None  # err envelopes written to its connection so far
    resume_seconds_left: float | None  # until the resume window ends (None: connected)


class Operator:
    """Operator commands on one node's peers."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def serve(self) -> None:
        """Answer other nodes' ``inspect_anywhere`` about this node's peers."""
        self.hub.broker.serve(INSPECT, self._answer_inspect)

    async def _answer_inspect(self, body: bytes) -> bytes:
        state = self.inspect(body.decode())
        reply: bytes = msgpack.packb(None if state is None else dataclasses.asdict(state))
        return reply

    async def inspect_anywhere(self, peer_id: str, timeout: float = 1.0) -> PeerState | None:  # noqa: ASYNC109
        """The state of ``peer_id`` on whichever node holds it, or None when none does.

        Raises ``relay.broker.BrokerUnavailable`` (``NodeUnreachable`` when
        that node does not answer within ``timeout``) or ``RequestFailed``.
        """
        node = await self.hub.broker.locate(peer_id)
        if node is None:
            return None
        if node == self.hub.node_id:
            return self.inspect(peer_id)
        reply = await self.hub.broker.request(node, INSPECT, peer_id.encode(), timeout)
        try:
            fields = msgpack.unpackb(reply)
            return None if fields is None else PeerState(**fields)
        except (ValueError, TypeError) as exc:
            raise RequestFailed(f"node {node} answered {INSPECT} with garbage") from exc

    def inspect(self, peer_id: str) -> PeerState | None:
        """The state of ``peer_id`` on this node, or None when this node does not hold it."""
        peer = self.hub.peers.get(peer_id)
        if peer is None:
            return None
        session = peer.session
        live = session if isinstance(session, Session) else None
        expiry = peer.expiry
        now = self.hub.scheduler.time()
        left = None if expiry is None else max(0.0, expiry.when() - now)
        return PeerState(
            peer_id=peer.id,
            node=self.hub.node_id,
            connected=live is not None,
            closing=live.close_code if live is not None else None,
            rooms=dict(peer.rooms),
            queue_messages=len(peer.queue or ()),
            queue_bytes=peer.queued_bytes,
            replay_frames=len(peer.written or ()),
            awaiting_acks=len(peer.acks or ()),
            owed_answers=peer.owed,
            rate_tokens=live.rate_tokens() if live is not None else None,
            connected_seconds=now - live.opened if live is not None else None,
            received_envelopes=live.received_envelopes if live is not None else None,
            errors_sent=live.errors_sent if live is not None else None,
            resume_seconds_left=left,
        )

    async def disconnect(self, peer_id: str, code: int, message: str) -> bool:
        """Close ``peer_id``'s connection with ``code``; False when it has none here."""
        return await self.hub.disconnect(peer_id, code, message)

    async def remove_from_room(self, peer_id: str, room: str) -> bool:
        """Take ``peer_id`` out of ``room`` as its ``leave`` would; False if not a member here.

        Raises ``relay.broker.BrokerUnavailable`` when the cluster cannot be told.
        """
        peer = self.hub.peers.get(peer_id)
        if peer is None or room not in peer.rooms:
            return False
        await self.hub.leave_room(peer, room)
        return True
