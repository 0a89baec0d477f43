"""Local fixtures of the Python client tests.

``proxy_factory(relay)`` puts a TCP proxy in front of a relay. The proxy can
``sever()`` every connection (an abrupt drop, as a dead link), ``refuse`` new
connections (the relay looks down) and ``freeze()`` traffic while keeping the
sockets open (a black hole, for keepalive tests).

``drain_proxy_factory(relay)`` puts a WebSocket proxy in front of a relay that
can end a socket as a draining relay does (:mod:`.drainproxy`).

``relay_process()`` runs ``python -m relay serve`` as a subprocess on a fixed
port, so a test can kill the whole relay and start it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import pytest

from tests.clients.python.drainproxy import DrainProxy
from tests.clients.python.tcpproxy import ProxyServer
from tests.redis_server import free_port

if TYPE_CHECKING:
    from tests.conftest import RunningRelay

REPO = Path(__file__).resolve().parents[3]


class Proxy(ProxyServer):
    """A TCP proxy from 127.0.0.1:``port`` to 127.0.0.1:``target_port``."""

    def __init__(self, target_port: int, path: str = "/v1/ws") -> None:
        super().__init__(target_port)
        self.path = path
        self.refusing = False
        self.accepted = 0
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.path}"

    def freeze(self) -> None:
        """Stop forwarding bytes; sockets stay open."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def close(self) -> None:
        self.refusing = True
        self.thaw()
        await super().close()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        self._writers.update((writer, up_writer))
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            for pipe in pipes:
                with contextlib.suppress(BaseException):
                    await pipe
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                if writer.transport.is_closing():
                    return
                writer.write(data)
                await writer.drain()


class Startable(Protocol):
    """A test proxy: started, then closed when its test ends."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


P = TypeVar("P", bound=Startable)


@contextlib.asynccontextmanager
async def started_proxies(
    make: Callable[[RunningRelay], P],
) -> AsyncIterator[Callable[[RunningRelay], Awaitable[P]]]:
    """A factory starting ``make(relay)`` proxies, every one closed on the way out."""
    proxies: list[P] = []

    async def start(relay: RunningRelay) -> P:
        proxy = make(relay)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in proxies:
            await proxy.close()


ProxyFactory = Callable[["RunningRelay"], Awaitable[Proxy]]


@pytest.fixture
async def proxy_factory() -> AsyncIterator[ProxyFactory]:
    async with started_proxies(lambda relay: Proxy(relay.port, relay.settings.path)) as start:
        yield start


DrainProxyFactory = Callable[["RunningRelay"], Awaitable[DrainProxy]]


@pytest.fixture
async def drain_proxy_factory() -> AsyncIterator[DrainProxyFactory]:
    async with started_proxies(lambda relay: DrainProxy(relay.url)) as start:
        yield start


class RelayProcess:
    """``python -m relay serve`` on a fixed port; can be killed and restarted."""

    def __init__(self, port: int, *args: str) -> None:
        self.port = port
        self.args = args
        self.url = f"ws://127.0.0.1:{port}/v1/ws"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.args,
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(20):
            while not await self._ready():
                if self.proc.returncode is not None:
                    raise RuntimeError(f"relay exited with {self.proc.returncode}")
                await asyncio.sleep(0.05)  # polling a subprocess: no event to await

    async def _ready(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
            status = await reader.readline()
            return b" 200 " in status
        except OSError:
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def drain(self) -> int:
        """SIGTERM: the relay drains (1001 to every socket) and exits; returns its exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            return await self.proc.wait()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()


@pytest.fixture
async def relay_process() -> AsyncIterator[Callable[..., Awaitable[RelayProcess]]]:
    started: list[RelayProcess] = []

    async def start(*args: str, port: int | None = None) -> RelayProcess:
        relay = RelayProcess(port or free_port(), *args)
        started.append(relay)
        await relay.start()
        return relay

    yield start
    for relay in started:
        await relay.kill()
