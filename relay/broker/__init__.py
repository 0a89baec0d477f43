"""Brokers: how a node reaches the rest of the cluster.

``Broker`` (in ``base``) is the one seam between the hub and the cluster. The
hub routes to its own peers itself and hands everything else to its broker;
it never asks which broker it has. ``MemoryBroker`` connects the hubs of one
process (a cluster of one node in production, several in tests).
"""

from relay.broker.base import (
    Broker,
    BrokerUnavailable,
    Delivery,
    Handover,
    NodeHandler,
    Proof,
    Undelivered,
)
from relay.broker.memory import MemoryBroker

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "Delivery",
    "Handover",
    "MemoryBroker",
    "NodeHandler",
    "Proof",
    "Undelivered",
    "create_broker",
]


def create_broker(url: str) -> Broker:
    """Build the broker named by a ``--broker`` value."""
    if url == "memory":
        return MemoryBroker()
    raise ValueError(f"unknown broker {url!r}: expected 'memory'")
