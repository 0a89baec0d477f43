"""Prometheus metrics of one relay node.

Each app gets its own registry, so several apps (tests, workers) never share
counters. The per-message counters and the routing histogram are plain
integers on the hot path, turned into Prometheus families only when
/metrics is scraped: a prometheus-client ``Counter.inc`` takes a lock, and
four of them per message cost more than the routing itself.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

ENVELOPE_TYPES = ("hello", "refresh", "send", "pub", "join", "leave", "ping", "invalid")
OUT_KINDS = ("welcome", "msg", "ok", "err", "presence", "pong")
ROUTING_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01)
# From an event to its webhook's 2xx: a batch's delay, then retries of up to minutes.
WEBHOOK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Tally:
    """A message count and a byte count, bumped without locks."""

    __slots__ = ("bytes", "messages")

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0

    def add(self, size: int) -> None:
        """Count one message of ``size`` bytes."""
        self.messages += 1
        self.bytes += size


class LatencyHistogram:
    """Cumulative-bucket histogram of seconds, exported at scrape time."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(ROUTING_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        self.counts[bisect_left(ROUTING_BUCKETS, seconds)] += 1
        self.sum += seconds


class Metrics(Collector):
    """The node's counters, gauges and histograms, on a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("relay_connections", "Open WebSocket connections.", registry=r)
        self.peers = Gauge("relay_peers", "Registered peers, live or resumable.", registry=r)
        self.rooms = Gauge("relay_rooms", "Rooms with a member on this node.", registry=r)
        self.broker_up = Gauge("relay_broker_up", "1 while the backplane is reachable.", registry=r)
        self.errors = Counter("relay_errors", "err envelopes sent, by code.", ["code"], registry=r)
        self.disconnects = Counter(
            "relay_disconnects", "Sessions closed by the relay, by reason.", ["reason"], registry=r
        )
        self.drops = Counter(
            "relay_queue_drops", "Frames refused by a full queue.", ["reason"], registry=r
        )
        self.refused = Counter(
            "relay_handshakes_refused",
            "WebSockets refused before the upgrade by admission, by reason.",
            ["reason"],
            registry=r,
        )
        self.http_refused = Counter(
            "relay_http_refused",
            "Connections and requests refused by the HTTP stage before any upgrade, by status.",
            ["status"],
            registry=r,
        )
        # Webhooks (relay.webhooks): a few events per connection, never per message.
        self.webhook_sent = Counter(
            "relay_webhook_events_sent", "Events a webhook URL answered 2xx for.", registry=r
        )
        self.webhook_retries = Counter(
            "relay_webhook_retries", "Webhook requests tried again after a failure.", registry=r
        )
        self.webhook_dropped = Counter(
            "relay_webhook_events_dropped",
            "Events given up: buffer (full), expired (retry time over), shutdown (drain bound).",
            ["reason"],
            registry=r,
        )
        for reason in ("buffer", "expired", "shutdown"):
            self.webhook_dropped.labels(reason)  # on /metrics from the start, at 0
        self.webhook_latency = Histogram(
            "relay_webhook_delivery_seconds",
            "Time from an event to the 2xx of the webhook request that carried it.",
            buckets=WEBHOOK_BUCKETS,
            registry=r,
        )
        # Proxies and RPC (relay.proxy): one per fresh hello, undecided join or pub, RPC call.
        self.proxy_requests = Counter(
            "relay_proxy_requests",
            "Requests to the backend by kind (connect, join, rpc) and outcome: ok (allowed, "
            "answered), refused, failed (no usable answer in time), busy (over a bound, not sent).",
            ["kind", "outcome"],
            registry=r,
        )
        self.received = {kind: Tally() for kind in ENVELOPE_TYPES}
        self.sent = {kind: Tally() for kind in OUT_KINDS}
        self.routing = LatencyHistogram()
        r.register(self)

    def collect(self) -> Iterator[Metric]:
        """Export the lock-free tallies (called by the registry at scrape time)."""
        for name, tallies, direction in (
            ("in", self.received, "received"),
            ("out", self.sent, "sent"),
        ):
            messages = CounterMetricFamily(
                f"relay_messages_{name}", f"Envelopes {direction}, by type.", labels=["type"]
            )
            size = CounterMetricFamily(
                f"relay_bytes_{name}", f"Bytes {direction}, by type.", labels=["type"]
            )
            for kind, tally in tallies.items():
                messages.add_metric([kind], tally.messages)
                size.add_metric([kind], tally.bytes)
            yield messages
            yield size
        cumulative = 0
        buckets = []
        for bound, count in zip(
            (*map(str, ROUTING_BUCKETS), "+Inf"), self.routing.counts, strict=True
        ):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "relay_routing_seconds",
            "Time from a frame's arrival to its delivery into every target's queue.",
            buckets=buckets,
            sum_value=self.routing.sum,
        )
