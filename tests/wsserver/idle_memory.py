"""Memory per idle WebSocket connection: open N idle connections, compare the server's RSS.

    .venv/bin/python tests/wsserver/idle_memory.py                # direct mode, 2000 sockets
    .venv/bin/python tests/wsserver/idle_memory.py --mode asgi    # an ASGI app in receive()
    .venv/bin/python tests/wsserver/idle_memory.py --mode sansio  # that app on websockets-sansio

The server runs in a child process (uvicorn, uvloop, keepalive on); this
process opens the connections. The figure is (RSS after N connections - RSS
after a warm-up of 100) / (N - 100), in bytes: everything the server process
holds per connection (protocol, transport, socket object, handler or ASGI
task), not kernel socket buffers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
WARM_UP = 100


class IdleHandler:
    """A FrameHandler that does nothing: what a registered idle peer costs at the frame layer."""

    __slots__ = ()

    def message_received(self, data: bytes) -> None:
        pass

    def text_received(self, text: str) -> None:
        pass

    def writable(self) -> None:
        pass

    def connection_lost(self, code: int, reason: str) -> None:
        pass


async def direct_app(scope: Any, receive: Any, send: Any) -> None:
    scope["extensions"]["relay.direct"]["connection"].accept_direct(IdleHandler())


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


def serve(mode: str) -> None:
    import uvicorn

    from relay.wsserver import RelayWebSocketProtocol

    raise_fd_limit()
    ws: Any = "websockets-sansio" if mode == "sansio" else RelayWebSocketProtocol
    app = direct_app if mode == "direct" else asgi_app
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    config = uvicorn.Config(
        app, ws=ws, lifespan="off", log_level="error", backlog=4096, ws_per_message_deflate=False
    )
    uvicorn.Server(config).run(sockets=[listener])


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def open_idle(port: int, count: int, into: list[asyncio.StreamWriter]) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        into.append(writer)

    for start in range(0, count, 100):
        await asyncio.gather(*(one() for _ in range(min(100, count - start))))


async def measure(port: int, pid: int, connections: int) -> tuple[int, int]:
    writers: list[asyncio.StreamWriter] = []
    await open_idle(port, WARM_UP, writers)
    await asyncio.sleep(1)  # let the server finish the app tasks of the warm-up
    before = rss_bytes(pid)
    await open_idle(port, connections - WARM_UP, writers)
    await asyncio.sleep(1)
    after = rss_bytes(pid)
    for writer in writers:
        writer.transport.abort()
    return before, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["direct", "asgi", "sansio"], default="direct")
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.mode)
        return
    raise_fd_limit()
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--mode", args.mode],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until uvicorn listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        before, after = asyncio.run(measure(port, child.pid, args.connections))
    finally:
        child.terminate()
        child.wait(10)
    per_connection = (after - before) / (args.connections - WARM_UP)
    print(
        f"{args.mode}: {args.connections} idle connections, server RSS "
        f"{before / 2**20:.1f} -> {after / 2**20:.1f} MiB, "
        f"{per_connection / 1024:.1f} KiB per connection"
    )


if __name__ == "__main__":
    main()
