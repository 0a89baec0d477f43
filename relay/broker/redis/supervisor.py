"""The supervisor: keeps a node connected to Redis, registered and known to be alive.

It connects the subscription and the writer, subscribes, registers the node
(and, after an outage, every peer and room membership it still holds),
proves the subscription with a probe, then runs the heartbeat (renews the
lease, reaps dead nodes, whose peers and members it reports lost) and the
periodic probe. A node that finds it was reaped itself (cut off longer than
its lease) registers everything again and reports it back. When a
connection closes or either loop fails, the node is marked down and the
supervisor reconnects. After an outage, until every node it knew
is serving again (one lease at most), a peer that no node holds may just not
be registered again yet: ``links.recovering`` says so.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from relay.broker import wire
from relay.broker.redis.commands import ERRORS, Commands, pairs_raw, text
from relay.broker.redis.links import Links
from relay.broker.redis.registry import LostMember, Registry
from relay.broker.redis.resp import Connection
from relay.broker.redis.scripts import Keys
from relay.values import LostNode, Rejoined

log = logging.getLogger("relay.broker.redis")

_RECANCEL_SECONDS = 0.5

MemberLost = Callable[[str, str, bool], None]  # (room, peer, vacated)


class _Lost(Exception):
    """The connection to Redis failed a check; reconnect."""


class Supervisor:
    """Connects, registers and watches one node's link to Redis."""

    def __init__(
        self,
        url: str,
        node_id: str,
        keys: Keys,
        commands: Commands,
        registry: Registry,
        links: Links,
        *,
        received: Callable[[bytes], None],
        member_lost: MemberLost,
        node_lost: Callable[[LostNode], None],
        rejoined: Callable[[Rejoined], None],
        down: Callable[[], None],
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        lease_ms: int,
        heartbeat_seconds: float,
        probe_seconds: float,
    ) -> None:
        self._url = url
        self._node_id = node_id
        self._keys = keys
        self._commands = commands
        self._registry = registry
        self._links = links
        self._received = received  # one message on this node's channel
        self._member_lost = member_lost
        self._node_lost = node_lost
        self._rejoined = rejoined
        self._down = down  # what waits for a reply fails
        self._spawn = spawn
        self._lease_ms = lease_ms
        self._heartbeat = heartbeat_seconds
        self._probe_interval = probe_seconds
        self._timeout = commands.timeout
        self.closing = False
        self.connected = asyncio.Event()
        self._probe_nonce = ""
        self._probe_heard = asyncio.Event()
        self._served = False  # came up at least once: a later coming up is a recovery
        self._known: set[str] = set()  # the other nodes serving, at the last heartbeat
        self._awaited: set[str] = set()  # nodes not serving again yet after an outage
        self._recovery_ends = 0.0
        self._stale_leaves: list[LostMember] = []
        self._came_up = False  # the current connection attempt reached "up"

    async def supervise(self) -> None:
        delay = 0.1
        commands = self._commands
        while not self.closing:
            # Whether this run came up: _run's own cleanup clears ``up``.
            self._came_up = False
            try:
                await self._run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                level = logging.WARNING if self._came_up else logging.DEBUG
                log.log(level, "backplane lost (%s: %s); reconnecting", type(exc).__name__, exc)
            finally:
                if self._came_up:
                    delay = 0.1  # it worked until now: retry soon
                    if not self.closing:
                        log.warning("backplane down")
                commands.up = False
                self.connected.clear()
                self._down()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _run(self) -> None:
        commands = self._commands
        links = self._links
        connections: list[Connection] = []
        loops: list[asyncio.Task[None]] = []
        try:
            async with asyncio.timeout(self._timeout * 3):
                subscriber = await Connection.open(self._url, self._received)
                connections.append(subscriber)
                writer = await Connection.open(self._url)
                connections.append(writer)
                await subscriber.call("SUBSCRIBE", self._keys.channel(self._node_id))
            commands.attach(writer)
            self._stale_leaves = await self._registry.register()
            await self._probe_once()  # the subscription really works
            commands.up = True
            self._came_up = True
            self.connected.set()
            if self._served:
                # After an outage: until the nodes this one knew serve again,
                # a peer nobody holds may be one not registered again yet.
                self._awaited = set(self._known)
                self._recovery_ends = time.monotonic() + self._lease_ms / 1000
                links.recovering = bool(self._awaited)
            rejoined = self._registry.take_rejoined()
            if rejoined is not None and self._served:
                # Reaped while cut off: its peers were told offline, and are back.
                self._rejoined(rejoined)
            self._served = True
            stale, self._stale_leaves = self._stale_leaves, []
            if stale:
                self._spawn(self._announce_when_heard(stale))
            log.info("backplane up: node %s on %s", self._node_id, self._keys.prefix)
            links.reconnected()
            loops = [
                asyncio.create_task(self._heartbeats()),
                asyncio.create_task(self._probes()),
            ]
            done, _ = await asyncio.wait(
                [subscriber.closed, writer.closed, *loops], return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                task.result()  # raise what stopped it
            raise _Lost("a backplane connection closed")
        finally:
            commands.up = False
            commands.detach()
            for connection in connections:
                connection.close()
            await stop(loops)

    async def _heartbeats(self) -> None:
        registry = self._registry
        # Serving nodes renewed their lease within the last two heartbeats.
        recent = max(0, self._lease_ms - int(2 * self._heartbeat * 1000))
        while True:
            await registry.renew(b"1")
            if registry.reaped:
                # Its heartbeats came too late: what it held is gone from Redis.
                raise _Lost("this node was reaped: registering again")
            if registry.dirty:
                registry.dirty = False
                for room, peer, vacated in await registry.reconcile():
                    self._member_lost(room, peer, vacated)
            for lost in await registry.reap():
                log.info(
                    "node %s is gone: %d peers and %d memberships with it",
                    lost.node, len(lost.peers), len(lost.memberships),
                )  # fmt: skip
                self._node_lost(lost)
            serving = await registry.serving(recent)
            self._known = serving
            if self._awaited:
                self._awaited -= serving
                if not self._awaited or time.monotonic() > self._recovery_ends:
                    self._awaited = set()
                    self._links.recovering = False
                    log.info("every node is back: the cluster view is whole again")
            await asyncio.sleep(self._heartbeat)

    async def ticks(self) -> None:
        """Ask about late answers and give up past the bound, whether connected or not."""
        links = self._links
        commands = self._commands
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(self._heartbeat, self._timeout) / 2)
            writer = commands.writer
            oldest = writer.oldest if writer is not None else None
            if writer is not None and oldest is not None and loop.time() - oldest > self._timeout:
                log.warning("Redis has not answered for %.1f s: reconnecting", self._timeout)
                writer.close()  # the supervisor reconnects
            links.tick(commands.writer is not None)

    async def _announce_when_heard(self, stale: list[LostMember]) -> None:
        """Report leaves found after an outage once the other nodes listen again.

        They went through the same outage and may still be reconnecting: a
        frame published to a channel nobody listens on is lost. Wait (at most
        a lease) until every registered node has its channel subscribed.
        """
        raw = self._commands.raw
        deadline = asyncio.get_running_loop().time() + self._lease_ms / 1000
        while asyncio.get_running_loop().time() < deadline:
            try:
                nodes = [text(n) for n in await raw("SMEMBERS", self._keys.nodes)]
                counts = await raw("PUBSUB", "NUMSUB", *map(self._keys.channel, nodes))
                if all(isinstance(n, int) and n > 0 for _channel, n in pairs_raw(counts)):
                    break
            except ERRORS:
                pass
            await asyncio.sleep(self._heartbeat / 2)
        for room, peer_id, vacated in stale:
            self._member_lost(room, peer_id, vacated)

    async def _probe_once(self) -> None:
        nonce = secrets.token_hex(8)
        self._probe_nonce = nonce
        self._probe_heard.clear()
        heard = await self._commands.submit(
            ("PUBLISH", self._keys.channel(self._node_id), wire.encode_probe(nonce))
        )
        if not heard:
            raise _Lost("own channel has no subscriber")
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._probe_heard.wait()
        except TimeoutError:
            raise _Lost("probe not heard back") from None

    async def _probes(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval)
            await self._probe_once()

    def probe_heard(self, nonce: str) -> None:
        """A probe came back on this node's channel."""
        if nonce == self._probe_nonce:
            self._probe_heard.set()


async def stop(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has ended, whatever it does with a cancel.

    A task that swallowed its cancellation (a library may) is cancelled
    again after ``_RECANCEL_SECONDS``. Cancelling the caller meanwhile does not
    stop the wait, so no task outlives it; the caller's own cancellation is
    raised once they have all ended.
    """
    pending = {task for task in tasks if not task.done()}
    cancelled = False
    while pending:
        for task in pending:
            task.cancel()
        try:
            done, pending = await asyncio.wait(pending, timeout=_RECANCEL_SECONDS)
        except asyncio.CancelledError:
            cancelled = True
            continue
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved: a failure on the way out is not news
    if cancelled:
        raise asyncio.CancelledError
