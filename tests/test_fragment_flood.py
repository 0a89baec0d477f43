"""A flood of empty continuation frames: bounded memory, neighbours unaffected, the sender closed.

The attack: after its hello, one connection opens a fragmented binary message
and sends empty non-final continuation frames (6 bytes each on the wire)
without end. Each one carries no payload, so the byte limit alone never
stops it; ``max_fragments`` does. The relay runs as its own process (default
settings) so that its RSS is its own.
"""

from __future__ import annotations

import re
import select
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgpack
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.cluster.processes import RelayProcess
from tests.wsserver.frames import RawSocket, client_frame

pytestmark = pytest.mark.anyio

FLOOD_BYTES = 48 * 1024 * 1024  # what the attacker sends at most: 8 million empty frames
CHUNK = client_frame(0x0, b"", fin=False) * 10_000  # 60,000 bytes per write
# What the relay may grow by during the flood. Before max_fragments it kept a
# list slot per empty fragment: some 65 MiB for these 48 MiB.
RSS_GROWTH_BOUND_KIB = 16 * 1024
ROUND_TRIPS = 30


def rss_kib(pid: int) -> int:
    found = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert found is not None
    return int(found.group(1))


@pytest.fixture
def relay_process() -> Iterator[RelayProcess]:
    relay = RelayProcess()
    try:
        relay.wait_ready()
        yield relay
    finally:
        relay.stop()


class Attacker(threading.Thread):
    """Opens a fragmented message, then floods empty continuations until the relay closes it."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.raw = RawSocket(port, "/v1/ws", subprotocols=("relay.v1",))
        self.raw.send(client_frame(0x2, msgpack.packb({"type": "hello", "id": "mallory"})))
        assert msgpack.unpackb(self.raw.frame().payload)["type"] == "welcome"
        self.sent = 0
        self.close_code: int | None = None

    def run(self) -> None:
        sock = self.raw.sock
        try:
            sock.sendall(client_frame(0x2, b"start", fin=False))
            while self.sent < FLOOD_BYTES and self.close_code is None:
                sock.sendall(CHUNK)
                self.sent += len(CHUNK)
                self._read_without_waiting()
        except OSError:
            pass  # the relay ended the connection (it aborts one that goes on sending)
        if self.close_code is None:
            self._read_close()

    def _read_without_waiting(self) -> None:
        while select.select([self.raw.sock], [], [], 0)[0]:
            chunk = self.raw.sock.recv(65536)
            if not chunk:
                return
            self.raw.frames.feed(chunk)
            while (frame := self.raw.frames.next()) is not None:
                if frame.opcode == 0x8:
                    self.close_code = frame.close_code

    def _read_close(self) -> None:
        try:
            while (frame := self.raw.frame()).opcode != 0x8:
                pass
        except (OSError, AssertionError):
            return  # no close frame: close_code stays None
        self.close_code = frame.close_code


async def hello(url: str, peer_id: str) -> ClientConnection:
    ws = await connect(url, subprotocols=["relay.v1"])
    await ws.send(msgpack.packb({"type": "hello", "id": peer_id}))
    assert msgpack.unpackb(await ws.recv())["type"] == "welcome"
    return ws


async def round_trips(alice: ClientConnection, bob: ClientConnection, count: int) -> list[float]:
    """Alice sends to bob, bob sends it back: the seconds each such round trip took.

    Paced at 100 round trips a second, well under the sessions' rate limit.
    """
    times = []
    for n in range(count):
        started = time.perf_counter()
        await alice.send(msgpack.packb({"type": "send", "to": "bob", "d": n}))
        assert msgpack.unpackb(await bob.recv())["d"] == n
        await bob.send(msgpack.packb({"type": "send", "to": "alice", "d": n}))
        assert msgpack.unpackb(await alice.recv())["d"] == n
        times.append(time.perf_counter() - started)
        await anyio.sleep(0.01)
    return times


async def test_empty_continuations_are_closed_1009_with_memory_and_neighbours_unharmed(
    relay_process: RelayProcess,
) -> None:
    pid = relay_process.process.pid
    port = int(relay_process.url.rsplit(":", 1)[1].split("/")[0])
    with anyio.fail_after(60):
        alice = await hello(relay_process.url, "alice")
        bob = await hello(relay_process.url, "bob")
        await round_trips(alice, bob, 10)  # warm up: the first ones allocate
        baseline = max(await round_trips(alice, bob, ROUND_TRIPS))
        attacker = Attacker(port)
        before = rss_kib(pid)
        attacker.start()
        during = max(await round_trips(alice, bob, ROUND_TRIPS))
        await anyio.to_thread.run_sync(attacker.join)
        grown = rss_kib(pid) - before
    print(f"slowest round trip: {baseline * 1000:.2f} ms before, {during * 1000:.2f} ms "
          f"from the flood on; RSS +{grown} KiB; {attacker.sent} bytes sent")  # fmt: skip
    assert attacker.close_code == 1009
    assert attacker.sent < FLOOD_BYTES  # it was stopped, not just done
    assert grown < RSS_GROWTH_BOUND_KIB
    # Unprotected, a neighbour's round trip took seconds while the flood was
    # parsed (0.3 ms before). 20 times the slowest of its own round trips
    # before the flood, which already holds this machine's scheduling noise,
    # is far from both.
    assert during < 20 * max(baseline, 0.001)
    attacker.raw.close()
    await alice.close()
    await bob.close()
