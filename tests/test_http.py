"""The HTTP endpoints on the relay's port."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import RelayFactory, RunningRelay
from tests.peers import join_as

pytestmark = pytest.mark.anyio


async def test_health_and_readiness(relay: RunningRelay) -> None:
    async with httpx.AsyncClient(base_url=relay.http_url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "node": relay.hub.node_id}
        relay.hub.accepting = False
        assert (await http.get("/readyz")).status_code == 503


async def test_metrics_count_what_happened(relay: RunningRelay) -> None:
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    await alice.request({"type": "send", "to": "bob", "d": b"12345", "id": 1})
    await bob.recv()
    await alice.request({"type": "send", "to": "nobody", "d": 1, "id": 2})
    await alice.send_raw(b"\xc1")
    await alice.recv()
    async with httpx.AsyncClient(base_url=relay.http_url) as http:
        text = (await http.get("/metrics")).text
    lines = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert lines["relay_connections"] == "2.0"
    assert lines["relay_peers"] == "2.0"
    assert lines['relay_messages_in_total{type="send"}'] == "2.0"
    assert lines['relay_messages_in_total{type="invalid"}'] == "1.0"
    assert lines['relay_messages_out_total{type="msg"}'] == "1.0"
    assert lines['relay_errors_total{code="peer-offline"}'] == "1.0"
    assert lines['relay_errors_total{code="bad-envelope"}'] == "1.0"
    assert lines["relay_routing_seconds_count"] == "2.0"  # every send routed, reached or not
    assert lines["relay_broker_up"] == "1.0"


async def test_a_draining_relay_refuses_new_sockets_with_503(relay: RunningRelay) -> None:
    from websockets.exceptions import InvalidStatus

    from tests.peers import open_peer

    relay.hub.accepting = False
    with pytest.raises(InvalidStatus) as refused:
        await open_peer(relay.url)
    assert refused.value.response.status_code == 503


async def test_client_js_answers_cors_per_the_origin_allow_list(
    relay_factory: RelayFactory,
) -> None:
    # A page of another origin imports /client.js as a module script: a CORS fetch.
    listed = await relay_factory(origins=("https://app.example",))
    async with httpx.AsyncClient(base_url=listed.http_url) as http:
        allowed = await http.get("/client.js", headers={"Origin": "https://app.example"})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "origin" in allowed.headers["vary"].lower()
        foreign = await http.get("/client.js", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in foreign.headers
    anyone = await relay_factory()
    async with httpx.AsyncClient(base_url=anyone.http_url) as http:
        page = await http.get("/client.js", headers={"Origin": "https://any.example"})
        assert page.headers["access-control-allow-origin"] == "*"
