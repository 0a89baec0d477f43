"""An operator on one node looks at a peer on another, over the broker's node requests."""

from __future__ import annotations

import dataclasses

import pytest

from relay.operator import Operator
from tests.cluster.conftest import Cluster
from tests.peers import join_as

pytestmark = pytest.mark.anyio


async def test_inspect_finds_a_peer_on_any_node(cluster: Cluster) -> None:
    a, b = await cluster(2)
    alice = await join_as(b.url, "alice")
    await alice.send({"type": "join", "room": "lobby", "id": 1})
    await alice.expect(type="ok", id=1)
    operator: Operator = a.app.state.operator
    state = await operator.inspect_anywhere("alice")
    assert state is not None
    assert state.node == b.hub.node_id and state.connected
    assert state.rooms == {"lobby": False}
    here = b.app.state.operator.inspect("alice")
    assert state.connected_seconds is not None and state.connected_seconds >= 0
    same = {"rate_tokens": 0, "connected_seconds": 0}  # both move with time
    assert dataclasses.replace(state, **same) == dataclasses.replace(here, **same)
    assert await operator.inspect_anywhere("nobody") is None
    assert operator.inspect("alice") is None  # a holds no such peer itself
