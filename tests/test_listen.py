"""``relay.listen.bind``: a send buffer set on the listener, inherited by every accepted socket."""

from __future__ import annotations

import os
import socket

import anyio
import pytest

from relay.app import create_app
from relay.listen import bind
from relay.server import uvicorn_config
from relay.settings import Settings
from tests.inloop import InLoopServer
from tests.wsserver.frames import upgrade_request

pytestmark = pytest.mark.anyio


def send_buffer_for(size: int) -> int:
    """What the kernel reports after SO_SNDBUF ``size`` on a fresh socket (Linux doubles it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)


def accepted_send_buffer(client: socket.socket) -> int:
    """SO_SNDBUF of the socket this process accepted from ``client``."""
    wanted = (client.getpeername(), client.getsockname())
    for name in os.listdir("/proc/self/fd"):
        try:
            copy = os.dup(int(name))
        except OSError:
            continue  # the listing's own descriptor, closed by now
        try:
            probe = socket.socket(fileno=copy)
        except OSError:  # not a socket
            os.close(copy)
            continue
        with probe:
            try:
                if (probe.getsockname(), probe.getpeername()) == wanted:
                    return probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            except OSError:  # unconnected, or not TCP
                continue
    raise AssertionError(f"no accepted socket for {wanted}")


def test_an_accepted_socket_inherits_the_listeners_send_buffer() -> None:
    (listener,) = bind("127.0.0.1", 0, send_buffer_bytes=48 * 1024)
    with listener, socket.create_connection(listener.getsockname()) as client:
        accepted, _ = listener.accept()
        with accepted:
            assert accepted_send_buffer(client) == send_buffer_for(48 * 1024)


@pytest.mark.parametrize("on_listener", [True, False], ids=["on the listener", "per connection"])
async def test_a_websocket_has_the_send_buffer_the_setting_names(on_listener: bool) -> None:
    settings = Settings(port=0, log_level="warning", send_buffer_bytes=40 * 1024)
    sockets = bind(
        settings.host, settings.port,
        send_buffer_bytes=settings.send_buffer_bytes if on_listener else None,
    )  # fmt: skip
    config = uvicorn_config(create_app(settings), settings, inherited_send_buffer=on_listener)
    server = InLoopServer(config)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve, sockets)
        with anyio.fail_after(10):
            await server.ready.wait()
        port = sockets[0].getsockname()[1]
        try:
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.sendall(upgrade_request(port, "/v1/ws", subprotocols=("relay.v1",)))
                stream = await anyio.to_thread.run_sync(client.recv, 4096)
                assert stream.startswith(b"HTTP/1.1 101 "), stream
                assert accepted_send_buffer(client) == send_buffer_for(40 * 1024)
        finally:
            server.should_exit = True
