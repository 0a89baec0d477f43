"""Brokers: how a node reaches the rest of the cluster.

``Broker`` (in ``base``) is the one seam between the hub and the cluster. The
hub routes to its own peers itself and hands everything else to its broker;
it never asks which broker it has. ``MemoryBroker`` connects the hubs of one
process (a cluster of one node in production, several in tests).
"""

from relay.broker.base import (
    Broker,
    BrokerUnavailable,
    NodeHandler,
    NodeUnreachable,
    RequestFailed,
    RequestHandler,
)
from relay.broker.memory import MemoryBroker
from relay.settings import Settings

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "MemoryBroker",
    "NodeHandler",
    "NodeUnreachable",
    "RequestFailed",
    "RequestHandler",
    "create_broker",
]


def create_broker(url: str, settings: Settings | None = None) -> Broker:
    """Build the broker named by a ``--broker`` value (``memory`` or a Redis URL)."""
    if url == "memory":
        return MemoryBroker()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from relay.broker.redis import RedisBroker

        settings = settings or Settings()
        return RedisBroker(
            url,
            prefix=settings.redis_prefix,
            lease_seconds=settings.node_lease_seconds,
            heartbeat_seconds=settings.heartbeat_seconds,
            probe_seconds=settings.probe_seconds,
            timeout_seconds=settings.broker_timeout_seconds,
            queue_size=settings.broker_queue,
        )
    raise ValueError(f"unknown broker {url!r}: expected 'memory' or redis://host:port/db")
