"""RelayHTTPProtocol against uvicorn's own HttpToolsProtocol, on ordinary requests.

Hypothesis writes a sequence of ordinary requests to the real relay app
(health checks, static files, a 404, API requests with bodies, some chunked,
HEAD), the last one with ``Connection: close``, and cuts the bytes into
arbitrary reads. Each protocol is driven over an in-memory transport that
delivers those reads (honouring pause_reading), and both must write exactly
the same bytes. Ordinary requests are where the relay's protocol must not
differ; what it does differently (caps, timeouts, header limits, pipelining
ahead of an upgrade) is in tests/test_httpserver.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from relay.app import create_app
from relay.httpserver import HTTPLimits, RelayHTTPProtocol
from relay.settings import Settings

TIMEOUT = 5.0
API_KEY = "k" * 32


class MemoryTransport(asyncio.Transport):
    """A transport that records what is written; ``reading`` waits while reading is paused."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._protocol = protocol
        self.written = bytearray()
        self.closed = asyncio.Event()
        self._resumed = asyncio.Event()
        self._resumed.set()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closed.is_set():
            self.written += data

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closed.is_set()

    def pause_reading(self) -> None:
        self._resumed.clear()

    def resume_reading(self) -> None:
        self._resumed.set()

    def is_reading(self) -> bool:
        return self._resumed.is_set()

    async def reading(self) -> None:
        await self._resumed.wait()

    def get_write_buffer_size(self) -> int:
        return 0

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        raise AssertionError("no upgrade among ordinary requests")

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


async def serve(
    app: Starlette, protocol_class: type[asyncio.Protocol], reads: list[bytes]
) -> bytes:
    """Everything ``protocol_class`` writes when a client sends ``reads`` on one connection."""
    config = uvicorn.Config(app, lifespan="off", log_config=None, log_level="warning")
    config.http_limits = HTTPLimits.from_settings(Settings())  # type: ignore[attr-defined]
    state = ServerState()
    protocol = protocol_class(config=config, server_state=state, app_state={})  # type: ignore[call-arg]
    transport = MemoryTransport(protocol)
    protocol.connection_made(transport)
    async with asyncio.timeout(TIMEOUT):
        for data in reads:
            await transport.reading()
            if transport.is_closing():
                break
            protocol.data_received(data)
            await asyncio.sleep(0)  # let the app run between two reads
        await transport.closed.wait()
        while state.tasks:  # the app's tasks end once they see the disconnect
            await asyncio.wait(set(state.tasks))
    return bytes(transport.written)


def _request(method: str, path: str, headers: list[str], body: bytes = b"") -> bytes:
    head = "\r\n".join([f"{method} {path} HTTP/1.1", "Host: relay", *headers]) + "\r\n\r\n"
    return head.encode() + body


def _chunked(body: bytes, sizes: list[int]) -> bytes:
    out, start = [], 0
    for size in [*sizes, len(body)]:
        piece = body[start : start + size]
        start += len(piece)
        if piece:
            out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    return b"".join(out) + b"0\r\n\r\n"


@st.composite
def requests(draw: st.DrawFn, last: bool) -> bytes:
    """One ordinary request; ``last`` adds ``Connection: close``."""
    close = ["Connection: close"] if last else []
    kind = draw(st.sampled_from(["get", "head", "static", "missing", "send", "chunked", "peer"]))
    if kind in ("get", "head"):
        path = draw(st.sampled_from(["/healthz", "/readyz", "/healthz?probe=1"]))
        extra = [f"X-Probe-{n}: {'v' * n}" for n in range(draw(st.integers(0, 5)))]
        return _request(kind.upper(), path, [*extra, *close])
    if kind == "static":
        return _request("GET", "/", close)
    if kind == "missing":
        return _request("GET", "/no-such-file.txt", close)
    auth = [f"Authorization: Bearer {API_KEY}", "Content-Type: application/json"]
    if kind == "peer":
        return _request("GET", "/v1/peers/nobody", [*auth, *close])
    body = json.dumps({"to": "nobody", "d": draw(st.text(max_size=40))}).encode()
    if kind == "send":
        return _request("POST", "/v1/send", [*auth, f"Content-Length: {len(body)}", *close], body)
    sizes = draw(st.lists(st.integers(1, 16), max_size=3))
    chunked = [*auth, "Transfer-Encoding: chunked", *close]
    return _request("POST", "/v1/send", chunked, _chunked(body, sizes))


@st.composite
def conversations(draw: st.DrawFn) -> list[bytes]:
    """Requests on one connection, pipelined, cut into reads at arbitrary places."""
    sent = [*draw(st.lists(requests(last=False), max_size=3)), draw(requests(last=True))]
    stream = b"".join(sent)
    cuts = sorted(set(draw(st.lists(st.integers(1, len(stream) - 1), max_size=6))))
    return [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)])]


async def both(reads: list[bytes]) -> tuple[bytes, bytes]:
    """What the relay's protocol and uvicorn's write for ``reads``, each on a fresh relay."""
    answers = []
    for protocol_class in (RelayHTTPProtocol, HttpToolsProtocol):
        app = create_app(Settings(api_keys=(API_KEY,), log_level="warning", node_id="same"))
        async with app.state.hub.running():
            answers.append(await serve(app, protocol_class, reads))
    return answers[0], answers[1]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversations())
def test_ordinary_requests_are_answered_byte_for_byte_as_uvicorn_does(reads: list[bytes]) -> None:
    ours, theirs = asyncio.run(both(reads))
    assert ours == theirs
    assert ours.count(b"HTTP/1.1 ") == b"".join(reads).count(b" HTTP/1.1\r\n")


def test_a_malformed_request_gets_uvicorn_s_400() -> None:
    ours, theirs = asyncio.run(both([b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n"]))
    assert ours == theirs
    assert ours.startswith(b"HTTP/1.1 400 Bad Request\r\n")
