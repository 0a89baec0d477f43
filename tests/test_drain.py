"""SIGTERM on a real `relay serve` process: drain, flush, close 1001, exit 0."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import anyio
import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.peers import join_as, open_peer

pytestmark = pytest.mark.anyio


@pytest.fixture
def relay_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--port", "0", "--log-level", "warning",
         "--rate-burst", "100000", "--drain-seconds", "10", "--queue-messages", "5000",
         "--queue-bytes", "50000000"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stderr is not None
    url = ""
    for line in process.stderr:
        found = re.search(r"relay ready on (ws://\S+)", line)
        if found:
            url = found.group(1)
            break
    assert url, "relay did not start"
    yield process, url
    if process.poll() is None:
        process.kill()
    process.wait()
    process.stderr.close()


async def test_sigterm_under_traffic_delivers_everything_answered_ok(
    relay_process: tuple[subprocess.Popen[str], str],
) -> None:
    process, url = relay_process
    http_url = url.replace("ws://", "http://").removesuffix("/v1/ws")
    alice = await join_as(url, "alice")
    bob = await join_as(url, "bob")
    bob.ws.transport.pause_reading()  # bob's socket fills while he does not read
    padding = b"x" * 8192
    acked: list[int] = []

    async def flood() -> None:
        with contextlib.suppress(ConnectionClosed):
            for n in range(2000):
                await alice.send({"type": "send", "to": "bob", "d": [n, padding], "id": n})

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(flood)
        # bob's buffers fill and alice is no longer read (backpressure);
        # the SIGTERM arrives while frames for bob wait on the relay.
        while len(acked) < 50:
            acked.append((await alice.expect(type="ok"))["id"])
        process.send_signal(signal.SIGTERM)
        # alice has nothing queued: her 1001 comes at once, while bob's queue
        # keeps the relay draining, not ready, and refusing newcomers.
        rest, alice_code = await alice.drain()
        tasks.cancel_scope.cancel()
    assert alice_code == 1001
    for reply in rest:
        assert reply["type"] == "ok", reply
        acked.append(reply["id"])
    async with httpx.AsyncClient(base_url=http_url) as http:
        assert (await http.get("/readyz")).status_code == 503
    with pytest.raises(InvalidStatus):
        await open_peer(url)
    bob.ws.transport.resume_reading()
    received, code = await bob.drain()
    assert code == 1001
    # Every send answered ok reached bob, in order; nothing else did.
    assert [m["d"][0] for m in received] == acked == list(range(len(acked)))
    await anyio.to_thread.run_sync(process.wait, 10)
    assert process.returncode == 0
    with pytest.raises(OSError):
        await open_peer(url)
