"""relay.upgrade: the native socket and the PeerJS socket are let in, and refused, the same way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from relay.admission import Admission
from relay.broker import MemoryBroker
from relay.hub import Hub
from relay.metrics import Metrics
from relay.settings import Settings
from relay.upgrade import Gate
from tests.conftest import RelayFactory, RunningRelay
from tests.peerjs.client import join_peerjs, peerjs_url

pytestmark = pytest.mark.anyio

URLS: dict[str, Callable[[RunningRelay], str]] = {
    "native": lambda relay: relay.url,
    "peerjs": lambda relay: peerjs_url(relay, id="alice", token="t"),
}


async def refusal(url: str, **kwargs: Any) -> tuple[int, str, str | None]:
    """Status, body and Retry-After of the HTTP answer that refuses the upgrade."""
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, **kwargs):
            pass
    response = refused.value.response
    return response.status_code, response.body.decode(), response.headers.get("Retry-After")


@pytest.mark.parametrize("endpoint", URLS)
async def test_a_draining_node_refuses_503_come_back_in_a_second(
    relay: RunningRelay, endpoint: str
) -> None:
    relay.hub.accepting = False
    try:
        assert await refusal(URLS[endpoint](relay)) == (503, "the relay is shutting down", "1")
    finally:
        relay.hub.accepting = True


@pytest.mark.parametrize("endpoint", URLS)
async def test_a_foreign_origin_is_refused_403(relay_factory: RelayFactory, endpoint: str) -> None:
    relay = await relay_factory(origins=("https://app.example",))
    evil = Origin("https://evil.example")
    assert await refusal(URLS[endpoint](relay), origin=evil) == (403, "origin not allowed", None)


async def test_both_endpoints_share_admission_and_its_answers(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(max_connections=1)
    holder = await join_peerjs(relay, "holder")  # a PeerJS socket takes the node's one slot
    full = (503, "the node is full, try again later", "5")
    for url in URLS.values():
        assert await refusal(url(relay)) == full
    assert relay.hub.metrics.refused.labels("node-full")._value.get() == 2
    await holder.close()


async def test_without_the_denial_extension_a_refusal_is_a_close() -> None:
    settings = Settings(origins=("https://app.example",), max_connections=1)
    hub = Hub(settings, MemoryBroker(), Metrics())
    hub.accepting = True
    gate = Gate(hub, Admission(settings))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(message)

    def scope(origin: bytes) -> dict[str, Any]:
        headers = [(b"origin", origin)]
        return {"type": "websocket", "headers": headers, "client": ("203.0.113.7", 1)}

    assert await gate.admit(scope(b"https://evil.example"), receive, send) is None
    assert sent.pop() == {"type": "websocket.close", "code": 1008}
    ip = await gate.admit(scope(b"https://app.example"), receive, send)
    assert ip == "203.0.113.7" and not sent
    assert await gate.admit(scope(b"https://app.example"), receive, send) is None  # node full
    assert sent.pop() == {"type": "websocket.close", "code": 1013}
    gate.release(ip)
    assert gate.admission.total == 0


async def test_an_endpoint_check_runs_after_the_shared_ones() -> None:
    hub = Hub(Settings(origins=("https://app.example",)), MemoryBroker(), Metrics())
    hub.accepting = True
    gate = Gate(hub, Admission(hub.settings), lambda scope: (400, "the endpoint's own"))
    foreign = {"type": "websocket", "headers": [(b"origin", b"https://evil.example")]}
    assert gate.check(foreign) == (403, "origin not allowed")
    assert gate.check({"type": "websocket", "headers": []}) == (400, "the endpoint's own")
    hub.accepting = False
    assert gate.check({"type": "websocket", "headers": []}) == (503, "the relay is shutting down")
