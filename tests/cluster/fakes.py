"""A node for brokers tested on their own: records what its broker hands it."""

from __future__ import annotations

from relay.values import Delivery, Handover, LostNode, Proof, Rejoined, Undelivered


class FakeNode:
    """A ``NodeHandler`` that takes every frame and gives up no peer."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.frames: list[bytes] = []
        self.lost: list[tuple[str, str, bool]] = []  # (room, peer, vacated) from member_lost
        self.nodes_lost: list[LostNode] = []  # from node_lost
        self.rejoins: list[Rejoined] = []  # from rejoined

    def deliver(self, peer_id: str, frame: bytes, undelivered: Undelivered | None) -> Delivery:
        self.frames.append(frame)
        return Delivery.DELIVERED

    def deliver_room(
        self, room: str, frame: bytes, exclude: str | None, presence_only: bool
    ) -> None:
        self.frames.append(frame)

    async def hand_over(self, peer_id: str, proof: Proof) -> Handover | None:
        return None

    def member_lost(self, room: str, peer_id: str, vacated: bool) -> None:
        self.lost.append((room, peer_id, vacated))

    def node_lost(self, lost: LostNode) -> None:
        self.nodes_lost.append(lost)

    def rejoined(self, rejoined: Rejoined) -> None:
        self.rejoins.append(rejoined)
