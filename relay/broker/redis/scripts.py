"""The registry's layout in Redis: key and channel names, and the Lua scripts over them.

Multi-key steps are scripts, so each is atomic. They compute some key names
from the prefix (``ARGV``), which works on one Redis (or a replicated one)
but not on Redis Cluster. The package's docstring lists the keys.
"""

from __future__ import annotations


class Keys:
    """The names of one cluster's keys and channels (``prefix`` is ``--redis-prefix``)."""

    __slots__ = ("nodes", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes = f"{prefix}:nodes"  # the set of nodes that registered

    def channel(self, node_id: str) -> str:
        """The channel of node ``node_id`` (with ``""``: what every node channel starts with)."""
        return f"{self.prefix}:node:{node_id}"

    def key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"


# KEYS[1] peer key; ARGV: node, prefix, peer, epoch, "1" when a holder that does
# not listen counts as alive (re-registering after an outage: it may be too).
CLAIM = """
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
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('HDEL', ARGV[2] .. ':held:' .. ARGV[1], ARGV[3])
return 1
"""

# KEYS[1] peer key; ARGV: prefix, peer. The holder and the epoch of its hold,
# if the holder is alive.
LOCATE = """
local holder = redis.call('GET', KEYS[1])
if not holder or redis.call('EXISTS', ARGV[1] .. ':alive:' .. holder) == 0 or
   redis.call('PUBSUB', 'NUMSUB', ARGV[1] .. ':node:' .. holder)[2] == 0 then
  return false
end
return {holder, redis.call('HGET', ARGV[1] .. ':held:' .. holder, ARGV[2]) or '0'}
"""

# ARGV: prefix, this node. How many other nodes hold a live lease.
OTHER_NODES = """
local n = 0
for _, node in ipairs(redis.call('SMEMBERS', ARGV[1] .. ':nodes')) do
  if node ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. ':alive:' .. node) == 1 then n = n + 1 end
end
return n
"""

# ARGV: prefix, this node, lease ms left at least. The other nodes serving now:
# registered, listening, and renewed their lease within the last heartbeats.
SERVING = """
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
TAKE = """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HDEL', ARGV[2] .. ':held:' .. ARGV[4], ARGV[3])
redis.call('HSET', ARGV[2] .. ':held:' .. ARGV[1], ARGV[3], ARGV[5])
return 1
"""

# KEYS[1] roomnodes key; ARGV: channel prefix, payload, this node
PUBLISH = """
local n = 0
for _, node in ipairs(redis.call('HKEYS', KEYS[1])) do
  if node ~= ARGV[3] then n = n + redis.call('PUBLISH', ARGV[1] .. node, ARGV[2]) end
end
return n
"""

# KEYS[1] room key, KEYS[2] roomnodes key; ARGV: node, peer, limit (-1: none), prefix, room.
# 0: refused, the room is full; 1: a member (already, moved from another node,
# or with others); 2: the first member, the room was empty. Scripts run one at
# a time, so of joins on several nodes at once exactly one sees the room empty.
JOIN = """
local cur = redis.call('HGET', KEYS[1], ARGV[2])
if cur == ARGV[1] then return 1 end
local n = redis.call('HLEN', KEYS[1])
local limit = tonumber(ARGV[3])
if not cur and limit >= 0 and n >= limit then return 0 end
if cur and redis.call('HINCRBY', KEYS[2], cur, -1) <= 0 then redis.call('HDEL', KEYS[2], cur) end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[1])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('SADD', ARGV[4] .. ':rooms:' .. ARGV[1], ARGV[5])
if n == 0 then return 2 end
return 1
"""

# KEYS[1] room key, KEYS[2] roomnodes key; ARGV: node, peer, prefix, room.
# 0: not this node's member; 1: left; 2: left, and the room is empty now.
LEAVE = """
if redis.call('HGET', KEYS[1], ARGV[2]) ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
if redis.call('HINCRBY', KEYS[2], ARGV[1], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('SREM', ARGV[3] .. ':rooms:' .. ARGV[1], ARGV[4])
end
if redis.call('EXISTS', KEYS[1]) == 0 then return 2 end
return 1
"""

# KEYS[1] room key; ARGV: prefix. Members whose node is alive.
MEMBERS = """
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

# ARGV: prefix, node, its state ("0" registering, "1" serving), lease ms.
# Renews the node's lease and its place in the node set; 1 when a reap of its
# lease had removed it (and its peers and memberships) since it last renewed.
RENEW = """
local reaped = redis.call('DEL', ARGV[1] .. ':reaped:' .. ARGV[2])
redis.call('SET', ARGV[1] .. ':alive:' .. ARGV[2], ARGV[3], 'PX', ARGV[4])
redis.call('SADD', ARGV[1] .. ':nodes', ARGV[2])
return reaped
"""

# ARGV: prefix, this node, forced node ('' for none). Removes every node whose
# lease is gone (or the forced one): its peers and memberships. It takes the
# node out of the node set as it removes it, so what it returns comes back to
# one node only. A node whose lease ended is marked reaped (P:reaped:{node}),
# for its RENEW to tell it should it come back within a day. Returns, per node
# removed, {node, {peers it held}, {room, peer, room, peer...} its memberships,
# {rooms its removal left without a member}}.
REAP = """
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
  if ARGV[3] == '' then redis.call('SET', p .. ':reaped:' .. node, '1', 'EX', 86400) end
  local peers, members, emptied = {}, {}, {}
  for _, room in ipairs(redis.call('SMEMBERS', p .. ':rooms:' .. node)) do
    local rk = p .. ':room:' .. room
    local all = redis.call('HGETALL', rk)
    local removed = false
    for i = 1, #all, 2 do
      if all[i + 1] == node then
        redis.call('HDEL', rk, all[i])
        table.insert(members, room)
        table.insert(members, all[i])
        removed = true
      end
    end
    redis.call('HDEL', p .. ':roomnodes:' .. room, node)
    if removed and redis.call('EXISTS', rk) == 0 then table.insert(emptied, room) end
  end
  redis.call('DEL', p .. ':rooms:' .. node)
  for _, peer in ipairs(redis.call('HKEYS', p .. ':held:' .. node)) do
    local k = p .. ':peer:' .. peer
    if redis.call('GET', k) == node then
      redis.call('DEL', k)
      table.insert(peers, peer)
    end
  end
  redis.call('DEL', p .. ':held:' .. node)
  table.insert(out, {node, peers, members, emptied})
end
return out
"""
