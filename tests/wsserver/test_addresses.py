"""A connection's addresses as its transport recorded them, against uvicorn's from the socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest
import uvloop
from uvicorn.protocols.utils import get_local_addr, get_remote_addr

from relay.wsserver.addresses import local_address, remote_address


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


HOSTS = ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(
    not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback"))]  # fmt: skip
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop,
}  # fmt: skip


async def _accepted_transport(
    host: str,
) -> tuple[asyncio.Transport, asyncio.Server, asyncio.StreamWriter]:
    made: asyncio.Future[asyncio.Transport] = asyncio.get_running_loop().create_future()

    class Taken(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.set_result(transport)  # type: ignore[arg-type]

    server = await asyncio.get_running_loop().create_server(Taken, host, 0)
    port = server.sockets[0].getsockname()[1]
    _, client = await asyncio.open_connection(host, port)
    return await made, server, client


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("host", HOSTS)
def test_the_recorded_addresses_are_those_uvicorn_reads_from_the_socket(
    host: str, loop_name: str
) -> None:
    async def compare() -> None:
        transport, server, client = await _accepted_transport(host)
        try:
            assert remote_address(transport) == get_remote_addr(transport)
            assert local_address(transport) == get_local_addr(transport)
            assert local_address(transport) == (host, server.sockets[0].getsockname()[1])
        finally:
            client.close()
            await client.wait_closed()
            transport.close()
            server.close()

    loop = LOOPS[loop_name]()
    try:
        loop.run_until_complete(compare())
    finally:
        loop.close()


class _UnixTransport(asyncio.Transport):
    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": "", "sockname": "/run/relay.sock"}.get(name, default)


def test_a_unix_socket_has_no_host_and_port() -> None:
    assert remote_address(_UnixTransport()) is None
    assert local_address(_UnixTransport()) is None
