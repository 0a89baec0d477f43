"""A TCP proxy that meddles with HTTP as the networks the HTTP transport is for do.

- ``strip_upgrade``: requests lose their ``Upgrade`` header (and ``Connection:
  Upgrade``), as a corporate proxy that does not know WebSockets forwards
  them: the relay sees a plain ``GET`` and no WebSocket ever opens.
- ``buffer_streams``: once a connection carries ``POST .../stream``, nothing
  the relay sends on it reaches the client, as a proxy that buffers a
  response until it ends holds back a stream that never ends.
- ``route``: a function from a request's path to the port it goes to, as
  a load balancer without stickiness: each request then gets a connection
  of its own (the proxy adds ``Connection: close``), so every request of a
  session may go to another node.
- ``sever()``: drop every connection at once (a cut stream, lost answers).

It sees each request line (the first bytes a client writes after the
previous answer; the client's bodies are short binary records, never such a
line) and counts them by path in ``requests``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from collections.abc import Callable

from tests.clients.python.tcpproxy import ProxyServer

_REQUEST_LINE = re.compile(rb"(?:GET|POST|OPTIONS) (\S+) HTTP/1\.1\r\n")
_UPGRADE_HEADERS = re.compile(rb"\r\n(?:upgrade: [^\r]*|connection: upgrade)(?=\r\n)", re.I)


class HttpProxy(ProxyServer):
    """127.0.0.1:``port`` -> 127.0.0.1:``target_port``; see the module docstring."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.strip_upgrade = False
        self.buffer_streams = False
        self.route: Callable[[str], int] | None = None
        self.requests: Counter[str] = Counter()
        self.connections = 0

    def url(self, path: str = "/v1/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def count(self, name: str) -> int:
        """How many requests ended their path with ``/name``."""
        return sum(n for path, n in self.requests.items() if path.endswith("/" + name))

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(65536)
        port = self.target_port
        line = _REQUEST_LINE.match(first)
        if self.route is not None and line is not None:
            port = self.route(line[1].decode())
            first = first.replace(b"\r\n", b"\r\nConnection: close\r\n", 1)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        self.connections += 1
        self._writers.update((writer, up_writer))
        held = asyncio.Event()  # set once the connection carries a stream to hold back
        pipes = [
            asyncio.create_task(self._upstream(reader, up_writer, held, first)),
            asyncio.create_task(self._downstream(up_reader, writer, held)),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _upstream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        held: asyncio.Event,
        first: bytes,
    ) -> None:
        data = first
        with contextlib.suppress(ConnectionError, OSError):
            while data:
                line = _REQUEST_LINE.match(data)
                if line is not None:
                    path = line[1].decode()
                    self.requests[path] += 1
                    if self.strip_upgrade:
                        data = _UPGRADE_HEADERS.sub(b"", data)
                    if self.buffer_streams and path.endswith("/stream"):
                        held.set()
                writer.write(data)
                await writer.drain()
                data = await reader.read(65536)

    async def _downstream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, held: asyncio.Event
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if held.is_set():
                    continue  # buffered "until the response ends": never, for a stream
                writer.write(data)
                await writer.drain()
