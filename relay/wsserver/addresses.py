"""A connection's two addresses, as the transport recorded them when it was made.

uvicorn's ``get_remote_addr`` and ``get_local_addr`` ask the socket each
time: on uvloop every such call makes a Python socket object, checks it with
``getsockname`` and asks again, which cost a reconnect storm three system
calls per address per connection. The transport's ``peername`` and
``sockname`` are read once when it is made (uvloop, asyncio), and a peer's
address does not change.
"""

from __future__ import annotations

import asyncio


def remote_address(transport: asyncio.BaseTransport) -> tuple[str, int] | None:
    """The peer's (host, port), as uvicorn's scope has it; None on a Unix socket."""
    return _host_port(transport.get_extra_info("peername"))


def local_address(transport: asyncio.BaseTransport) -> tuple[str, int] | None:
    """This end's (host, port), as uvicorn's scope has it; None on a Unix socket."""
    return _host_port(transport.get_extra_info("sockname"))


def _host_port(info: object) -> tuple[str, int] | None:
    # IPv6 gives (host, port, flowinfo, scope_id); uvicorn keeps the first two.
    if isinstance(info, tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None
