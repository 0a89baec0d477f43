"""The in-process broker: the default for one node, and a test cluster.

One ``MemoryBroker`` per node; nodes that should form a cluster share one
``MemoryCluster``. A lone node gets its own cluster, in which every peer it
cannot find locally is simply offline.
"""

from __future__ import annotations

import asyncio
import logging

from relay.broker.base import (
    MAX_PENDING_REQUESTS,
    BrokerUnavailable,
    NodeHandler,
    NodeUnreachable,
    RequestFailed,
    RequestHandler,
)
from relay.values import Answer, Delivery, Handover, Joined, Proof, Undelivered

log = logging.getLogger("relay.broker.memory")


class MemoryCluster:
    """The shared state of the nodes in one process."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeHandler] = {}
        self.handlers: dict[str, dict[str, RequestHandler]] = {}  # node id -> kind -> handler
        self.holders: dict[str, str] = {}  # peer id -> node id
        self.rooms: dict[str, set[str]] = {}  # room -> member peer ids


class MemoryBroker:
    """A ``Broker`` over a ``MemoryCluster``."""

    def __init__(self, cluster: MemoryCluster | None = None) -> None:
        self._cluster = cluster if cluster is not None else MemoryCluster()
        self._node: NodeHandler | None = None
        self._handlers: dict[str, RequestHandler] = {}
        self._requests = 0  # waiting for a reply

    @property
    def ready(self) -> bool:
        return True

    @property
    def _node_id(self) -> str:
        if self._node is None:
            raise RuntimeError("broker used before start()")
        return self._node.node_id

    async def start(self, node: NodeHandler) -> None:
        self._node = node
        self._cluster.nodes[node.node_id] = node
        self._cluster.handlers[node.node_id] = self._handlers

    async def close(self) -> None:
        node_id = self._node_id
        self._cluster.nodes.pop(node_id, None)
        self._cluster.handlers.pop(node_id, None)
        mine = [peer for peer, holder in self._cluster.holders.items() if holder == node_id]
        for peer in mine:
            del self._cluster.holders[peer]
            for members in self._cluster.rooms.values():
                members.discard(peer)

    async def claim(self, peer_id: str) -> str | None:
        holder = self._cluster.holders.setdefault(peer_id, self._node_id)
        return None if holder == self._node_id else holder

    async def release(self, peer_id: str) -> None:
        if self._cluster.holders.get(peer_id) == self._node_id:
            del self._cluster.holders[peer_id]

    async def other_nodes(self) -> int:
        return len(self._cluster.nodes) - 1

    async def serving_nodes(self) -> list[str]:
        return sorted(node for node in self._cluster.nodes if node != self._node_id)

    async def locate(self, peer_id: str) -> str | None:
        holder = self._cluster.holders.get(peer_id)
        return holder if holder in self._cluster.nodes else None

    async def take_over(self, peer_id: str, holder: str, proof: Proof) -> Handover | None:
        node = self._cluster.nodes.get(holder)
        if node is None or self._cluster.holders.get(peer_id) != holder:
            return None
        handover = await node.hand_over(peer_id, proof)
        if handover is not None:
            self._cluster.holders[peer_id] = self._node_id
        return handover

    def send(
        self, peer_id: str, frame: bytes, undelivered: Undelivered | None, answer: Answer
    ) -> None:
        holder = self._cluster.holders.get(peer_id)
        node = self._cluster.nodes.get(holder) if holder is not None else None
        if node is None or holder == self._node_id:
            answer(Delivery.OFFLINE)
        elif undelivered is None or undelivered[1] is None:
            answer(node.deliver(peer_id, frame, undelivered))
        else:  # its sender waits for the acknowledgement
            delivery = node.deliver(peer_id, frame, undelivered, answer)
            if delivery is not Delivery.PENDING:
                answer(delivery)

    def publish(self, room: str, frame: bytes, exclude: str | None, presence_only: bool) -> None:
        for node_id, node in list(self._cluster.nodes.items()):
            if node_id != self._node_id:
                node.deliver_room(room, frame, exclude, presence_only)

    async def join(self, room: str, peer_id: str, limit: int) -> Joined:
        members = self._cluster.rooms.setdefault(room, set())
        if peer_id in members:
            return Joined.MEMBER
        if len(members) >= limit:
            return Joined.FULL
        members.add(peer_id)
        return Joined.FIRST if len(members) == 1 else Joined.MEMBER

    async def leave(self, room: str, peer_id: str) -> bool:
        members = self._cluster.rooms.get(room)
        if members is None or peer_id not in members:
            return False
        members.discard(peer_id)
        if members:
            return False
        del self._cluster.rooms[room]
        return True

    async def members(self, room: str) -> list[str]:
        return sorted(self._cluster.rooms.get(room, ()))

    def serve(self, kind: str, handler: RequestHandler) -> None:
        self._handlers[kind] = handler

    async def request(
        self,
        node_id: str,
        kind: str,
        body: bytes,
        timeout: float,  # noqa: ASYNC109 - it travels: the node asked bounds its handler by it
    ) -> bytes:
        if self._requests >= MAX_PENDING_REQUESTS:
            raise BrokerUnavailable("too many requests wait for a reply")
        handlers = self._cluster.handlers.get(node_id)
        if handlers is None:
            raise NodeUnreachable(f"node {node_id} is not alive")
        handler = handlers.get(kind)
        if handler is None:
            raise RequestFailed(f"node {node_id} serves no {kind!r} requests")
        # The other node's handler runs in this task, as its task would there.
        self._requests += 1
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await handler(body)
        except Exception as exc:
            if deadline.expired():
                raise NodeUnreachable(f"node {node_id} did not answer in {timeout} s") from None
            log.exception("a %r request failed on node %s", kind, node_id)
            raise RequestFailed(f"node {node_id} failed to answer a {kind!r} request") from exc
        finally:
            self._requests -= 1
