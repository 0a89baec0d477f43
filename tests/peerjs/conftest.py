"""The cluster fixtures of tests/cluster, for PeerJS peers on several nodes."""

from tests.cluster.conftest import cluster, make_broker

__all__ = ["cluster", "make_broker"]
