"""The Redis broker: nodes on several machines (or processes) as one relay.

Keys and channels (``P`` is ``--redis-prefix``, default ``relay``):

    P:node:{node}          channel: everything for one node (batches of frames
                           and acks, status queries, room frames, handover
                           request/reply, requests and replies, its own probe)
    P:alive:{node}         string with a TTL (the node lease), renewed by
                           heartbeat: "0" while the node registers, "1" once it serves
    P:nodes                set of nodes that registered (live or not yet reaped)
    P:peer:{peer}          string: the node holding the peer id
    P:held:{node}          hash: the peer ids a node holds -> the epoch of each hold
    P:room:{room}          hash: member peer -> its node
    P:roomnodes:{room}     hash: node -> how many members it has in the room
    P:rooms:{node}         set: rooms a node has members in (for reaping)
    P:reaped:{node}        string, for a day: a reap removed the node when its lease
                           ended; taken by its next renewal (it was only cut off)

A node is alive while its lease is and somebody listens on its channel: a
node killed with -9 stops listening at once, so its ids are free for its
peers to register elsewhere without waiting for the lease.

Frames for peers on other nodes go through ``relay.broker.redis.links`` (numbered
per pair of nodes, acknowledged in batches, every one answered exactly once,
the holder of each peer cached). What gathers for one node during one
event-loop pass leaves as one ``PUBLISH``. Room frames go only to the node
channels of nodes with members (``roomnodes``), looked up and published by
one Lua script, so there are no per-room subscriptions to manage and a node
never hears rooms it has no member in. Frames waiting for an answer are
bounded by ``broker_queue``; while the backplane is down every call raises
``BrokerUnavailable`` (a send is answered ``overloaded``) at once.

One concern per module:

    scripts     key and channel names, and the Lua scripts over them
    commands    the command pipeline: the pool, the ordered writer, one write per pass
    registry    claim, release, locate, join, leave, members; epochs; re-registering
    supervisor  connect and reconnect, heartbeats (lease, reaping), probes, ticks
    handover    moving a peer between nodes
    requests    requests to a named node and their replies (``Broker.request``)
    broker      ``RedisBroker``: the ``Broker`` interface, and what arrives on the channel
"""

from relay.broker.redis.broker import RedisBroker

__all__ = ["RedisBroker"]
