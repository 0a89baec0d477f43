"""What a peer does when a socket ends: reconnect with backoff and resume, or stop.

A socket that dropped, or that the relay closed with a retryable code
(:func:`~relay_client.should_reconnect`), is followed by attempts spaced
with full-jitter exponential backoff. What the socket carried unanswered
fails with ConnectionLost, unless the relay drained (1001): then it is sent
again once the session is restored. Each attempt's ``hello`` carries the
latest resume secret and how many envelopes arrived (see
:meth:`Connection.dial`); the new socket then restores the session
(:meth:`Connection.serve`). A terminal close, an attempt refused for good, or
``max_retries`` failed attempts in a row close the peer.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

from ._handshake import closed_error
from ._socket import Socket
from .errors import (
    ConnectionClosed,
    ProtocolError,
    RelayError,
    RelayUnavailable,
    ServerError,
    should_reconnect,
)
from .types import State

if TYPE_CHECKING:
    from ._connection import Connection

log = logging.getLogger("relay_client")

_TRANSIENT_CODES = frozenset({"overloaded", "internal", "rate-limited"})


async def supervise(link: Connection, conn: Socket) -> None:
    """Serve ``conn``, then each socket after it, until the peer is closed for good."""
    restore = False  # the first session has nothing to restore
    try:
        while True:
            end = await link.serve(conn, restore=restore)
            restore = True
            if link.closing:
                return
            if not link.options.reconnect or not should_reconnect(end.code):
                link.finish(closed_error(end.code, end.reason))
                return
            log.info("connection lost (code %s %s), reconnecting", end.code, end.reason)
            link.lose_inflight(end)
            redialled = await _redial(link)
            if redialled is None:
                return
            conn = redialled
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bug here must not leave callers hanging
        log.exception("relay peer supervisor failed")
        link.finish(ProtocolError(f"internal client failure: {exc!r}"))
        if link.socket is not None:
            await link.socket.close()


async def _redial(link: Connection) -> Socket | None:
    """Dial until registered again; ``None`` when the peer closed meanwhile."""
    link.set_state(State.RECONNECTING)
    options = link.options
    attempt = 0
    while True:
        ceiling = min(options.backoff_max, options.backoff_base * 2 ** min(attempt, 32))
        attempt += 1
        await asyncio.sleep(random.uniform(0, ceiling))
        if link.closing:
            return None
        try:
            return await link.dial()
        except RelayError as exc:
            if not _is_transient(exc):
                log.warning("reconnecting failed for good: %s", exc)
                link.finish(exc)
                return None
            if options.max_retries is not None and attempt >= options.max_retries:
                link.finish(
                    RelayUnavailable(f"gave up reconnecting after {attempt} attempts: {exc}")
                )
                return None
            log.info("reconnect attempt %d failed: %s", attempt, exc)


def _is_transient(exc: RelayError) -> bool:
    """Whether a failed (re)connection attempt is worth retrying."""
    if isinstance(exc, RelayUnavailable | ProtocolError):
        return True
    if isinstance(exc, ConnectionClosed):
        return should_reconnect(exc.code)
    if isinstance(exc, ServerError):
        return exc.code in _TRANSIENT_CODES
    return False
