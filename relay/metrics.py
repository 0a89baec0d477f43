"""Prometheus metrics of one relay node.

Each app gets its own registry, so several apps (tests, workers) never share
counters. Label children used on the hot path are bound once, up front.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ENVELOPE_TYPES = ("hello", "refresh", "send", "pub", "join", "leave", "ping")
OUT_KINDS = ("welcome", "msg", "ok", "err", "presence", "pong")


class Metrics:
    """The node's counters, gauges and histograms, on a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("relay_connections", "Open WebSocket connections.", registry=r)
        self.peers = Gauge("relay_peers", "Registered peers, live or resumable.", registry=r)
        self.rooms = Gauge("relay_rooms", "Rooms with a member on this node.", registry=r)
        self.broker_up = Gauge("relay_broker_up", "1 while the backplane is reachable.", registry=r)
        messages_in = Counter(
            "relay_messages_in", "Envelopes received, by type.", ["type"], registry=r
        )
        bytes_in = Counter("relay_bytes_in", "Bytes received, by type.", ["type"], registry=r)
        messages_out = Counter(
            "relay_messages_out", "Envelopes sent, by type.", ["type"], registry=r
        )
        bytes_out = Counter("relay_bytes_out", "Bytes sent, by type.", ["type"], registry=r)
        self.errors = Counter("relay_errors", "err envelopes sent, by code.", ["code"], registry=r)
        self.disconnects = Counter(
            "relay_disconnects", "Sessions closed by the relay, by reason.", ["reason"], registry=r
        )
        self.drops = Counter(
            "relay_queue_drops",
            "Frames refused by a full queue, by reason.",
            ["reason"],
            registry=r,
        )
        self.routing_seconds = Histogram(
            "relay_routing_seconds",
            "Time from a frame's arrival to its delivery into every target's queue.",
            buckets=(0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01),
            registry=r,
        )
        self.in_counters = {
            kind: (messages_in.labels(kind), bytes_in.labels(kind)) for kind in ENVELOPE_TYPES
        }
        self.out_counters = {
            kind: (messages_out.labels(kind), bytes_out.labels(kind)) for kind in OUT_KINDS
        }
        self.invalid_in = (messages_in.labels("invalid"), bytes_in.labels("invalid"))
