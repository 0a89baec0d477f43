"""The exception tree: protocol codes, close codes, an unreachable relay."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import pytest
import relay_client
from relay_client import errors

if TYPE_CHECKING:
    from tests.conftest import RunningRelay

CODES = {
    "bad-envelope": relay_client.BadEnvelope,
    "unknown-type": relay_client.UnknownType,
    "not-registered": relay_client.NotRegistered,
    "unauthorized": relay_client.Unauthorized,
    "forbidden": relay_client.Forbidden,
    "id-taken": relay_client.IdTaken,
    "peer-offline": relay_client.PeerOffline,
    "too-large": relay_client.TooLarge,
    "rate-limited": relay_client.RateLimited,
    "overloaded": relay_client.Overloaded,
    "room-full": relay_client.RoomFull,
    "backend-error": relay_client.BackendError,
    "internal": relay_client.InternalError,
}


@pytest.mark.parametrize(("code", "cls"), CODES.items())
def test_every_protocol_code_has_its_exception(code: str, cls: type[Exception]) -> None:
    exc = relay_client.error_from_code(code, "why", request_id=7, to="bob")
    assert type(exc) is cls
    assert isinstance(exc, relay_client.ServerError)
    assert isinstance(exc, relay_client.RelayError)
    assert (exc.code, exc.message, exc.request_id, exc.to) == (code, "why", 7, "bob")
    assert str(exc) == f"{code}: why"


def test_protocol_codes_match_the_servers_list() -> None:
    from relay.protocol.codes import ErrorCode

    assert set(CODES) == {code.value for code in ErrorCode}


def test_unknown_code_gives_a_plain_server_error() -> None:
    exc = relay_client.error_from_code("from-the-future", "hm")
    assert type(exc) is relay_client.ServerError and exc.code == "from-the-future"


def test_close_code_policy_matches_the_protocol() -> None:
    from relay.protocol.codes import CloseCode

    for code in CloseCode:
        assert relay_client.should_reconnect(code) == code.should_reconnect, code
    for code in (1006, 4000, 4499):
        assert relay_client.should_reconnect(code)
    for code in (1000, 1003, 1008, 1009, 4500, 4999, 3000):
        assert not relay_client.should_reconnect(code)


def test_local_errors_sit_in_the_tree() -> None:
    assert issubclass(relay_client.RequestTimeout, TimeoutError)
    assert issubclass(relay_client.RequestTimeout, relay_client.RelayError)
    assert issubclass(relay_client.SessionReplaced, relay_client.ConnectionClosed)
    for cls in (
        relay_client.ConnectionClosed,
        relay_client.ConnectionLost,
        relay_client.RelayUnavailable,
        relay_client.OfflineBufferFull,
        relay_client.RemoteError,
        relay_client.NotConnected,
        relay_client.ProtocolError,
    ):
        assert issubclass(cls, relay_client.RelayError)
    closed = relay_client.ConnectionClosed(4503, "replaced by a newer session")
    assert "4503" in str(closed) and "replaced" in str(closed)
    assert errors.CLOSE_REASONS[4008].startswith("slow consumer")


@pytest.mark.anyio
async def test_id_taken_on_connect(relay: RunningRelay) -> None:
    async with relay_client.connect(relay.url, id="bob"):
        with pytest.raises(relay_client.IdTaken) as caught:
            await relay_client.connect(relay.url, id="bob")
        assert caught.value.code == "id-taken"


@pytest.mark.anyio
async def test_rate_limited(relay_factory: Callable[..., Awaitable[RunningRelay]]) -> None:
    relay = await relay_factory(rate_per_second=0.5, rate_burst=3)
    async with relay_client.connect(relay.url, id="alice", pace=False) as alice:
        with pytest.raises(relay_client.RateLimited):
            for _ in range(10):
                await alice.send("alice", "spam")


@pytest.mark.anyio
async def test_pacing_keeps_under_the_advertised_rate(
    relay_factory: Callable[..., Awaitable[RunningRelay]],
) -> None:
    relay = await relay_factory(rate_per_second=40, rate_burst=5)
    async with relay_client.connect(relay.url, id="alice") as alice:
        start = anyio.current_time()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                for i in range(30):
                    tasks.start_soon(alice.send, "alice", i)
        assert anyio.current_time() - start >= (30 - 5) / 40
        assert [(await alice.recv()).data for _ in range(30)] == list(range(30))


@pytest.mark.anyio
async def test_too_large_is_refused_before_sending(
    relay_factory: Callable[..., Awaitable[RunningRelay]],
) -> None:
    relay = await relay_factory(max_frame_bytes=1024)
    async with relay_client.connect(relay.url, id="alice") as alice:
        with pytest.raises(relay_client.TooLarge, match="at most 1024"):
            await alice.send("alice", b"x" * 2000)
        await alice.send("alice", b"x" * 500)  # the connection is fine
        assert (await alice.recv()).data == b"x" * 500


@pytest.mark.anyio
async def test_room_full(relay_factory: Callable[..., Awaitable[RunningRelay]]) -> None:
    relay = await relay_factory(peers_per_room=1, rooms_per_peer=1)
    async with (
        relay_client.connect(relay.url, id="alice") as alice,
        relay_client.connect(relay.url, id="bob") as bob,
    ):
        await alice.join("lobby")
        with pytest.raises(relay_client.RoomFull):
            await bob.join("lobby")
        with pytest.raises(relay_client.RoomFull):
            await alice.join("second")
        assert alice.rooms == {"lobby"} and bob.rooms == frozenset()


@pytest.mark.anyio
async def test_bad_room_name_is_a_bad_envelope(relay: RunningRelay) -> None:
    async with relay_client.connect(relay.url, id="alice") as alice:
        with pytest.raises(relay_client.BadEnvelope):
            await alice.join("no spaces allowed")
        assert await alice.ping() > 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.anyio
async def test_relay_not_running_raises_relay_unavailable() -> None:
    url = f"ws://127.0.0.1:{_free_port()}/v1/ws"
    with anyio.fail_after(5), pytest.raises(relay_client.RelayUnavailable) as caught:
        await relay_client.connect(url, id="alice")
    assert str(caught.value) == f"cannot reach relay at {url}: connection refused"


@pytest.mark.anyio
async def test_wrong_path_raises_relay_unavailable_with_the_status(relay: RunningRelay) -> None:
    with anyio.fail_after(5), pytest.raises(relay_client.RelayUnavailable, match=r"HTTP 40\d"):
        await relay_client.connect(relay.http_url.replace("http", "ws") + "/nope", id="a")


def test_invalid_url_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid relay URL"):
        relay_client.connect("http://example.com", id="a")
