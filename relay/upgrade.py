"""Before a WebSocket upgrade: the checks every endpoint applies, admission, and the refusal.

Both WebSocket endpoints (the native one, ``relay.ws``, and PeerJS's,
``relay.peerjs.endpoint``) let a socket in through a ``Gate``, in this order:

1. a draining node: 503 "the relay is shutting down", ``Retry-After: 1``
   (the client should come back, elsewhere, soon);
2. an ``Origin`` not in ``origins`` (when that list is set): 403;
3. the endpoint's own check, if it has one (the native subprotocol: 400);
4. admission's caps (``relay.admission``): its 503 or 429 and its
   ``Retry-After``, counted in ``relay_handshakes_refused_total``.

A refusal is a plain HTTP response where the server supports the ASGI denial
extension (the relay's frame layer and uvicorn's implementations do), a close
otherwise: 1013 for admission's refusals, 1008 for the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.types import Message, Receive, Scope, Send

from relay.admission import Admission
from relay.decisions import ConnectInfo
from relay.protocol.codes import CloseCode

if TYPE_CHECKING:
    from relay.hub import Hub

# Seconds a client refused by a draining node should wait: the node is going,
# its peers are reconnecting elsewhere now.
DRAINING_RETRY_AFTER = 1

# A check of the endpoint's own: (status, body) to refuse with, or None.
HandshakeCheck = Callable[[Scope], "tuple[int, str] | None"]


class Gate:
    """The handshake checks and admission of one WebSocket endpoint.

    Endpoints share one ``Admission``, so native and PeerJS sockets count
    against the same caps.
    """

    def __init__(self, hub: Hub, admission: Admission, check: HandshakeCheck | None = None) -> None:
        self.hub = hub
        self.admission = admission
        self._check = check
        self._origins = frozenset(origin.lower().rstrip("/") for origin in hub.settings.origins)

    async def admit(self, scope: Scope, receive: Receive, send: Send) -> str | None:
        """Take the upgrade request and check it: the client's address once admitted.

        None when the socket was refused (the refusal is sent) or the request
        was not a WebSocket connect. An admitted address holds a socket of
        admission's caps until ``release``.
        """
        message = await receive()
        if message["type"] != "websocket.connect":
            return None
        decided = self.decide(scope)
        if isinstance(decided, Refusal):
            for answer in refusal_messages(scope, decided):
                await send(answer)
            return None
        return decided

    def decide(self, scope: Scope) -> str | Refusal:
        """Check the upgrade request: the client's address once admitted, or the refusal.

        An admitted address holds a socket of admission's caps until ``release``.
        """
        refused = self.check(scope)
        if refused is not None:
            status, body = refused
            retry_after = DRAINING_RETRY_AFTER if status == 503 else None
            return Refusal(status, body, CloseCode.POLICY_VIOLATION, retry_after)
        ip = self.admission.client_ip(scope)
        denied = self.admission.admit(ip)
        if denied is not None:
            self.hub.metrics.refused.labels(denied.reason).inc()
            return Refusal(
                denied.status, denied.message, CloseCode.TRY_AGAIN_LATER, denied.retry_after
            )
        return ip

    def check(self, scope: Scope) -> tuple[int, str] | None:
        """The handshake checks before admission: (status, body) to refuse with, or None."""
        if not self.hub.accepting:
            return 503, "the relay is shutting down"
        if self._origins:
            origin = _header(scope, b"origin")
            if origin is not None and origin.lower().rstrip("/") not in self._origins:
                return 403, "origin not allowed"
        return self._check(scope) if self._check is not None else None

    def connect_info(self, scope: Scope, ip: str) -> ConnectInfo | None:
        """What an outside decision is told of the connection; None when nobody decides.

        Kept only while a decider is configured (``Hub.decider``): the headers
        would otherwise cost every idle connection their memory for nothing.
        """
        if self.hub.decider is None:
            return None
        headers = tuple(
            (bytes(name).decode("latin-1").lower(), bytes(value).decode("latin-1"))
            for name, value in scope.get("headers", [])
        )
        return ConnectInfo(ip, headers)

    def release(self, ip: str) -> None:
        """Give back the socket ``admit`` reserved for ``ip`` (when the socket has ended)."""
        self.admission.release(ip)


def direct_connection(scope: Scope) -> Any | None:
    """The relay frame layer's connection, when it serves the socket (``relay.wsserver``).

    It is offered as ``scope["extensions"]["relay.direct"]``: an endpoint that
    takes it runs the socket in direct mode (``accept_direct``). None on
    uvicorn's own WebSocket implementations, which speak only ASGI messages.
    """
    direct = scope.get("extensions", {}).get("relay.direct")
    return None if direct is None else direct["connection"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an upgrade is refused: the HTTP answer, or the close code without one."""

    status: int
    body: str
    close_code: int = CloseCode.POLICY_VIOLATION
    retry_after: int | None = None


def refusal_messages(scope: Scope, refusal: Refusal) -> list[Message]:
    """A refusal's ASGI messages: an HTTP answer where the server can give one, else a close."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        return [{"type": "websocket.close", "code": refusal.close_code}]
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if refusal.retry_after is not None:
        headers.append((b"retry-after", str(refusal.retry_after).encode()))
    return [
        {"type": "websocket.http.response.start", "status": refusal.status, "headers": headers},
        {"type": "websocket.http.response.body", "body": refusal.body.encode()},
    ]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None
