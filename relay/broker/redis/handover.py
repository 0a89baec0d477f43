"""Handover: moving a peer from the node that holds it to the node it reconnected to.

The node taking the peer over publishes a handover request (with a
correlation id) on the holder's channel. The holder first waits (at most the
operation timeout) until everything the peer sent to other nodes is
answered, so the answers move with it, then asks its hub, which checks the
proof and closes the old socket with 4503; the reply (the peer's rooms,
queue and replay window, or nil) comes back on the requester's channel, and
the requester registers the id (with a new epoch) and the memberships as its
own. No reply within three times the operation timeout is ``BrokerUnavailable``.
"""

from __future__ import annotations

import asyncio
import logging

from relay.broker import wire
from relay.broker.base import BrokerUnavailable, NodeHandler
from relay.broker.redis.commands import Commands
from relay.broker.redis.links import Links
from relay.broker.redis.registry import Registry
from relay.broker.redis.requests import Failed, Pending
from relay.broker.redis.scripts import Keys
from relay.values import Handover, Proof

log = logging.getLogger("relay.broker.redis")


class Handovers:
    """The handovers this node asks for, and answers."""

    def __init__(
        self,
        node: NodeHandler,
        keys: Keys,
        commands: Commands,
        registry: Registry,
        links: Links,
    ) -> None:
        self._node = node
        self._keys = keys
        self._commands = commands
        self._registry = registry
        self._links = links
        self._timeout = commands.timeout
        self._pending: Pending[Handover | None] = Pending()

    async def take_over(self, peer_id: str, holder: str, proof: Proof) -> Handover | None:
        with self._pending.expect() as (cid, future):
            request = wire.encode_handover_request(cid, peer_id, proof, self._node.node_id)
            heard = await self._commands.write("PUBLISH", self._keys.channel(holder), request)
            if not heard:
                raise BrokerUnavailable(f"node {holder} holding {peer_id} does not answer")
            try:
                async with asyncio.timeout(self._timeout * 3):
                    handover = await future
            except TimeoutError:
                raise BrokerUnavailable(f"node {holder} did not answer in time") from None
        if isinstance(handover, Failed):
            raise BrokerUnavailable("the backplane went down during a handover")
        if handover is not None:
            await self._registry.took(peer_id, holder, handover)
        return handover

    def replied(self, reply: wire.HandoverReply) -> None:
        self._pending.settle(reply.cid, reply.handover)

    def fail(self) -> None:
        """The backplane went down: no reply will come to what waits for one."""
        self._pending.fail()

    async def answer(self, request: wire.HandoverRequest) -> None:
        """Hand the peer over to the node asking, if the hub agrees."""
        # What the peer sent to other nodes is answered into its queue first,
        # so the answers move with it.
        try:
            async with asyncio.timeout(self._timeout):
                await self._links.settled(request.peer)
        except TimeoutError:
            log.warning("handing %s over with sends still unanswered", request.peer)
        handover: Handover | None = None
        try:
            async with asyncio.timeout(self._timeout):
                handover = await self._node.hand_over(request.peer, request.proof)
        except TimeoutError:
            log.warning("handing over %s took too long", request.peer)
        if handover is not None:
            self._registry.gave(request.peer, handover.rooms)
        elif request.peer not in self._registry.holds:
            # The registry names this node but it holds no such peer (a claim
            # that timed out after all): free the id.
            self._registry.post_release(request.peer)
        self._commands.post(
            "PUBLISH",
            self._keys.channel(request.reply_to),
            wire.encode_handover_reply(request.cid, handover),
        )
