"""The WebSocket endpoint: handshake checks, the hello, then one session.

A raw ASGI app rather than Starlette's ``WebSocket`` wrapper: the hot path
receives and sends ASGI messages directly. Refusals before the upgrade are
plain HTTP responses (403 foreign Origin, 400 unknown subprotocol, 503 while
draining) where the server supports them, a close otherwise; so are those of
``relay.admission`` (503 node full, 429 per-address cap or handshake rate,
1013 as a close).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import anyio
from starlette.responses import PlainTextResponse
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from relay.admission import Admission
from relay.auth import close_at_expiry
from relay.broker import BrokerUnavailable
from relay.exceptions import RelayError
from relay.hub import Hub
from relay.protocol import codec
from relay.protocol.codes import CloseCode, ErrorCode
from relay.session import Session

log = logging.getLogger("relay.ws")

SUBPROTOCOL = "relay.v1"


class ASGITransport:
    """A session's ``Transport`` over ASGI ``send``."""

    __slots__ = ("_send",)

    def __init__(self, send: Send) -> None:
        self._send = send

    async def send_bytes(self, data: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": data})

    async def close(self, code: int, reason: str) -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})


class RelayEndpoint:
    """ASGI app serving the relay's WebSocket path."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.settings = hub.settings
        self._origins = frozenset(origin.lower().rstrip("/") for origin in hub.settings.origins)
        self.admission = Admission(hub.settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        refusal = self._check_handshake(scope)
        if refusal is not None:
            await _refuse(scope, send, *refusal)
            return
        ip = self.admission.client_ip(scope)
        denied = self.admission.admit(ip)
        if denied is not None:
            self.hub.metrics.refused.labels(denied.reason).inc()
            await _refuse(
                scope, send, denied.status, denied.message, close_code=CloseCode.TRY_AGAIN_LATER
            )
            return
        try:
            await self._accept(scope, receive, send)
        finally:
            self.admission.release(ip)

    async def _accept(self, scope: Scope, receive: Receive, send: Send) -> None:
        offered = scope.get("subprotocols") or []
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if SUBPROTOCOL in offered:
            accept["subprotocol"] = SUBPROTOCOL
        await send(accept)
        transport = ASGITransport(send)
        session = Session(self.hub, transport, time.monotonic)
        self.hub.opened(session)
        client_code: int | None = None
        try:
            if await self._hello(session, receive, transport):
                client_code = await self._serve(session, receive, transport)
        finally:
            with anyio.CancelScope(shield=True):
                await self.hub.closed(session, client_code)

    def _check_handshake(self, scope: Scope) -> tuple[int, str] | None:
        if not self.hub.accepting:
            return 503, "the relay is shutting down"
        if self._origins:
            origin = _header(scope, b"origin")
            if origin is not None and origin.lower().rstrip("/") not in self._origins:
                return 403, "origin not allowed"
        offered = scope.get("subprotocols") or []
        if offered and SUBPROTOCOL not in offered:
            return 400, f"unsupported subprotocol: offer {SUBPROTOCOL}"
        return None

    async def _hello(self, session: Session, receive: Receive, transport: ASGITransport) -> bool:
        """Run the hello exchange; True when the session is registered."""
        message: Message | None = None
        with anyio.move_on_after(self.settings.hello_timeout_seconds):
            message = await receive()
        if message is None:
            await transport.close(CloseCode.POLICY_VIOLATION, "no hello in time")
            return False
        if message["type"] != "websocket.receive":
            return False
        frame = message.get("bytes")
        if frame is None:
            await transport.close(CloseCode.UNSUPPORTED_DATA, "text frames are not accepted")
            return False
        try:
            welcome = await self.hub.register(session, session.decode_hello(frame))
        except BrokerUnavailable:
            await session.send_now(
                codec.encode_err("overloaded", "the cluster backplane is unavailable"), "err"
            )
            await transport.close(CloseCode.TRY_AGAIN_LATER, "backplane unavailable")
            return False
        except RelayError as exc:
            self.hub.metrics.errors.labels(exc.code.value).inc()
            await session.send_now(codec.encode_err(exc.code.value, exc.message), "err")
            code = _HELLO_CLOSE_CODES.get(exc.code, CloseCode.POLICY_VIOLATION)
            await transport.close(code, exc.message[:120])
            return False
        await session.send_now(welcome, "welcome")
        return True

    async def _serve(self, session: Session, receive: Receive, transport: ASGITransport) -> int:
        """Read frames until the socket ends; returns the client's close code."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_write, session, transport)
            if self.hub.auth is not None and session.claims is not None:
                tasks.start_soon(close_at_expiry, session, self.hub.auth)
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    frame = message.get("bytes")
                    if session.close_code is not None:
                        continue
                    if frame is None:
                        session.close(
                            CloseCode.UNSUPPORTED_DATA,
                            "text frames are not accepted",
                            reason="text",
                        )
                    else:
                        await session.receive(frame)
                elif kind == "websocket.disconnect":
                    tasks.cancel_scope.cancel()
                    return int(message.get("code") or 1006)
        raise AssertionError("unreachable")  # pragma: no cover


async def _write(session: Session, transport: ASGITransport) -> None:
    try:
        await session.write()
    except Exception:
        # The socket is gone (the reader will see the disconnect) or broken.
        log.debug("writer for %s stopped", session.peer and session.peer.id, exc_info=True)
        with anyio.move_on_after(1):
            with contextlib.suppress(Exception):
                await transport.close(CloseCode.INTERNAL_ERROR, "internal error")


async def unknown_path(websocket: WebSocket) -> None:
    """Refuse a WebSocket upgrade on any other path with a 404, not Starlette's 403."""
    await websocket.send_denial_response(
        PlainTextResponse("no WebSocket endpoint at this path", status_code=404)
    )


# How a refused hello closes the socket; any other refusal is a policy violation.
_HELLO_CLOSE_CODES = {
    ErrorCode.ID_TAKEN: CloseCode.ID_TAKEN,
    ErrorCode.UNAUTHORIZED: CloseCode.UNAUTHORIZED,
    ErrorCode.TOO_LARGE: CloseCode.MESSAGE_TOO_BIG,
}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _refuse(
    scope: Scope,
    send: Send,
    status: int,
    body: str,
    *,
    close_code: int = CloseCode.POLICY_VIOLATION,
) -> None:
    if "websocket.http.response" in scope.get("extensions", {}):
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body.encode()})
    else:
        await send({"type": "websocket.close", "code": close_code})
