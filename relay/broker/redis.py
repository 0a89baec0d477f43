"""The Redis broker: nodes on several machines (or processes) as one relay.

Keys and channels (``P`` is ``--redis-prefix``, default ``relay``):

    P:node:{node}          channel: everything for one node (deliveries, room
                           frames, handover request/reply, its own probe)
    P:alive:{node}         string with a TTL (the node lease), renewed by heartbeat
    P:nodes                set of nodes that registered (live or not yet reaped)
    P:peer:{peer}          string: the node holding the peer id
    P:peers:{node}         set: the peer ids a node registered (for reaping)
    P:room:{room}          hash: member peer -> its node
    P:roomnodes:{room}     hash: node -> how many members it has in the room
    P:rooms:{node}         set: rooms a node has members in (for reaping)

Room frames go only to the node channels of nodes with members (``roomnodes``),
looked up and published by one Lua script, so there are no per-room
subscriptions to manage and a node never hears rooms it has no member in.

Everything that is published (deliveries, room frames, control) goes through
one writer task on one dedicated connection, pipelined in submission order,
so frames from one sender to one target stay in order. Registry commands use
a separate pool. Every call is bounded by ``broker_timeout_seconds`` and the
outgoing queue by ``broker_queue``; while the backplane is down every call
raises ``BrokerUnavailable`` at once.

A supervisor task connects, registers the node (and, after an outage, every
peer and room membership it still holds), subscribes, proves the
subscription with a probe, then runs: the reader, the writer, the heartbeat
(renews the lease, reaps dead nodes and announces presence ``leave`` for
their members) and the periodic probe. When any of them fails the node is
marked down and the supervisor reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Awaitable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from relay.broker import wire
from relay.broker.base import (
    Answer,
    BrokerUnavailable,
    Delivery,
    Handover,
    NodeHandler,
    Proof,
    Undelivered,
)
from relay.protocol import codec

log = logging.getLogger("relay.broker.redis")

_ERRORS = (RedisError, OSError, TimeoutError, asyncio.TimeoutError, BrokerUnavailable)
_BATCH = 512

# KEYS[1] peer key; ARGV: node, prefix, peer
_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. ':alive:' .. cur) == 1 then
  return cur
end
if cur and cur ~= ARGV[1] then redis.call('SREM', ARGV[2] .. ':peers:' .. cur, ARGV[3]) end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', ARGV[2] .. ':peers:' .. ARGV[1], ARGV[3])
return false
"""

# KEYS[1] peer key; ARGV: node, prefix, peer
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('SREM', ARGV[2] .. ':peers:' .. ARGV[1], ARGV[3])
return 1
"""

# KEYS[1] peer key; ARGV: prefix. The holder, if its lease is live.
_LOCATE = """
local holder = redis.call('GET', KEYS[1])
if holder and redis.call('EXISTS', ARGV[1] .. ':alive:' .. holder) == 1 then return holder end
return false
"""

# ARGV: prefix, this node. How many other nodes hold a live lease.
_OTHER_NODES = """
local n = 0
for _, node in ipairs(redis.call('SMEMBERS', ARGV[1] .. ':nodes')) do
  if node ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. ':alive:' .. node) == 1 then n = n + 1 end
end
return n
"""

# KEYS[1] peer key; ARGV: node, prefix, peer, old holder
_TAKE = """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SREM', ARGV[2] .. ':peers:' .. ARGV[4], ARGV[3])
redis.call('SADD', ARGV[2] .. ':peers:' .. ARGV[1], ARGV[3])
return 1
"""

# KEYS[1] peer key; ARGV: channel prefix, payload, this node
_SEND = """
local holder = redis.call('GET', KEYS[1])
if not holder or holder == ARGV[3] then return 0 end
return redis.call('PUBLISH', ARGV[1] .. holder, ARGV[2])
"""

# KEYS[1] roomnodes key; ARGV: channel prefix, payload, this node
_PUBLISH = """
local n = 0
for _, node in ipairs(redis.call('HKEYS', KEYS[1])) do
  if node ~= ARGV[3] then n = n + redis.call('PUBLISH', ARGV[1] .. node, ARGV[2]) end
end
return n
"""

# KEYS[1] room key, KEYS[2] roomnodes key; ARGV: node, peer, limit (-1: none), prefix, room
_JOIN = """
local cur = redis.call('HGET', KEYS[1], ARGV[2])
if cur == ARGV[1] then return 1 end
local limit = tonumber(ARGV[3])
if not cur and limit >= 0 and redis.call('HLEN', KEYS[1]) >= limit then return 0 end
if cur and redis.call('HINCRBY', KEYS[2], cur, -1) <= 0 then redis.call('HDEL', KEYS[2], cur) end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[1])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('SADD', ARGV[4] .. ':rooms:' .. ARGV[1], ARGV[5])
return 1
"""

# KEYS[1] room key, KEYS[2] roomnodes key; ARGV: node, peer, prefix, room
_LEAVE = """
if redis.call('HGET', KEYS[1], ARGV[2]) ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
if redis.call('HINCRBY', KEYS[2], ARGV[1], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('SREM', ARGV[3] .. ':rooms:' .. ARGV[1], ARGV[4])
end
return 1
"""

# KEYS[1] room key; ARGV: prefix. Members whose node is alive.
_MEMBERS = """
local alive = {}
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local node = all[i + 1]
  if alive[node] == nil then
    alive[node] = redis.call('EXISTS', ARGV[1] .. ':alive:' .. node) == 1
  end
  if alive[node] then table.insert(out, all[i]) end
end
return out
"""

# ARGV: prefix, this node, forced node ('' for none). Removes every node whose
# lease is gone (or the forced one): its peers and memberships. Returns the
# removed memberships as a flat list room, peer, room, peer...
_REAP = """
local p = ARGV[1]
local out = {}
local dead = {}
if ARGV[3] ~= '' then
  table.insert(dead, ARGV[3])
else
  for _, node in ipairs(redis.call('SMEMBERS', p .. ':nodes')) do
    if node ~= ARGV[2] and redis.call('EXISTS', p .. ':alive:' .. node) == 0 then
      table.insert(dead, node)
    end
  end
end
for _, node in ipairs(dead) do
  redis.call('SREM', p .. ':nodes', node)
  for _, room in ipairs(redis.call('SMEMBERS', p .. ':rooms:' .. node)) do
    local rk = p .. ':room:' .. room
    local all = redis.call('HGETALL', rk)
    for i = 1, #all, 2 do
      if all[i + 1] == node then
        redis.call('HDEL', rk, all[i])
        table.insert(out, room)
        table.insert(out, all[i])
      end
    end
    redis.call('HDEL', p .. ':roomnodes:' .. room, node)
  end
  redis.call('DEL', p .. ':rooms:' .. node)
  for _, peer in ipairs(redis.call('SMEMBERS', p .. ':peers:' .. node)) do
    local k = p .. ':peer:' .. peer
    if redis.call('GET', k) == node then redis.call('DEL', k) end
  end
  redis.call('DEL', p .. ':peers:' .. node)
end
return out
"""


class _Lost(Exception):
    """The connection to Redis failed a check; reconnect."""


_Op = tuple[tuple[Any, ...], "asyncio.Future[Any] | None"]


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
        self._prefix = prefix
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self._heartbeat = heartbeat_seconds
        self._probe_interval = probe_seconds
        self._timeout = timeout_seconds
        self._queue_size = queue_size
        self._node: NodeHandler | None = None
        self._node_id = ""
        self._up = False
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None
        self._cmd: aioredis.Redis | None = None
        self._pub: aioredis.Redis | None = None
        self._sub: aioredis.Redis | None = None
        self._ops: asyncio.Queue[_Op] = asyncio.Queue(queue_size)
        self._inflight: deque[_Op] = deque()  # written, reply not read yet
        self._replies_due = asyncio.Event()
        self._pending: dict[str, asyncio.Future[Handover | None]] = {}
        self._acks: dict[str, asyncio.Future[Delivery]] = {}
        self._probe_nonce = ""
        self._probe_heard = asyncio.Event()
        self._connected = asyncio.Event()
        # What this node holds, to re-register after Redis lost it.
        self._peers: set[str] = set()
        self._rooms: dict[str, set[str]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._stale_leaves: list[tuple[str, str]] = []
        self._dirty = False  # the registry may hold what this node let go

    # --- names ---------------------------------------------------------------

    def _channel(self, node_id: str) -> str:
        return f"{self._prefix}:node:{node_id}"

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}:{kind}:{name}"

    # --- lifecycle -----------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._up

    async def start(self, node: NodeHandler) -> None:
        self._node = node
        self._node_id = node.node_id
        options: dict[str, Any] = {
            "socket_timeout": self._timeout,
            "socket_connect_timeout": self._timeout,
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": False,
        }
        self._cmd = aioredis.Redis.from_url(self._url, **options)
        self._pub = aioredis.Redis.from_url(self._url, **options)
        self._sub = aioredis.Redis.from_url(self._url, **options)
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())
        # Serve at once if Redis is there; otherwise start anyway, not ready,
        # and keep trying in the background.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout * 3):
                await self._connected.wait()

    async def close(self) -> None:
        self._closing = True
        was_up = self._up
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(BaseException):
                await self._supervisor
        for task in list(self._background):
            task.cancel()
        if was_up and self._cmd is not None:
            try:
                async with asyncio.timeout(self._timeout * 2):
                    reaped = await self._cmd.eval(
                        _REAP, 0, self._prefix, self._node_id, self._node_id
                    )
                    await self._cmd.delete(self._key("alive", self._node_id))
                    for room, peer in _pairs(reaped):
                        frame = _presence_leave(room, peer)
                        payload = wire.encode_room(room, frame, peer, True)
                        await self._cmd.eval(
                            _PUBLISH, 1, self._key("roomnodes", room),
                            self._channel(""), payload, self._node_id,
                        )  # fmt: skip
            except _ERRORS as exc:
                log.warning("could not unregister node %s: %s", self._node_id, exc)
        self._up = False
        self._fail_pending()
        for client in (self._cmd, self._pub, self._sub):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()

    # --- the Broker interface ---------------------------------------------------

    async def claim(self, peer_id: str) -> str | None:
        # Counted as held before Redis answers, so that a concurrent
        # _reconcile never takes a claim in flight for a stale entry.
        fresh = peer_id not in self._peers
        self._peers.add(peer_id)
        try:
            holder = await self._call(
                "EVAL", _CLAIM, 1, self._key("peer", peer_id),
                self._node_id, self._prefix, peer_id,
            )  # fmt: skip
        except BrokerUnavailable:
            if fresh:
                self._peers.discard(peer_id)
            raise
        if holder is None:
            return None
        if fresh:
            self._peers.discard(peer_id)
        return _text(holder)

    async def release(self, peer_id: str) -> None:
        # Forgetting never fails: what the registry could not be told now is
        # put right from this node's own state when it can (``_reconcile``).
        self._peers.discard(peer_id)
        try:
            await self._call(
                "EVAL", _RELEASE, 1, self._key("peer", peer_id),
                self._node_id, self._prefix, peer_id,
            )  # fmt: skip
        except BrokerUnavailable:
            self._dirty = True

    async def other_nodes(self) -> int:
        try:
            count = await self._call("EVAL", _OTHER_NODES, 0, self._prefix, self._node_id)
        except BrokerUnavailable:
            return 0  # none that a peer could be handed to from here
        return int(count)

    async def locate(self, peer_id: str) -> str | None:
        holder = await self._call("EVAL", _LOCATE, 1, self._key("peer", peer_id), self._prefix)
        return None if holder is None else _text(holder)

    async def take_over(self, peer_id: str, holder: str, proof: Proof) -> Handover | None:
        cid = secrets.token_hex(8)
        future: asyncio.Future[Handover | None] = asyncio.get_running_loop().create_future()
        self._pending[cid] = future
        try:
            request = wire.encode_handover_request(cid, peer_id, proof, self._node_id)
            heard = await self._write("PUBLISH", self._channel(holder), request)
            if not heard:
                raise BrokerUnavailable(f"node {holder} holding {peer_id} does not answer")
            try:
                async with asyncio.timeout(self._timeout * 3):
                    handover = await future
            except TimeoutError:
                raise BrokerUnavailable(f"node {holder} did not answer in time") from None
        finally:
            self._pending.pop(cid, None)
        if handover is None:
            return None
        # The peer is ours now, whatever happens next: its state must not be
        # lost. Should the registry be unreachable, the reconnect registers it.
        self._peers.add(peer_id)
        for room in handover.rooms:
            self._rooms.setdefault(room, set()).add(peer_id)
        try:
            await self._call(
                "EVAL", _TAKE, 1, self._key("peer", peer_id),
                self._node_id, self._prefix, peer_id, holder,
            )  # fmt: skip
            for room in handover.rooms:
                await self._join(room, peer_id, -1)
        except BrokerUnavailable:
            log.warning("took over %s but could not register it yet", peer_id)
        return handover

    def send(
        self, peer_id: str, frame: bytes, undelivered: Undelivered | None, answer: Answer
    ) -> None:
        if not self._up:
            answer(Delivery.OVERLOADED)
            return
        self._spawn(self._send(peer_id, frame, undelivered, answer))

    async def _send(
        self, peer_id: str, frame: bytes, undelivered: Undelivered | None, answer: Answer
    ) -> None:
        # The holder's node answers with what became of the frame (delivered,
        # queued for a resume, offline, overloaded), so ok/err mean exactly
        # what they mean on one node.
        cid = secrets.token_hex(8)
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._acks[cid] = future
        try:
            payload = wire.encode_deliver(peer_id, frame, undelivered, cid, self._node_id)
            heard = await self._write(
                "EVAL", _SEND, 1, self._key("peer", peer_id),
                self._channel(""), payload, self._node_id,
            )  # fmt: skip
            if not heard:
                answer(Delivery.OFFLINE)
                return
            async with asyncio.timeout(self._timeout):
                answer(await future)
        except (BrokerUnavailable, TimeoutError):
            answer(Delivery.OVERLOADED)
        finally:
            self._acks.pop(cid, None)

    def publish(self, room: str, frame: bytes, exclude: str | None, presence_only: bool) -> None:
        if not self._up:
            if presence_only:
                # A presence event that cannot go out now: the other nodes learn
                # of a leave from _reconcile, and the node that is cut off is
                # the one a join would be refused on.
                self._dirty = True
                return
            raise BrokerUnavailable("the backplane is down")
        payload = wire.encode_room(room, frame, exclude, presence_only)
        try:
            self._ops.put_nowait(
                (("EVAL", _PUBLISH, 1, self._key("roomnodes", room),
                  self._channel(""), payload, self._node_id), None)
            )  # fmt: skip
        except asyncio.QueueFull:
            raise BrokerUnavailable("the backplane is not keeping up") from None

    async def join(self, room: str, peer_id: str, limit: int) -> bool:
        return await self._join(room, peer_id, limit)

    async def _join(self, room: str, peer_id: str, limit: int) -> bool:
        members = self._rooms.setdefault(room, set())
        fresh = peer_id not in members
        members.add(peer_id)  # before Redis answers, as in claim()
        joined = False
        try:
            result = await self._call(
                "EVAL", _JOIN, 2, self._key("room", room), self._key("roomnodes", room),
                self._node_id, peer_id, limit, self._prefix, room,
            )  # fmt: skip
            joined = bool(result)
        finally:
            if fresh and not joined:
                self._forget_membership(room, peer_id)
        return joined

    async def leave(self, room: str, peer_id: str) -> None:
        self._forget_membership(room, peer_id)
        try:
            await self._call(
                "EVAL", _LEAVE, 2, self._key("room", room), self._key("roomnodes", room),
                self._node_id, peer_id, self._prefix, room,
            )  # fmt: skip
        except BrokerUnavailable:
            self._dirty = True

    async def members(self, room: str) -> list[str]:
        found = await self._call("EVAL", _MEMBERS, 1, self._key("room", room), self._prefix)
        return sorted(_text(member) for member in found)

    def _forget_membership(self, room: str, peer_id: str) -> None:
        members = self._rooms.get(room)
        if members is not None:
            members.discard(peer_id)
            if not members:
                del self._rooms[room]

    # --- calls -----------------------------------------------------------------

    async def _call(self, *args: Any) -> Any:
        """One registry command on the pool, bounded; BrokerUnavailable when down."""
        if not self._up or self._cmd is None:
            raise BrokerUnavailable("the backplane is down")
        try:
            async with asyncio.timeout(self._timeout):
                return await self._cmd.execute_command(*args)  # type: ignore[no-untyped-call]
        except _ERRORS as exc:
            raise BrokerUnavailable("the backplane did not answer") from exc

    async def _write(self, *args: Any) -> Any:
        """One command through the ordered writer; waits for its reply, bounded."""
        if not self._up:
            raise BrokerUnavailable("the backplane is down")
        return await self._submit(args)

    async def _submit(self, args: tuple[Any, ...]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            self._ops.put_nowait((args, future))
        except asyncio.QueueFull:
            raise BrokerUnavailable("the backplane is not keeping up") from None
        try:
            return await asyncio.wait_for(future, self._timeout)
        except TimeoutError:
            raise BrokerUnavailable("the backplane did not answer") from None

    def _post(self, *args: Any) -> None:
        """Queue a command on the writer without waiting (replies, reports)."""
        if not self._up:
            log.warning("backplane down: dropped %s", args[0])
            return
        try:
            self._ops.put_nowait((args, None))
        except asyncio.QueueFull:
            log.warning("backplane queue full: dropped %s", args[0])

    def _fail_pending(self) -> None:
        while self._inflight:
            _args, future = self._inflight.popleft()
            if future is not None and not future.done():
                future.set_exception(BrokerUnavailable("the backplane is down"))
        while not self._ops.empty():
            _args, future = self._ops.get_nowait()
            if future is not None and not future.done():
                future.set_exception(BrokerUnavailable("the backplane is down"))
        waiting: list[asyncio.Future[Any]] = [*self._pending.values(), *self._acks.values()]
        for future in waiting:
            if not future.done():
                future.set_exception(BrokerUnavailable("the backplane is down"))

    # --- the supervisor ------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = 0.1
        while not self._closing:
            pubsub = None
            try:
                assert self._sub is not None
                pubsub = self._sub.pubsub(ignore_subscribe_messages=True)
                async with asyncio.timeout(self._timeout * 3):
                    await pubsub.subscribe(self._channel(self._node_id))
                await self._run(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                level = logging.WARNING if self._up else logging.DEBUG
                log.log(level, "backplane lost (%s: %s); reconnecting", type(exc).__name__, exc)
            finally:
                if self._up:
                    delay = 0.1  # it worked until now: retry soon
                if self._up and not self._closing:
                    log.warning("backplane down")
                self._up = False
                self._connected.clear()
                self._fail_pending()
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _run(self, pubsub: aioredis.client.PubSub) -> None:
        assert self._pub is not None
        conn: AbstractConnection = self._pub.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        async with asyncio.timeout(self._timeout):
            await conn.connect()  # type: ignore[no-untyped-call]
        tasks = [
            asyncio.create_task(self._reader(pubsub)),
            asyncio.create_task(self._writer(conn)),
            asyncio.create_task(self._replies(conn)),
        ]
        try:
            await self._register()
            await self._probe_once()  # the subscription really works
            self._up = True
            self._connected.set()
            stale, self._stale_leaves = self._stale_leaves, []
            if stale:
                self._spawn(self._announce_when_heard(stale))
            log.info("backplane up: node %s on %s", self._node_id, self._prefix)
            tasks += [
                asyncio.create_task(self._heartbeats()),
                asyncio.create_task(self._probes()),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raise what stopped it
            raise _Lost("a backplane task stopped")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._fail_pending()
            with contextlib.suppress(Exception):
                await conn.disconnect()

    async def _raw(self, *args: Any) -> Any:
        assert self._cmd is not None
        async with asyncio.timeout(self._timeout):
            return await self._cmd.execute_command(*args)  # type: ignore[no-untyped-call]

    async def _register(self) -> None:
        """Register the node, and again every peer and membership it holds.

        After an outage the registry may hold less (Redis restarted empty) or
        more (a release or leave that failed while it was unreachable) than
        this node holds: both are put right, and members that are no longer
        here are announced as gone.
        """
        await self._renew()
        self._dirty = False
        self._stale_leaves = await self._reconcile()
        for peer_id in list(self._peers):
            holder = await self._raw(
                "EVAL", _CLAIM, 1, self._key("peer", peer_id), self._node_id, self._prefix, peer_id
            )
            if holder is not None:
                # Another node took the id while this one was cut off: it wins.
                log.warning("%s was taken by %s during an outage", peer_id, _text(holder))
                self._peers.discard(peer_id)
                for members in self._rooms.values():
                    members.discard(peer_id)
                self._spawn(self._give_up(peer_id))
        for room, members in list(self._rooms.items()):
            for peer_id in list(members):
                await self._raw(
                    "EVAL", _JOIN, 2, self._key("room", room), self._key("roomnodes", room),
                    self._node_id, peer_id, -1, self._prefix, room,
                )  # fmt: skip

    async def _reconcile(self) -> list[tuple[str, str]]:
        """Drop what the registry holds for this node that the node no longer has.

        Returns the memberships removed, to be announced as presence leave.
        """
        stale: list[tuple[str, str]] = []
        registered = await self._raw("SMEMBERS", self._key("peers", self._node_id))
        for peer_id in {_text(item) for item in registered} - self._peers:
            await self._raw(
                "EVAL",
                _RELEASE,
                1,
                self._key("peer", peer_id),
                self._node_id,
                self._prefix,
                peer_id,
            )
        rooms = await self._raw("SMEMBERS", self._key("rooms", self._node_id))
        for room in {_text(item) for item in rooms}:
            entries: dict[bytes, bytes] = await self._raw("HGETALL", self._key("room", room))
            for peer_id, node in ((_text(k), _text(v)) for k, v in entries.items()):
                if node == self._node_id and peer_id not in self._rooms.get(room, ()):
                    await self._raw(
                        "EVAL", _LEAVE, 2, self._key("room", room), self._key("roomnodes", room),
                        self._node_id, peer_id, self._prefix, room,
                    )  # fmt: skip
                    stale.append((room, peer_id))
        return stale

    async def _give_up(self, peer_id: str) -> None:
        assert self._node is not None
        await self._node.hand_over(peer_id, Proof(None, True))

    async def _renew(self) -> None:
        await self._raw("SET", self._key("alive", self._node_id), b"1", "PX", self._lease_ms)
        await self._raw("SADD", f"{self._prefix}:nodes", self._node_id)

    async def _heartbeats(self) -> None:
        while True:
            await self._renew()
            if self._dirty:
                self._dirty = False
                for room, peer in await self._reconcile():
                    self._announce_leave(room, peer)
            reaped = await self._raw("EVAL", _REAP, 0, self._prefix, self._node_id, "")
            for room, peer in _pairs(reaped):
                log.info("the node of %s is gone: it leaves %s", peer, room)
                self._announce_leave(room, peer)
            await asyncio.sleep(self._heartbeat)

    async def _announce_when_heard(self, stale: list[tuple[str, str]]) -> None:
        """Announce leaves found after an outage once the other nodes listen again.

        They went through the same outage and may still be reconnecting: a
        frame published to a channel nobody listens on is lost. Wait (at most
        a lease) until every registered node has its channel subscribed.
        """
        deadline = asyncio.get_running_loop().time() + self._lease_ms / 1000
        while asyncio.get_running_loop().time() < deadline:
            try:
                nodes = [_text(n) for n in await self._raw("SMEMBERS", f"{self._prefix}:nodes")]
                counts = await self._raw("PUBSUB", "NUMSUB", *map(self._channel, nodes))
                if all(isinstance(n, int) and n > 0 for _channel, n in _pairs_raw(counts)):
                    break
            except _ERRORS:
                pass
            await asyncio.sleep(self._heartbeat / 2)
        for room, peer_id in stale:
            self._announce_leave(room, peer_id)

    def _announce_leave(self, room: str, peer_id: str) -> None:
        """Presence ``leave`` for a member this node removed from the registry."""
        assert self._node is not None
        frame = _presence_leave(room, peer_id)
        self._node.deliver_room(room, frame, peer_id, True)
        self._post(
            "EVAL", _PUBLISH, 1, self._key("roomnodes", room),
            self._channel(""), wire.encode_room(room, frame, peer_id, True), self._node_id,
        )  # fmt: skip

    async def _probe_once(self) -> None:
        nonce = secrets.token_hex(8)
        self._probe_nonce = nonce
        self._probe_heard.clear()
        heard = await self._submit(
            ("PUBLISH", self._channel(self._node_id), wire.encode_probe(nonce))
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

    async def _writer(self, conn: AbstractConnection) -> None:
        """Write queued commands to the one ordered connection, without waiting for replies."""
        while True:
            batch = [await self._ops.get()]
            while len(batch) < _BATCH and not self._ops.empty():
                batch.append(self._ops.get_nowait())
            self._inflight.extend(batch)
            self._replies_due.set()
            await conn.send_packed_command(
                conn.pack_commands([args for args, _future in batch]), check_health=False
            )

    async def _replies(self, conn: AbstractConnection) -> None:
        """Read the writer's replies, in order, and hand each to its caller."""
        while True:
            if not self._inflight:
                self._replies_due.clear()
                await self._replies_due.wait()
                continue
            try:
                result = await conn.read_response(timeout=self._timeout)
            except ResponseError as exc:
                result = exc
            args, future = self._inflight.popleft()
            if isinstance(result, Exception):
                log.warning("backplane refused %s: %s", args[0], result)
                if future is not None and not future.done():
                    future.set_exception(BrokerUnavailable("the backplane refused"))
            elif future is not None and not future.done():
                future.set_result(result)

    async def _reader(self, pubsub: aioredis.client.PubSub) -> None:
        # A blocking read: a connection that hangs without closing is caught
        # by the probe, which then cancels this task.
        async for message in pubsub.listen():
            if message is None or message.get("type") != "message":
                continue
            data = message.get("data")
            if not isinstance(data, bytes):
                continue
            try:
                decoded = wire.decode(data)
            except wire.WireError as exc:
                log.warning("dropped a malformed message from the backplane: %s", exc)
                continue
            try:
                await self._handle(decoded)
            except Exception:
                log.exception("error handling a backplane message")

    # --- incoming ----------------------------------------------------------------------

    async def _handle(self, message: wire.Message) -> None:
        node = self._node
        assert node is not None
        if isinstance(message, wire.Deliver):
            result = node.deliver(message.peer, message.frame, message.undelivered)
            self._post(
                "PUBLISH", self._channel(message.reply_to), wire.encode_ack(message.cid, result)
            )
        elif isinstance(message, wire.Ack):
            ack = self._acks.get(message.cid)
            if ack is not None and not ack.done():
                ack.set_result(message.result)
        elif isinstance(message, wire.RoomFrame):
            node.deliver_room(message.room, message.frame, message.exclude, message.presence_only)
        elif isinstance(message, wire.HandoverRequest):
            await self._answer_handover(message)
        elif isinstance(message, wire.HandoverReply):
            future = self._pending.get(message.cid)
            if future is not None and not future.done():
                future.set_result(message.handover)
        elif isinstance(message, wire.Probe) and message.nonce == self._probe_nonce:
            self._probe_heard.set()

    async def _answer_handover(self, request: wire.HandoverRequest) -> None:
        assert self._node is not None
        handover: Handover | None = None
        try:
            async with asyncio.timeout(self._timeout):
                handover = await self._node.hand_over(request.peer, request.proof)
        except TimeoutError:
            log.warning("handing over %s took too long", request.peer)
        if handover is not None:
            self._peers.discard(request.peer)
            for room in handover.rooms:
                self._forget_membership(room, request.peer)
        elif request.peer not in self._peers:
            # The registry names this node but it holds no such peer (a claim
            # that timed out after all): free the id.
            self._post(
                "EVAL", _RELEASE, 1, self._key("peer", request.peer),
                self._node_id, self._prefix, request.peer,
            )  # fmt: skip
        self._post(
            "PUBLISH",
            self._channel(request.reply_to),
            wire.encode_handover_reply(request.cid, handover),
        )

    def _spawn(self, work: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("backplane background task failed")

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: object) -> list[tuple[str, str]]:
    items = [_text(item) for item in flat] if isinstance(flat, list) else []
    return list(zip(items[::2], items[1::2], strict=True))


def _pairs_raw(reply: object) -> list[tuple[object, object]]:
    if isinstance(reply, dict):
        return list(reply.items())
    items = list(reply) if isinstance(reply, list | tuple) else []
    return list(zip(items[::2], items[1::2], strict=True))


def _presence_leave(room: str, peer: str) -> bytes:
    return codec.encode({"type": "presence", "room": room, "peer": peer, "event": "leave"})
