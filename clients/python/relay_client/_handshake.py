"""Opening one link to the relay: a WebSocket (or an HTTP session), then ``hello`` and ``welcome``.

The transports are tried in the order of ``options.transports``. The next one
is tried only when a link never opened on the one before (the upgrade was
refused, the connection closed before it opened, or it did not open within
``fallback_timeout``): once a link is open, a refusal of the ``hello`` is the
relay's answer whatever the transport. A relay that refuses the TCP
connection itself is down, not blocked: the HTTP transport at the same
address is not tried then.

Every way this can fail becomes a :class:`~relay_client.RelayError`, and a
link that was opened but not registered is never left behind.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from ._http import HttpSocket
from ._options import Options, TokenSource
from ._socket import Socket, SocketClosed, WebSocket
from ._wire import SUBPROTOCOL, pack, unpack
from .errors import (
    ConnectionClosed,
    ProtocolError,
    RelayUnavailable,
    SessionReplaced,
    error_from_code,
)
from .types import Welcome

log = logging.getLogger("relay_client")


class _NotOpened(RelayUnavailable):
    """The WebSocket never opened; ``unreachable`` when nothing accepted the connection."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


async def open_session(
    options: Options, *, peer_id: str | None, resume: str | None, received: int
) -> tuple[Socket, Welcome]:
    """Connect to the relay and register as ``peer_id``, on the first transport that opens.

    With a ``resume`` secret the ``hello`` also says how many envelopes the
    previous link delivered (``received``), so the relay replays the rest.
    """
    try:
        token = await _token(options.token)
    except Exception as exc:
        raise RelayUnavailable(f"the token function failed: {describe(exc)}") from exc
    hello: dict[str, Any] = {"type": "hello", "id": peer_id, "token": token, "resume": resume}
    if resume:
        hello["received"] = received
    sock = await _open_link(options)
    try:
        return sock, await _register(sock, hello, options)
    except BaseException:
        sock.abort()  # never leak the link (refusal, timeout, cancellation)
        raise


async def _open_link(options: Options) -> Socket:
    """The first transport of ``options.transports`` that opens (see the module docstring)."""
    failures: list[str] = []
    for index, transport in enumerate(options.transports):
        later = options.transports[index + 1 :]
        if transport == "http":
            try:
                return await HttpSocket.connect(options)
            except RelayUnavailable as exc:
                failures.append(str(exc))
                continue
        try:
            return await _open_websocket(options, fallback=bool(later))
        except _NotOpened as exc:
            failures.append(str(exc))
            if not later:
                continue
            try:
                http_url = options.http_endpoint()
            except ValueError as why:
                failures.append(f"no HTTP fallback: {why}")
                break
            if exc.unreachable and _same_address(options.url, http_url):
                break
            log.info("%s; falling back to HTTP at %s", exc, http_url)
    raise RelayUnavailable("; ".join(failures))


def _same_address(ws_url: str, http_url: str) -> bool:
    one, two = urlsplit(ws_url), urlsplit(http_url)
    return (one.hostname, one.port or _PORTS[one.scheme]) == (
        two.hostname,
        two.port or _PORTS[two.scheme],
    )


_PORTS = {"ws": 80, "http": 80, "wss": 443, "https": 443}


async def _open_websocket(options: Options, *, fallback: bool) -> WebSocket:
    """The WebSocket handshake; :class:`_NotOpened` when it does not complete.

    With a transport to fall back to, it gets ``fallback_timeout`` to open
    (at most ``open_timeout``).
    """
    tls: dict[str, Any] = {} if options.ssl is None else {"ssl": options.ssl}
    timeout = min(options.fallback_timeout, options.open_timeout) if fallback else None
    try:
        conn = await ws_connect(
            options.url,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            open_timeout=timeout or options.open_timeout,
            ping_interval=options.ping_interval,
            ping_timeout=options.ping_timeout,
            close_timeout=options.close_timeout,
            max_size=options.max_size,
            **tls,
        )
    except InvalidStatus as exc:
        raise _NotOpened(
            f"relay at {options.url} refused the WebSocket upgrade "
            f"(HTTP {exc.response.status_code})"
        ) from None
    except (OSError, TimeoutError, EOFError, InvalidHandshake, WsConnectionClosed) as exc:
        unreachable = isinstance(exc, ConnectionRefusedError | socket.gaierror)
        raise _NotOpened(
            f"cannot reach relay at {options.url}: {describe(exc)}", unreachable=unreachable
        ) from None
    except Exception as exc:  # anything else the opening handshake may raise
        log.debug("handshake failed", exc_info=True)
        raise _NotOpened(f"cannot reach relay at {options.url}: {describe(exc)}") from None
    return WebSocket(conn)


def closed_error(code: int, reason: str) -> ConnectionClosed:
    """The error for a socket the relay closed with ``code``."""
    if code == 4503:
        return SessionReplaced(code, reason)
    return ConnectionClosed(code, reason)


def describe(exc: BaseException) -> str:
    """A short, human explanation of why a connection attempt failed."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc)
    return text if text else type(exc).__name__


async def _token(source: TokenSource) -> str | None:
    if source is None or isinstance(source, str):
        return source
    value = source()
    if inspect.isawaitable(value):
        value = await value
    return value


async def _register(conn: Socket, hello: dict[str, Any], options: Options) -> Welcome:
    """Send ``hello`` on a fresh link and return the ``welcome``."""
    try:
        await conn.send(pack(hello))
        async with asyncio.timeout(options.open_timeout):
            frame = await conn.recv()
    except SocketClosed:
        raise closed_error(conn.close_code, conn.close_reason) from None
    except TimeoutError:
        raise RelayUnavailable(f"relay at {options.url} sent no welcome") from None
    envelope = unpack(frame) if isinstance(frame, bytes) else None
    if envelope is None or envelope["type"] not in ("welcome", "err"):
        raise ProtocolError(f"relay at {options.url} answered hello with something unexpected")
    if envelope["type"] == "err":
        raise error_from_code(str(envelope.get("code", "internal")), str(envelope.get("msg", "")))
    limits = envelope.get("limits")
    return Welcome(
        id=str(envelope.get("id", "")),
        resume=str(envelope.get("resume", "")),
        limits=dict(limits) if isinstance(limits, dict) else {},
        node=str(envelope.get("node", "")),
        resumed=bool(envelope.get("resumed", False)),
    )
