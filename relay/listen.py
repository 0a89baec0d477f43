"""The listening sockets of ``relay serve``, resolved and bound before the server starts.

Inside uvicorn a host that does not resolve, or a port another program
holds, is an error logged among its start-up lines and exit status 3. Bound
here first, each is one ``ListenError`` naming the setting at fault, which the
CLI prints as one line with exit status 2, as it does a bad value.
"""

from __future__ import annotations

import errno
import socket

from relay.settings import split_host_port

# uvicorn's default listen backlog.
BACKLOG = 2048


class ListenError(Exception):
    """Setting ``name`` (``host``, ``port``, ``admin_listen``) cannot be served, ``problem`` why."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


def resolve(host: str, port: int) -> list[tuple[socket.AddressFamily, str]]:
    """The addresses ``host`` names for listening on ``port``, with their families."""
    try:
        found = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ListenError("host", f"cannot resolve it ({exc.strerror})") from None
    except UnicodeError:  # a label over 63 characters, among others
        raise ListenError("host", "cannot resolve it (not a valid host name)") from None
    addresses: list[tuple[socket.AddressFamily, str]] = []
    for family, _, _, _, sockaddr in found:
        entry = (family, str(sockaddr[0]))
        if entry not in addresses:
            addresses.append(entry)
    return addresses


def bind(
    host: str, port: int, backlog: int = BACKLOG, *, send_buffer_bytes: int | None = None
) -> list[socket.socket]:
    """Listening sockets on every address of ``host``, as uvicorn would open them.

    With ``port`` 0 the first address picks a free port and the others take
    the same one, so the relay has one port whatever the host names. With
    ``send_buffer_bytes`` each gets that ``SO_SNDBUF`` before it listens, and
    every socket it accepts inherits it: one system call per listener rather
    than three per connection (``uvicorn_config(inherited_send_buffer=True)``).
    """
    sockets: list[socket.socket] = []
    try:
        for family, address in resolve(host, port):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if send_buffer_bytes is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
            if family == socket.AF_INET6:  # one socket per family, as asyncio does
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((address, port))
            except OSError as exc:
                raise _bind_error(exc, address, port) from None
            sock.listen(backlog)
            sock.setblocking(False)
            if port == 0:
                port = sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def bind_admin(
    address: str, taken: list[socket.socket], *, send_buffer_bytes: int | None = None
) -> tuple[list[socket.socket], str]:
    """The admin listener's sockets (``admin_listen``), and its ``host:port`` as bound.

    The relay tells its listeners apart by their port, so the admin listener's
    must differ from every port in ``taken`` (the relay's own sockets).
    """
    host, port = split_host_port(address)
    try:
        sockets = bind(host, port, send_buffer_bytes=send_buffer_bytes)
    except ListenError as exc:
        raise ListenError("admin_listen", exc.problem) from None
    bound = sockets[0].getsockname()[1]
    if bound in {sock.getsockname()[1] for sock in taken}:
        for sock in sockets:
            sock.close()
        raise ListenError("admin_listen", f"port {bound} is the relay's own port: give another")
    shown = f"[{host}]" if ":" in host else host
    return sockets, f"{shown}:{bound}"


def _bind_error(exc: OSError, address: str, port: int) -> ListenError:
    shown = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        return ListenError("port", f"{shown} is already in use (another relay, or another program)")
    if exc.errno == errno.EACCES and 0 < port < 1024:
        return ListenError(
            "port", f"not allowed to listen on {shown}: ports below 1024 need root or "
            "CAP_NET_BIND_SERVICE",
        )  # fmt: skip
    if exc.errno == errno.EADDRNOTAVAIL:
        return ListenError("host", f"{address} is not an address of this machine ({reason})")
    return ListenError("host", f"cannot listen on {shown} ({reason})")
