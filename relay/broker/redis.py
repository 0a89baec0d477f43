"""The Redis broker: nodes on several machines (or processes) as one relay.

Keys and channels (``P`` is ``--redis-prefix``, default ``relay``):

    P:node:{node}          channel: everything for one node (batches of frames
                           and acks, status queries, room frames, handover
                           request/reply, its own probe)
    P:alive:{node}         string with a TTL (the node lease), renewed by
                           heartbeat: "0" while the node registers, "1" once it serves
    P:nodes                set of nodes that registered (live or not yet reaped)
    P:peer:{peer}          string: the node holding the peer id
    P:held:{node}          hash: the peer ids a node holds -> the epoch of each hold
    P:room:{room}          hash: member peer -> its node
    P:roomnodes:{room}     hash: node -> how many members it has in the room
    P:rooms:{node}         set: rooms a node has members in (for reaping)

A node is alive while its lease is and somebody listens on its channel: a
node killed with -9 stops listening at once, so its ids are free for its
peers to register elsewhere without waiting for the lease.

Frames for peers on other nodes go through ``links`` (numbered per pair of
nodes, acknowledged in batches, every one answered exactly once, the holder
of each peer cached). What gathers for one node during one event-loop pass
leaves as one ``PUBLISH``. Room frames go only to the node channels of nodes
with members (``roomnodes``), looked up and published by one Lua script, so
there are no per-room subscriptions to manage and a node never hears rooms it
has no member in.

Everything that is published goes, in order, through one connection of its
own (``resp.Connection``, an asyncio protocol: what one event-loop pass
gathered is written at its end, in one write), so frames from one sender to
one target stay in order; the subscription is another such connection, whose
messages are handled as they are parsed. Registry commands use redis-py's
pool. Every call is bounded by ``broker_timeout_seconds`` and the frames
waiting for an answer by ``broker_queue``; while the backplane is down every
call raises ``BrokerUnavailable`` (a send is answered ``overloaded``) at once.

A supervisor task connects both, subscribes, registers the node (and, after
an outage, every peer and room membership it still holds), proves the
subscription with a probe, then runs the heartbeat (renews the lease, reaps
dead nodes and announces presence ``leave`` for their members) and the
periodic probe. When a connection closes or either task fails, the node is
marked down and the supervisor reconnects. After an outage, until every node
it knew is serving again (one lease at most), a peer that no node holds may
just not be registered again yet: sends to it are answered ``overloaded``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Coroutine, Iterable
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from relay.broker import wire
from relay.broker.base import BrokerUnavailable, NodeHandler
from relay.broker.links import Links
from relay.broker.resp import NOT_SENT, Connection, Done, Fate
from relay.protocol import codec
from relay.values import Answer, Delivery, Handover, Proof, Undelivered

log = logging.getLogger("relay.broker.redis")

_RECANCEL_SECONDS = 0.5
_ERRORS = (RedisError, OSError, TimeoutError, asyncio.TimeoutError, BrokerUnavailable)

# KEYS[1] peer key; ARGV: node, prefix, peer, epoch, "1" when a holder that does
# not listen counts as alive (re-registering after an outage: it may be too).
_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. ':alive:' .. cur) == 1 and
   (ARGV[5] == '1' or redis.call('PUBSUB', 'NUMSUB', ARGV[2] .. ':node:' .. cur)[2] > 0) then
  return cur
end
if cur and cur ~= ARGV[1] then redis.call('HDEL', ARGV[2] .. ':held:' .. cur, ARGV[3]) end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', ARGV[2] .. ':held:' .. ARGV[1], ARGV[3], ARGV[4])
return false
"""

# KEYS[1] peer key; ARGV: node, prefix, peer
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('HDEL', ARGV[2] .. ':held:' .. ARGV[1], ARGV[3])
return 1
"""

# KEYS[1] peer key; ARGV: prefix, peer. The holder and the epoch of its hold,
# if the holder is alive.
_LOCATE = """
local holder = redis.call('GET', KEYS[1])
if not holder or redis.call('EXISTS', ARGV[1] .. ':alive:' .. holder) == 0 or
   redis.call('PUBSUB', 'NUMSUB', ARGV[1] .. ':node:' .. holder)[2] == 0 then
  return false
end
return {holder, redis.call('HGET', ARGV[1] .. ':held:' .. holder, ARGV[2]) or '0'}
"""

# ARGV: prefix, this node. How many other nodes hold a live lease.
_OTHER_NODES = """
local n = 0
for _, node in ipairs(redis.call('SMEMBERS', ARGV[1] .. ':nodes')) do
  if node ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. ':alive:' .. node) == 1 then n = n + 1 end
end
return n
"""

# ARGV: prefix, this node, lease ms left at least. The other nodes serving now:
# registered, listening, and renewed their lease within the last heartbeats.
_SERVING = """
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', ARGV[1] .. ':nodes')) do
  local k = ARGV[1] .. ':alive:' .. node
  if node ~= ARGV[2] and redis.call('GET', k) == '1' and
     redis.call('PTTL', k) >= tonumber(ARGV[3]) and
     redis.call('PUBSUB', 'NUMSUB', ARGV[1] .. ':node:' .. node)[2] > 0 then
    table.insert(out, node)
  end
end
return out
"""

# KEYS[1] peer key; ARGV: node, prefix, peer, old holder, epoch
_TAKE = """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HDEL', ARGV[2] .. ':held:' .. ARGV[4], ARGV[3])
redis.call('HSET', ARGV[2] .. ':held:' .. ARGV[1], ARGV[3], ARGV[5])
return 1
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
  for _, peer in ipairs(redis.call('HKEYS', p .. ':held:' .. node)) do
    local k = p .. ':peer:' .. peer
    if redis.call('GET', k) == node then redis.call('DEL', k) end
  end
  redis.call('DEL', p .. ':held:' .. node)
end
return out
"""


class _Lost(Exception):
    """The connection to Redis failed a check; reconnect."""


class _Failed:
    """A handover that could not be answered (the backplane went down)."""


_FAILED = _Failed()

_Command = tuple[tuple[Any, ...], "Done | None"]


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
        self._incarnation = secrets.token_hex(6)
        self._epoch = time.time_ns() // 1000  # grows across restarts of a node
        self._links: Links | None = None
        self._up = False
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._cmd: aioredis.Redis | None = None
        self._writer: Connection | None = None  # the ordered connection, while open
        self._outbox: list[_Command] = []  # gathered this pass, written at its end
        self._pass_scheduled = False
        self._handovers: dict[str, asyncio.Future[Handover | _Failed | None]] = {}
        self._probe_nonce = ""
        self._probe_heard = asyncio.Event()
        self._connected = asyncio.Event()
        self._served = False  # came up at least once: a later coming up is a recovery
        self._known: set[str] = set()  # the other nodes serving, at the last heartbeat
        self._awaited: set[str] = set()  # nodes not serving again yet after an outage
        self._recovery_ends = 0.0
        # What this node holds, to re-register after Redis lost it.
        self._rooms: dict[str, set[str]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._stale_leaves: list[tuple[str, str]] = []
        self._dirty = False  # the registry may hold what this node let go

    # --- names ---------------------------------------------------------------

    def _channel(self, node_id: str) -> str:
        return f"{self._prefix}:node:{node_id}"

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}:{kind}:{name}"

    @property
    def _holds(self) -> dict[str, int]:
        assert self._links is not None, "broker used before start()"
        return self._links.holds

    # --- lifecycle -----------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._up

    async def start(self, node: NodeHandler) -> None:
        self._node = node
        self._node_id = node.node_id
        self._links = Links(
            node,
            self._incarnation,
            publish=self._publish_to,
            wake=self._end_pass_soon,
            lookup=self._lookup,
            alive=self._alive,
            spawn=self._spawn,
            timeout_seconds=self._timeout,
            give_up_seconds=2 * self._lease_ms / 1000,
            limit=self._queue_size,
        )
        options: dict[str, Any] = {
            # Every command is bounded by _call's own timeout. redis-py's
            # socket_timeout would wrap each write in asyncio.wait_for, which on
            # Python 3.11 can swallow a cancellation (the write finishes as the
            # cancel arrives), and a heartbeat that goes on hangs the node's stop.
            "socket_timeout": None,
            "socket_connect_timeout": self._timeout,
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": False,
        }
        self._cmd = aioredis.Redis.from_url(self._url, **options)
        loop = asyncio.get_running_loop()
        self._supervisor = loop.create_task(self._supervise())
        self._ticker = loop.create_task(self._ticks())
        # Serve at once if Redis is there; otherwise start anyway, not ready,
        # and keep trying in the background.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout * 3):
                await self._connected.wait()

    async def close(self) -> None:
        links = self._links
        if self._up and links is not None:
            # Answers on their way: give them a moment before answering overloaded.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timeout):
                    await links.settled()
        self._closing = True
        was_up = self._up
        await _stop(task for task in (self._supervisor, self._ticker) if task is not None)
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
        self._fail_handovers()
        if links is not None:
            links.close()
        if self._cmd is not None:
            with contextlib.suppress(Exception):
                await self._cmd.aclose()

    # --- the Broker interface ---------------------------------------------------

    async def claim(self, peer_id: str) -> str | None:
        # Held before Redis answers, so that a concurrent _reconcile never
        # takes a claim in flight for a stale entry, and frames routed here
        # with the new epoch wait for the hub to have the peer.
        holds = self._holds
        previous = holds.get(peer_id)
        epoch = holds[peer_id] = self._next_epoch()
        links = self._links
        assert links is not None
        links.arriving(peer_id)
        try:
            holder = await self._call(
                "EVAL", _CLAIM, 1, self._key("peer", peer_id),
                self._node_id, self._prefix, peer_id, epoch, "0",
            )  # fmt: skip
        except BrokerUnavailable:
            self._restore(peer_id, epoch, previous)
            raise
        if holder is not None:
            self._restore(peer_id, epoch, previous)
            return _text(holder)
        # The hub registers the peer as soon as this returns, before the
        # loop runs anything else: frames that waited go to it after that.
        asyncio.get_running_loop().call_soon(links.arrived, peer_id)
        return None

    def _restore(self, peer_id: str, epoch: int, previous: int | None) -> None:
        holds = self._holds
        if holds.get(peer_id) == epoch:
            if previous is None:
                del holds[peer_id]
            else:
                holds[peer_id] = previous
        assert self._links is not None
        self._links.arrived(peer_id)

    def _next_epoch(self) -> int:
        self._epoch += 1
        return self._epoch

    async def release(self, peer_id: str) -> None:
        # Forgetting never fails: what the registry could not be told now is
        # put right from this node's own state when it can (``_reconcile``).
        self._holds.pop(peer_id, None)
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
        found = await self._lookup(peer_id)
        return None if found is None else found[0]

    async def _lookup(self, peer_id: str) -> tuple[str, int] | None:
        found = await self._call(
            "EVAL", _LOCATE, 1, self._key("peer", peer_id), self._prefix, peer_id
        )
        if not found:
            return None
        node, epoch = found
        return _text(node), int(epoch)

    async def _alive(self, node_id: str) -> bool:
        return bool(await self._call("EXISTS", self._key("alive", node_id)))

    async def take_over(self, peer_id: str, holder: str, proof: Proof) -> Handover | None:
        cid = secrets.token_hex(8)
        future: asyncio.Future[Handover | _Failed | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._handovers[cid] = future
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
            self._handovers.pop(cid, None)
        if isinstance(handover, _Failed):
            raise BrokerUnavailable("the backplane went down during a handover")
        if handover is None:
            return None
        # The peer is ours now, whatever happens next: its state must not be
        # lost. Should the registry be unreachable, the reconnect registers it.
        epoch = self._holds[peer_id] = self._next_epoch()
        links = self._links
        assert links is not None
        links.arriving(peer_id)
        for room in handover.rooms:
            self._rooms.setdefault(room, set()).add(peer_id)
        try:
            await self._call(
                "EVAL", _TAKE, 1, self._key("peer", peer_id),
                self._node_id, self._prefix, peer_id, holder, epoch,
            )  # fmt: skip
            for room in handover.rooms:
                await self._join(room, peer_id, -1)
        except BrokerUnavailable:
            log.warning("took over %s but could not register it yet", peer_id)
        # As in claim: the hub has the peer before anything else runs.
        asyncio.get_running_loop().call_soon(links.arrived, peer_id)
        return handover

    def send(
        self, peer_id: str, frame: bytes, undelivered: Undelivered | None, answer: Answer
    ) -> None:
        if not self._up or self._links is None:
            answer(Delivery.OVERLOADED)
            return
        self._links.send(peer_id, frame, undelivered, answer)

    def publish(self, room: str, frame: bytes, exclude: str | None, presence_only: bool) -> None:
        if not self._up:
            if presence_only:
                # A presence event that cannot go out now: the other nodes learn
                # of a leave from _reconcile, and the node that is cut off is
                # the one a join would be refused on.
                self._dirty = True
                return
            raise BrokerUnavailable("the backplane is down")
        writer = self._writer
        if writer is not None and writer.unanswered + len(self._outbox) >= self._queue_size:
            raise BrokerUnavailable("the backplane is not keeping up")
        self._post(
            "EVAL", _PUBLISH, 1, self._key("roomnodes", room),
            self._channel(""), wire.encode_room(room, frame, exclude, presence_only),
            self._node_id,
        )  # fmt: skip

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

        def done(reply: Any) -> None:
            # Only ever a result, so no exception is left unretrieved if the
            # caller has stopped waiting.
            if not future.done():
                future.set_result(reply)

        self._command(args, done)
        try:
            async with asyncio.timeout(self._timeout):
                reply = await future
        except TimeoutError:
            raise BrokerUnavailable("the backplane did not answer") from None
        if isinstance(reply, Fate | hiredis.ReplyError):
            raise BrokerUnavailable("the backplane did not take it")
        return reply

    def _post(self, *args: Any) -> None:
        """Queue a command on the writer without waiting (room frames, replies)."""
        self._command(args, None)

    def _command(self, args: tuple[Any, ...], done: Done | None) -> None:
        """Queue a command behind everything sent before it (frames gathered too)."""
        assert self._links is not None
        self._links.flush()
        self._enqueue(args, done)

    def _publish_to(self, node_id: str, payload: bytes, done: Done) -> None:
        self._enqueue(("PUBLISH", self._channel(node_id), payload), done)

    def _enqueue(self, args: tuple[Any, ...], done: Done | None) -> None:
        if self._writer is None:
            log.debug("backplane down: dropped %s", args[0])
            if done is not None:
                done(NOT_SENT)
            return
        self._outbox.append((args, done))
        self._end_pass_soon()

    def _end_pass_soon(self) -> None:
        if not self._pass_scheduled:
            self._pass_scheduled = True
            asyncio.get_running_loop().call_soon(self._end_pass)

    def _end_pass(self) -> None:
        """Write what this event-loop pass gathered, in order, in one write."""
        self._pass_scheduled = False
        assert self._links is not None
        self._links.flush()
        outbox, self._outbox = self._outbox, []
        if outbox and self._writer is not None:
            self._writer.write(outbox)
        else:
            self._fail_unsent(outbox)

    def _fail_unsent(self, commands: list[_Command]) -> None:
        for _args, done in commands:
            if done is not None:
                done(NOT_SENT)

    def _fail_handovers(self) -> None:
        for future in self._handovers.values():
            if not future.done():
                future.set_result(_FAILED)

    # --- the supervisor ------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = 0.1
        while not self._closing:
            try:
                await self._run()
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
                self._fail_handovers()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _run(self) -> None:
        assert self._links is not None
        connections: list[Connection] = []
        loops: list[asyncio.Task[None]] = []
        try:
            async with asyncio.timeout(self._timeout * 3):
                subscriber = await Connection.open(self._url, self._received)
                connections.append(subscriber)
                writer = await Connection.open(self._url)
                connections.append(writer)
                await subscriber.call("SUBSCRIBE", self._channel(self._node_id))
            self._writer = writer
            await self._register()
            await self._probe_once()  # the subscription really works
            self._up = True
            self._connected.set()
            if self._served:
                # After an outage: until the nodes this one knew serve again,
                # a peer nobody holds may be one not registered again yet.
                self._awaited = set(self._known)
                self._recovery_ends = time.monotonic() + self._lease_ms / 1000
                self._links.recovering = bool(self._awaited)
            self._served = True
            stale, self._stale_leaves = self._stale_leaves, []
            if stale:
                self._spawn(self._announce_when_heard(stale))
            log.info("backplane up: node %s on %s", self._node_id, self._prefix)
            self._links.reconnected()
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
            self._up = False
            self._writer = None
            outbox, self._outbox = self._outbox, []
            self._fail_unsent(outbox)
            for connection in connections:
                connection.close()
            await _stop(loops)

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
        await self._renew(b"0")
        self._dirty = False
        self._stale_leaves = await self._reconcile()
        for peer_id, epoch in list(self._holds.items()):
            holder = await self._raw(
                "EVAL", _CLAIM, 1, self._key("peer", peer_id),
                self._node_id, self._prefix, peer_id, epoch, "1",
            )  # fmt: skip
            if holder is not None:
                # Another node took the id while this one was cut off: it wins.
                log.warning("%s was taken by %s during an outage", peer_id, _text(holder))
                self._holds.pop(peer_id, None)
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
        registered = await self._raw("HKEYS", self._key("held", self._node_id))
        for peer_id in {_text(item) for item in registered} - self._holds.keys():
            await self._raw(
                "EVAL", _RELEASE, 1, self._key("peer", peer_id),
                self._node_id, self._prefix, peer_id,
            )  # fmt: skip
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

    async def _renew(self, state: bytes) -> None:
        await self._raw("SET", self._key("alive", self._node_id), state, "PX", self._lease_ms)
        await self._raw("SADD", f"{self._prefix}:nodes", self._node_id)

    async def _heartbeats(self) -> None:
        # Serving nodes renewed their lease within the last two heartbeats.
        recent = max(0, self._lease_ms - int(2 * self._heartbeat * 1000))
        while True:
            await self._renew(b"1")
            if self._dirty:
                self._dirty = False
                for room, peer in await self._reconcile():
                    self._announce_leave(room, peer)
            reaped = await self._raw("EVAL", _REAP, 0, self._prefix, self._node_id, "")
            for room, peer in _pairs(reaped):
                log.info("the node of %s is gone: it leaves %s", peer, room)
                self._announce_leave(room, peer)
            serving = {
                _text(n)
                for n in await self._raw("EVAL", _SERVING, 0, self._prefix, self._node_id, recent)
            }
            self._known = serving
            if self._awaited:
                self._awaited -= serving
                if not self._awaited or time.monotonic() > self._recovery_ends:
                    self._awaited = set()
                    assert self._links is not None
                    self._links.recovering = False
                    log.info("every node is back: the cluster view is whole again")
            await asyncio.sleep(self._heartbeat)

    async def _ticks(self) -> None:
        """Ask about late answers and give up past the bound, whether connected or not."""
        links = self._links
        assert links is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(self._heartbeat, self._timeout) / 2)
            writer = self._writer
            oldest = writer.oldest if writer is not None else None
            if writer is not None and oldest is not None and loop.time() - oldest > self._timeout:
                log.warning("Redis has not answered for %.1f s: reconnecting", self._timeout)
                writer.close()  # the supervisor reconnects
            links.tick(self._writer is not None)

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

    # --- incoming ----------------------------------------------------------------------

    def _handle(self, message: wire.Message) -> None:
        links = self._links
        assert self._node is not None and links is not None
        if isinstance(message, wire.Batch):
            links.received(message)
        elif isinstance(message, wire.RoomFrame):
            self._node.deliver_room(
                message.room, message.frame, message.exclude, message.presence_only
            )
        elif isinstance(message, wire.Status):
            links.status(message)
        elif isinstance(message, wire.HandoverRequest):
            self._spawn(self._answer_handover(message))
        elif isinstance(message, wire.HandoverReply):
            future = self._handovers.get(message.cid)
            if future is not None and not future.done():
                future.set_result(message.handover)
        elif isinstance(message, wire.Probe) and message.nonce == self._probe_nonce:
            self._probe_heard.set()

    async def _answer_handover(self, request: wire.HandoverRequest) -> None:
        assert self._node is not None and self._links is not None
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
            self._holds.pop(request.peer, None)
            for room in handover.rooms:
                self._forget_membership(room, request.peer)
        elif request.peer not in self._holds:
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

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("backplane background task failed")

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def _stop(tasks: Iterable[asyncio.Task[Any]]) -> None:
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
