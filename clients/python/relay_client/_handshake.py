"""Opening one socket to the relay: the WebSocket handshake, then ``hello`` and ``welcome``.

Every way this can fail becomes a :class:`~relay_client.RelayError`, and a
socket that was opened but not registered is never left behind.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from ._options import Options, TokenSource
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


async def open_session(
    options: Options, *, peer_id: str | None, resume: str | None, received: int
) -> tuple[ClientConnection, Welcome]:
    """Connect to ``options.url`` and register as ``peer_id``.

    With a ``resume`` secret the ``hello`` also says how many envelopes the
    previous socket delivered (``received``), so the relay replays the rest.
    """
    try:
        token = await _token(options.token)
    except Exception as exc:
        raise RelayUnavailable(f"the token function failed: {describe(exc)}") from exc
    hello: dict[str, Any] = {"type": "hello", "id": peer_id, "token": token, "resume": resume}
    if resume:
        hello["received"] = received
    tls: dict[str, Any] = {} if options.ssl is None else {"ssl": options.ssl}
    try:
        conn = await ws_connect(
            options.url,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            open_timeout=options.open_timeout,
            ping_interval=options.ping_interval,
            ping_timeout=options.ping_timeout,
            close_timeout=options.close_timeout,
            max_size=options.max_size,
            **tls,
        )
    except InvalidStatus as exc:
        raise RelayUnavailable(
            f"relay at {options.url} refused the WebSocket upgrade "
            f"(HTTP {exc.response.status_code})"
        ) from None
    except (OSError, TimeoutError, EOFError, InvalidHandshake, WsConnectionClosed) as exc:
        raise RelayUnavailable(f"cannot reach relay at {options.url}: {describe(exc)}") from None
    except Exception as exc:  # anything else the opening handshake may raise
        log.debug("handshake failed", exc_info=True)
        raise RelayUnavailable(f"cannot reach relay at {options.url}: {describe(exc)}") from None
    try:
        return conn, await _register(conn, hello, options)
    except BaseException:
        conn.transport.abort()  # never leak the socket (refusal, timeout, cancellation)
        raise


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


async def _register(conn: ClientConnection, hello: dict[str, Any], options: Options) -> Welcome:
    """Send ``hello`` on a fresh socket and return the ``welcome``."""
    try:
        await conn.send(pack(hello))
        async with asyncio.timeout(options.open_timeout):
            frame = await conn.recv()
    except WsConnectionClosed:
        raise closed_error(conn.close_code or 1006, conn.close_reason or "") from None
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
