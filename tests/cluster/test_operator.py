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
    assert dataclasses.replace(state, rate_tokens=0) == dataclasses.replace(here, rate_tokens=0)
    assert await operator.inspect_anywhere("nobody") is None
    assert operator.inspect("alice") is None  # a holds no such peer itself
