"""Admission before the upgrade: Origins, per-address and node caps, handshake rate, proxies."""

from __future__ import annotations

import logging
import pickle
from typing import Any

import anyio
import pytest
from websockets.exceptions import InvalidStatus

from relay.admission import AddressSet, Admission
from relay.session import Session
from relay.settings import Settings
from relay.upgrade import Refusal, refusal_messages
from tests.conftest import RelayFactory, RunningRelay
from tests.peers import RawPeer, join_as, open_peer

pytestmark = pytest.mark.anyio


async def refused_with(url: str, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as refused:
        await open_peer(url, **kwargs)
    response = refused.value.response
    return response.status_code, response.body.decode()


async def retry_after(url: str) -> str | None:
    with pytest.raises(InvalidStatus) as refused:
        await open_peer(url)
    return refused.value.response.headers.get("Retry-After")


def xff(value: str) -> dict[str, Any]:
    return {"additional_headers": {"X-Forwarded-For": value}}


async def released(relay: RunningRelay, total: int) -> None:
    """Wait until the node counts ``total`` sockets again."""
    endpoint = relay.app.state.relay_endpoint
    with anyio.fail_after(5):
        while endpoint.admission.total != total:  # noqa: ASYNC110 (no event for a release)
            await anyio.sleep(0.01)


# --- Origin ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "https://app.example.com.evil.com",
        "https://evil.example.com",
        "https://sub.app.example.com",
        "https://app.example.co",
        "null",
        "http://app.example.com",  # scheme mismatch
        "https://app.example.com:8443",  # port mismatch
        "wss://app.example.com",
        "https://app.example.com@evil.com",
        "https://evil.com/https://app.example.com",
        "",
    ],
)
async def test_foreign_and_look_alike_origins_get_403(
    relay_factory: RelayFactory, origin: str
) -> None:
    relay = await relay_factory(origins=("https://app.example.com",))
    assert await refused_with(relay.url, origin=origin) == (403, "origin not allowed")


@pytest.mark.parametrize(
    "origin", ["https://app.example.com", "HTTPS://APP.EXAMPLE.COM", "https://app.example.com/"]
)
async def test_the_allowed_origin_passes(relay_factory: RelayFactory, origin: str) -> None:
    relay = await relay_factory(origins=("https://app.example.com",))
    peer = await open_peer(relay.url, origin=origin)
    await peer.close()


async def test_an_explicit_port_must_match(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(origins=("http://localhost:3000",))
    await (await open_peer(relay.url, origin="http://localhost:3000")).close()
    for origin in ("http://localhost", "http://localhost:3001", "https://localhost:3000"):
        assert await refused_with(relay.url, origin=origin) == (403, "origin not allowed")


# --- caps and rate -------------------------------------------------------------------


# Loopback is exempt from the per-address limits by default; these tests opt in.
COUNT_LOOPBACK: dict[str, Any] = {"admission_exempt": ()}


async def test_too_many_sockets_from_one_address_get_429(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(max_connections_per_ip=2, **COUNT_LOOPBACK)
    first, _second = await open_peer(relay.url), await open_peer(relay.url)
    assert await refused_with(relay.url) == (429, "too many connections from your address")
    assert await retry_after(relay.url) == "5"
    await first.close()
    await released(relay, 1)
    await (await open_peer(relay.url)).close()


async def test_refused_handshakes_log_nothing_at_error_level(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # An attacker refused at the handshake rate must not be able to fill the log.
    relay = await relay_factory(max_connections_per_ip=1, **COUNT_LOOPBACK)
    held = await open_peer(relay.url)
    caplog.set_level(logging.INFO)
    for _ in range(20):
        assert (await refused_with(relay.url))[0] == 429
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await held.close()


async def test_a_socket_counts_until_its_connection_is_gone(
    relay_factory: RelayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client that never reads the relay's close still holds its slot until
    # the relay aborts it (close_timeout_seconds later), not a moment less.
    relay = await relay_factory(
        max_connections_per_ip=2,
        hello_timeout_seconds=0.2,
        close_timeout_seconds=1.0,
        **COUNT_LOOPBACK,
    )
    closing = anyio.Event()
    close_transport = Session._close_transport

    def spy(session: Session) -> None:
        close_transport(session)
        closing.set()

    monkeypatch.setattr(Session, "_close_transport", spy)
    deaf = await open_peer(relay.url)
    deaf.ws.transport.pause_reading()  # it will never see the close
    other = await join_as(relay.url, "other")
    with anyio.fail_after(5):
        await closing.wait()  # no hello in time: the relay closes the deaf socket
    assert await refused_with(relay.url) == (429, "too many connections from your address")
    await released(relay, 1)  # aborted after close_timeout_seconds
    await (await open_peer(relay.url)).close()
    await other.close()
    deaf.ws.transport.abort()


async def test_handshake_rate_exceeded_gets_429(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(handshake_rate_per_second=0.01, handshake_burst=3, **COUNT_LOOPBACK)
    for _ in range(3):
        await (await open_peer(relay.url)).close()
    assert await refused_with(relay.url) == (
        429,
        "too many handshakes from your address, slow down",
    )


async def test_the_node_cap_gets_503(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(max_connections=2)
    peers = [await open_peer(relay.url), await open_peer(relay.url)]
    assert await refused_with(relay.url) == (503, "the node is full, try again later")
    assert relay.hub.metrics.refused.labels("node-full")._value.get() == 1
    assert await retry_after(relay.url) == "5"
    await peers[0].close()
    await released(relay, 1)
    await (await open_peer(relay.url)).close()


def test_refusals_are_1013_where_no_http_response_is_possible() -> None:
    refusal = Refusal(503, "full", close_code=1013)
    sent = refusal_messages({"type": "websocket", "extensions": {}}, refusal)
    assert sent == [{"type": "websocket.close", "code": 1013}]


# --- forwarded headers ---------------------------------------------------------------


async def test_a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(max_connections_per_ip=1, trusted_proxies=(), **COUNT_LOOPBACK)
    held = await open_peer(relay.url, **xff("1.1.1.1"))
    assert await refused_with(relay.url, **xff("2.2.2.2")) == (
        429,
        "too many connections from your address",
    )
    await held.close()


async def test_a_trusted_proxy_is_believed(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(max_connections_per_ip=1, trusted_proxies=("127.0.0.0/8",))
    held: list[RawPeer] = [
        await open_peer(relay.url, **xff("1.1.1.1")),
        await open_peer(relay.url, **xff("2.2.2.2")),
    ]
    assert (await refused_with(relay.url, **xff("1.1.1.1")))[0] == 429
    # a client prepending a spoofed address gains nothing: the right-most untrusted counts
    assert (await refused_with(relay.url, **xff("9.9.9.9, 1.1.1.1")))[0] == 429
    # hops through further trusted proxies are skipped
    assert (await refused_with(relay.url, **xff("2.2.2.2, 127.0.0.5")))[0] == 429
    held.append(await open_peer(relay.url, **xff("3.3.3.3, 127.0.0.5")))
    for peer in held:
        await peer.close()


def scope(peer: str, *forwarded: str) -> dict[str, Any]:
    return {
        "client": (peer, 50000),
        "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded],
    }


def test_client_ip_rules() -> None:
    admission = Admission(Settings(trusted_proxies=("10.0.0.0/8", "::1")))
    assert admission.client_ip(scope("203.0.113.9", "1.2.3.4")) == "203.0.113.9"
    assert admission.client_ip(scope("10.0.0.1", "1.2.3.4")) == "1.2.3.4"
    assert admission.client_ip(scope("10.0.0.1", "6.6.6.6, 1.2.3.4")) == "1.2.3.4"
    assert admission.client_ip(scope("10.0.0.1", "6.6.6.6", "1.2.3.4, 10.0.0.2")) == "1.2.3.4"
    assert admission.client_ip(scope("10.0.0.1", "10.0.0.3, 10.0.0.2")) == "10.0.0.3"
    assert admission.client_ip(scope("10.0.0.1", "garbage")) == "10.0.0.1"
    assert admission.client_ip(scope("10.0.0.1", "6.6.6.6, garbage, 10.0.0.2")) == "10.0.0.2"
    assert admission.client_ip(scope("10.0.0.1")) == "10.0.0.1"
    assert admission.client_ip(scope("::1", "[2001:db8::1]:443")) == "2001:db8::1"
    assert admission.client_ip(scope("::ffff:10.0.0.1", "1.2.3.4:80")) == "1.2.3.4"
    untrusting = Admission(Settings())
    assert untrusting.client_ip(scope("10.0.0.1", "1.2.3.4")) == "10.0.0.1"


def test_bad_trusted_proxies_are_refused() -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        Admission(Settings(trusted_proxies=("not-an-address",)))


def test_the_address_table_is_bounded() -> None:
    now = [0.0]
    admission = Admission(
        Settings(ip_table_size=3, handshake_rate_per_second=1, handshake_burst=1),
        clock=lambda: now[0],
    )
    for n in range(100):
        ip = f"192.0.2.{n}"
        assert admission.admit(ip) is None
        admission.release(ip)
    assert len(admission._buckets) == 3
    assert admission.per_ip == {}
    assert admission.total == 0
    assert admission.admit("192.0.2.99") == (
        429,
        "too many handshakes from your address, slow down",
        "ip-rate",
        1,
    )
    now[0] = 1.0
    assert admission.admit("192.0.2.99") is None


# --- loopback: trusted as a proxy and exempt from per-address caps by default -------


def test_loopback_is_a_trusted_proxy_by_default() -> None:
    admission = Admission(Settings())
    assert admission.client_ip(scope("127.0.0.1", "203.0.113.7")) == "203.0.113.7"
    assert admission.client_ip(scope("::1", "203.0.113.7")) == "203.0.113.7"
    assert admission.client_ip(scope("127.0.0.2", "203.0.113.7")) == "127.0.0.2"  # not listed
    assert admission.client_ip(scope("198.51.100.1", "203.0.113.7")) == "198.51.100.1"
    untrusting = Admission(Settings(trusted_proxies=()))
    assert untrusting.client_ip(scope("127.0.0.1", "203.0.113.7")) == "127.0.0.1"


def test_exempt_addresses_skip_the_per_address_caps_but_not_the_node_cap() -> None:
    admission = Admission(
        Settings(
            max_connections=5,
            max_connections_per_ip=1,
            handshake_rate_per_second=0.001,
            handshake_burst=1,
        )
    )
    local = ["127.0.0.1", "127.8.9.10", "::1", "127.0.0.1"]
    for ip in local:
        assert admission.admit(ip) is None
    assert admission.per_ip == {}
    assert admission.total == 4
    assert admission.admit("203.0.113.7") is None
    assert admission.admit("127.0.0.1") == (
        503,
        "the node is full, try again later",
        "node-full",
        5,
    )
    for ip in [*local, "203.0.113.7"]:
        admission.release(ip)
    assert (admission.total, admission.per_ip) == (0, {})


def test_the_exemption_is_configurable() -> None:
    admission = Admission(Settings(max_connections_per_ip=1, admission_exempt=("10.0.0.0/8",)))
    assert admission.admit("10.1.2.3") is None
    assert admission.admit("10.1.2.3") is None
    assert admission.admit("127.0.0.1") is None
    assert admission.admit("127.0.0.1") == (
        429,
        "too many connections from your address",
        "ip-cap",
        5,
    )
    nobody = Admission(Settings(max_connections_per_ip=1, admission_exempt=()))
    assert nobody.admit("127.0.0.1") is None
    assert nobody.admit("127.0.0.1") is not None


def test_the_rate_refusal_says_when_a_token_is_back() -> None:
    now = [0.0]
    admission = Admission(
        Settings(handshake_rate_per_second=0.25, handshake_burst=1, admission_exempt=()),
        clock=lambda: now[0],
    )
    assert admission.admit("203.0.113.7") is None
    refused = admission.admit("203.0.113.7")
    assert refused is not None and (refused.status, refused.retry_after) == (429, 4)
    now[0] = 2.5
    refused = admission.admit("203.0.113.7")
    assert refused is not None and refused.retry_after == 2  # 1.5 s, rounded up
    now[0] = 4.0
    assert admission.admit("203.0.113.7") is None


async def test_a_local_test_suite_is_not_throttled_by_default(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(
        max_connections_per_ip=2, handshake_rate_per_second=0.01, handshake_burst=2
    )
    held = [await open_peer(relay.url) for _ in range(6)]  # past both per-address limits
    for peer in held:
        await peer.close()


async def test_behind_a_local_proxy_each_forwarded_client_has_its_own_budget(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(max_connections_per_ip=1)
    held = await open_peer(relay.url, **xff("203.0.113.7"))
    assert (await refused_with(relay.url, **xff("203.0.113.7")))[0] == 429
    other = await open_peer(relay.url, **xff("203.0.113.8"))
    for peer in (held, other):
        await peer.close()


def test_an_address_set_reaches_workers_whole() -> None:
    # ``relay serve --workers`` pickles the settings' derived bounds to each worker.
    exempt = AddressSet(("127.0.0.0/8", "::1"))
    assert "127.0.0.9" in exempt
    copy = pickle.loads(pickle.dumps(exempt))
    assert "127.0.0.9" in copy and "::1" in copy and "10.0.0.1" not in copy
