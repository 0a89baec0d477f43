"""``RedisBroker``: the ``Broker`` interface over the parts of this package.

It builds the parts when it starts serving a node, hands each call of the
hub to the part that owns it, and dispatches what arrives on the node's
channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Coroutine
from typing import Any

import relay.broker.redis.scripts as scripts
from relay.broker import wire
from relay.broker.base import BrokerUnavailable, NodeHandler, RequestHandler
from relay.broker.redis.commands import ERRORS, Commands
from relay.broker.redis.handover import Handovers
from relay.broker.redis.links import Links
from relay.broker.redis.registry import Registry
from relay.broker.redis.requests import Requests
from relay.broker.redis.scripts import Keys
from relay.broker.redis.supervisor import Supervisor, stop
from relay.values import Answer, Delivery, Handover, Joined, Proof, Undelivered

log = logging.getLogger("relay.broker.redis")


class RedisBroker:
    """A ``Broker`` over one Redis server."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "relay",
        lease_seconds: float = 5.0,
        heartbeat_seconds: float = 1.0,
        probe_seconds: float = 2.0,
        timeout_seconds: float = 1.0,
        queue_size: int = 10000,
    ) -> None:
        self._url = url
        self._keys = Keys(prefix)
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self._heartbeat = heartbeat_seconds
        self._probe_interval = probe_seconds
        self._timeout = timeout_seconds
        self._queue_size = queue_size
        self._commands = Commands(url, self._keys, timeout_seconds)
        self._incarnation = secrets.token_hex(6)
        self._handlers: dict[str, RequestHandler] = {}  # served before or after start()
        # Built by start(), for the node it serves:
        self._node: NodeHandler | None = None
        self._node_id = ""
        self._links: Links | None = None
        self._registry: Registry | None = None
        self._handovers: Handovers | None = None
        self._requests: Requests | None = None
        self._supervisor: Supervisor | None = None
        self._tasks: list[asyncio.Task[None]] = []  # the supervisor's and the ticks
        self._background: set[asyncio.Task[Any]] = set()
        self._farewells: list[tuple[str, bytes]] | None = None  # room frames while closing

    # --- lifecycle -----------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._commands.up

    async def start(self, node: NodeHandler) -> None:
        self._node = node
        self._node_id = node.node_id
        commands = self._commands
        links = self._links = commands.links = Links(
            node,
            self._incarnation,
            publish=commands.publish_to,
            wake=commands.end_pass_soon,
            lookup=self._lookup,
            alive=self._alive,
            spawn=self._spawn,
            timeout_seconds=self._timeout,
            give_up_seconds=2 * self._lease_ms / 1000,
            limit=self._queue_size,
        )
        registry = self._registry = Registry(
            self._node_id, self._keys, commands, links,
            lease_ms=self._lease_ms, lost=self._lost,
        )  # fmt: skip
        self._handovers = Handovers(node, self._keys, commands, registry, links)
        self._requests = Requests(self._node_id, self._keys, commands, self._handlers, self._spawn)
        supervisor = self._supervisor = Supervisor(
            self._url, self._node_id, self._keys, commands, registry, links,
            received=self._received, member_lost=node.member_lost, node_lost=node.node_lost,
            rejoined=node.rejoined, down=self._down, spawn=self._spawn, lease_ms=self._lease_ms,
            heartbeat_seconds=self._heartbeat, probe_seconds=self._probe_interval,
        )  # fmt: skip
        commands.open_pool()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(supervisor.supervise()),
            loop.create_task(supervisor.ticks()),
        ]
        # Serve at once if Redis is there; otherwise start anyway, not ready,
        # and keep trying in the background.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout * 3):
                await supervisor.connected.wait()

    async def close(self) -> None:
        links = self._links
        commands = self._commands
        if commands.up and links is not None:
            # Answers on their way: give them a moment before answering overloaded.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timeout):
                    await links.settled()
        if self._supervisor is not None:
            self._supervisor.closing = True
        was_up = commands.up
        await stop(self._tasks)
        for task in list(self._background):
            task.cancel()
        if was_up and self._registry is not None and commands.pool is not None:
            try:
                async with asyncio.timeout(self._timeout * 2):
                    await self._unregister()
            except ERRORS as exc:
                log.warning("could not unregister node %s: %s", self._node_id, exc)
            finally:
                self._farewells = None
        commands.up = False
        self._down()
        if links is not None:
            links.close()
        if commands.pool is not None:
            with contextlib.suppress(Exception):
                await commands.pool.aclose()

    async def _unregister(self) -> None:
        """Remove this node from the registry, its members announced as lost.

        The writer went with the supervisor, so what the node publishes for
        them (from ``member_lost``) is gathered and sent through the pool.
        """
        pool = self._commands.pool
        assert self._node is not None and self._registry is not None and pool is not None
        self._farewells = []
        for room, peer, vacated in await self._registry.unregister():
            self._node.member_lost(room, peer, vacated)
        for room, payload in self._farewells:
            await pool.eval(
                scripts.PUBLISH, 1, self._keys.key("roomnodes", room),
                self._keys.channel(""), payload, self._node_id,
            )  # fmt: skip

    def _down(self) -> None:
        """The backplane went down: what waits for a reply from another node fails."""
        if self._handovers is not None:
            self._handovers.fail()
        if self._requests is not None:
            self._requests.fail()

    # --- the Broker interface ---------------------------------------------------

    def _the_registry(self) -> Registry:
        assert self._registry is not None, "broker used before start()"
        return self._registry

    async def claim(self, peer_id: str) -> str | None:
        return await self._the_registry().claim(peer_id)

    async def release(self, peer_id: str) -> None:
        await self._the_registry().release(peer_id)

    async def other_nodes(self) -> int:
        return await self._the_registry().other_nodes()

    async def serving_nodes(self) -> list[str]:
        return sorted(await self._the_registry().serving(0))

    async def locate(self, peer_id: str) -> str | None:
        found = await self._lookup(peer_id)
        return None if found is None else found[0]

    async def _lookup(self, peer_id: str) -> tuple[str, int] | None:
        return await self._the_registry().lookup(peer_id)

    async def _alive(self, node_id: str) -> bool:
        return await self._the_registry().alive(node_id)

    async def take_over(self, peer_id: str, holder: str, proof: Proof) -> Handover | None:
        assert self._handovers is not None, "broker used before start()"
        return await self._handovers.take_over(peer_id, holder, proof)

    def send(
        self, peer_id: str, frame: bytes, undelivered: Undelivered | None, answer: Answer
    ) -> None:
        if not self._commands.up or self._links is None:
            answer(Delivery.OVERLOADED)
            return
        self._links.send(peer_id, frame, undelivered, answer)

    def publish(self, room: str, frame: bytes, exclude: str | None, presence_only: bool) -> None:
        commands = self._commands
        if not commands.up:
            if self._farewells is not None:  # from inside close(): see _unregister
                self._farewells.append(
                    (room, wire.encode_room(room, frame, exclude, presence_only))
                )
                return
            if presence_only:
                # A presence event that cannot go out now: the other nodes learn
                # of a leave from reconcile, and the node that is cut off is
                # the one a join would be refused on.
                self._the_registry().dirty = True
                return
            raise BrokerUnavailable("the backplane is down")
        if commands.backlog >= self._queue_size:
            raise BrokerUnavailable("the backplane is not keeping up")
        commands.post(
            "EVAL", scripts.PUBLISH, 1, self._keys.key("roomnodes", room),
            self._keys.channel(""), wire.encode_room(room, frame, exclude, presence_only),
            self._node_id,
        )  # fmt: skip

    async def join(self, room: str, peer_id: str, limit: int) -> Joined:
        return await self._the_registry().join(room, peer_id, limit)

    async def leave(self, room: str, peer_id: str) -> bool:
        return await self._the_registry().leave(room, peer_id)

    async def members(self, room: str) -> list[str]:
        return await self._the_registry().members(room)

    def serve(self, kind: str, handler: RequestHandler) -> None:
        self._handlers[kind] = handler

    async def request(
        self,
        node_id: str,
        kind: str,
        body: bytes,
        timeout: float,  # noqa: ASYNC109 - it travels: the node asked bounds its handler by it
    ) -> bytes:
        assert self._requests is not None, "broker used before start()"
        return await self._requests.request(node_id, kind, body, timeout)

    # --- incoming --------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        """One message on this node's channel."""
        try:
            message = wire.decode(data)
        except wire.WireError as exc:
            log.warning("dropped a malformed message from the backplane: %s", exc)
            return
        try:
            self._handle(message)
        except Exception:
            log.exception("error handling a backplane message")

    def _handle(self, message: wire.Message) -> None:
        links = self._links
        handovers = self._handovers
        requests = self._requests
        supervisor = self._supervisor
        assert self._node is not None and links is not None and supervisor is not None
        assert handovers is not None and requests is not None
        if isinstance(message, wire.Batch):
            links.received(message)
        elif isinstance(message, wire.RoomFrame):
            self._node.deliver_room(
                message.room, message.frame, message.exclude, message.presence_only
            )
        elif isinstance(message, wire.Status):
            links.status(message)
        elif isinstance(message, wire.HandoverRequest):
            self._spawn(handovers.answer(message))
        elif isinstance(message, wire.HandoverReply):
            handovers.replied(message)
        elif isinstance(message, wire.Request):
            requests.received(message)
        elif isinstance(message, wire.Reply):
            requests.replied(message)
        elif isinstance(message, wire.Probe):
            supervisor.probe_heard(message.nonce)

    # --- callbacks of the parts ----------------------------------------------------

    def _lost(self, peer_id: str) -> None:
        """Another node took ``peer_id`` while this one was cut off: the hub lets it go."""
        self._spawn(self._give_up(peer_id))

    async def _give_up(self, peer_id: str) -> None:
        assert self._node is not None
        await self._node.hand_over(peer_id, Proof(None, True))

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("backplane background task failed")

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
