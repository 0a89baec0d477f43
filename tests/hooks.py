"""A webhook backend for tests: a real HTTP receiver, and relay settings that hook it.

The receiver is a Starlette app served by uvicorn on a free port in the
test's own loop. It checks every request with docs/hooks.md's own check
(``verified``, the same text as the doc's; tests/test_webhooks.py holds them
equal), and can be told to fail its first requests (500) or hang, so retries
are driven by what it saw, not by sleeps.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.text import TextReceiveStream
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.webhooks import Webhooks
from tests.conftest import RunningRelay
from tests.inloop import serving_app

SECRET = "whsec-" + "k" * 32
WAIT = 10.0


def verified(secret: bytes, header: str, body: bytes, tolerance: float = 300) -> bool:
    """Whether ``header`` (Relay-Signature) signs ``body`` with ``secret``, and is recent."""
    pairs = [item.strip().split("=", 1) for item in header.split(",") if "=" in item]
    stamps = [value for key, value in pairs if key == "t"]
    if len(stamps) != 1 or not stamps[0].isdigit():
        return False
    if abs(time.time() - int(stamps[0])) > tolerance:
        return False  # a replay, or a clock far off
    expected = hmac.new(secret, f"{stamps[0]}.".encode() + body, hashlib.sha256).hexdigest()
    return any(key == "v1" and hmac.compare_digest(value, expected) for key, value in pairs)


class Receiver:
    """A webhook backend: records every request; fails or hangs its first ones when told."""

    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret.encode()
        self.requests: list[dict[str, Any]] = []  # every body, accepted or not
        self.accepted: list[dict[str, Any]] = []  # bodies answered 2xx
        self.headers: list[str] = []  # every Relay-Signature
        self.ports: list[int] = []  # the relay's end of each request's connection
        self.answer = b""  # the body of a 2xx
        self.fail_first = 0  # answer the first N requests 500
        self.hang_first = 0  # never answer the first N requests (until released)
        self.refuse: Callable[[dict[str, Any]], bool] = lambda body: False  # 500 to these
        self.released = anyio.Event()
        self._changed = anyio.Event()
        self.url = ""

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        header = request.headers.get("relay-signature", "")
        assert request.headers["content-type"] == "application/json"
        self.headers.append(header)
        assert request.client is not None
        self.ports.append(request.client.port)
        payload = json.loads(body)
        self.requests.append(payload)
        n = len(self.requests)
        self._changed.set()
        if not verified(self.secret, header, body):
            return Response(status_code=401)
        if n <= self.hang_first:
            await self.released.wait()  # then answered as any other
        if n <= self.fail_first or self.refuse(payload):
            return Response(status_code=500)
        self.accepted.append(payload)
        self._changed.set()
        return Response(self.answer, status_code=200 if self.answer else 204)

    async def until(self, done: Callable[[], bool]) -> None:
        """Wait (at most ``WAIT`` seconds) until ``done()`` holds after some request."""
        with anyio.fail_after(WAIT):
            while not done():
                self._changed = anyio.Event()
                await self._changed.wait()

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event of the accepted batches, in arrival order."""
        return [event for body in self.accepted for event in body["events"]]

    def kinds(self) -> list[tuple[str, ...]]:
        return [
            (e["type"], *(e[k] for k in ("peer", "room", "reason") if k in e)) for e in self.events
        ]


@asynccontextmanager
async def serving() -> AsyncIterator[Receiver]:
    """A ``Receiver`` on a free port of 127.0.0.1, at ``/hooks``."""
    backend = Receiver()
    app = Starlette(routes=[Route("/hooks", backend.endpoint, methods=["POST"])])
    async with serving_app(app, WAIT) as base:
        backend.url = f"{base}/hooks"
        yield backend
        backend.released.set()


def fast(url: str, **overrides: Any) -> dict[str, Any]:
    """Settings for a relay that hooks ``url``, with short waits.

    (Tests take ``receiver`` before ``relay_factory``: the relay stops first,
    and what it sends as it stops finds the receiver still up.)
    """
    return {
        "webhook_urls": (url,),
        "webhook_secret": SECRET,
        "webhook_batch_seconds": 0.02,
        "webhook_backoff_base_seconds": 0.01,
        "webhook_backoff_cap_seconds": 0.05,
        "webhook_drain_seconds": 1.0,
        **overrides,
    }


async def settled(relay: RunningRelay) -> None:
    """Wait until the relay's webhooks hold nothing: every answer it got is counted."""
    webhooks = relay.app.state.webhooks
    assert isinstance(webhooks, Webhooks)
    with anyio.fail_after(WAIT):
        for sender in webhooks.senders:
            await sender.emptied()


class Printed:
    """What a running script printed so far, read as the test needs it."""

    def __init__(self, lines: TextReceiveStream) -> None:
        self._lines = lines
        self.text = ""

    async def until(self, text: str) -> None:
        """Read what the script prints until ``text`` was printed (``WAIT`` s at most)."""
        with anyio.fail_after(WAIT):
            while text not in self.text:
                self.text += await self._lines.receive()


@asynccontextmanager
async def doc_script(code: str, directory: Path, secret: str = SECRET) -> AsyncIterator[Printed]:
    """Run a snippet of docs/hooks.md as a Python script, with ``secret`` as the webhook secret."""
    script = directory / "doc_script.py"
    script.write_text(code)
    env = {"RELAY_WEBHOOK_SECRET": secret, "PATH": "/usr/bin:/bin"}
    async with await anyio.open_process(
        [sys.executable, "-u", str(script)], env=env, stderr=subprocess.DEVNULL
    ) as process:
        assert process.stdout is not None
        try:
            yield Printed(TextReceiveStream(process.stdout))
        finally:
            process.terminate()
