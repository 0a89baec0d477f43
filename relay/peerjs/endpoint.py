"""The PeerJS server protocol over HTTP and WebSocket (docs/peerjs.md).

Routes under ``peerjs_path`` (default ``/peerjs``), as the ``peerjs`` client
configured with ``{host, port, path: "/peerjs", key}`` calls them:

- ``GET {path}/{key}/id``: a fresh random id (text);
- ``GET {path}/{key}/peers``: the PeerJS ids, when ``peerjs_discovery`` is on
  (401 otherwise, as peerjs-server answers);
- WebSocket ``{path}/peerjs?key=&id=&token=``: JSON text frames.

The socket gets the relay's handshake checks first (draining 503, foreign
Origin 403, then admission's caps), then the PeerJS ones: the query's key,
id and token, with ``ERROR`` and a close for anything wrong, ``ID-TAKEN`` for
a held id, ``OPEN`` once registered. After that every frame is checked
(``relay.peerjs.protocol``), rate-limited like a native session, and either
relayed through the hub or refused with ``ERROR`` and a close. Messages to
an id nobody holds wait in the pre-connect queue (``relay.peerjs.pending``)
and are tried again until they go out or ``EXPIRE``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from dataclasses import dataclass

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from relay.admission import Admission
from relay.broker import BrokerUnavailable
from relay.cors import cors_route
from relay.exceptions import Overloaded, PeerOffline, RelayError
from relay.hub import Hub
from relay.limits import TokenBucket
from relay.peerjs import adapter, protocol
from relay.peerjs.adapter import HubPeer, TextTransport
from relay.peerjs.pending import PreConnectQueue
from relay.peerjs.protocol import HELD, Heartbeat, MessageType, Refusal, Relayed
from relay.protocol.codes import CloseCode, ErrorCode

log = logging.getLogger("relay.peerjs")

_RETRY_SECONDS = 0.25  # how often held messages are tried again
_EXPLAIN_SECONDS = 1.0  # longest wait to deliver the ERROR that explains a close
_UNDELIVERED = (PeerOffline, Overloaded, BrokerUnavailable)

# How a refused registration closes the socket (any other refusal: 1008).
_REGISTER_CLOSE_CODES = {
    ErrorCode.ID_TAKEN: CloseCode.ID_TAKEN,
    ErrorCode.UNAUTHORIZED: CloseCode.UNAUTHORIZED,
}
# The error code counted in relay_errors_total for each close of a bad client.
_ERROR_FOR_CLOSE = {
    CloseCode.MESSAGE_TOO_BIG: ErrorCode.TOO_LARGE,
    CloseCode.RATE_LIMITED: ErrorCode.RATE_LIMITED,
    CloseCode.INTERNAL_ERROR: ErrorCode.INTERNAL,
}


@dataclass(slots=True)
class _Held:
    """An id this node holds, with the PeerJS token that may take it over."""

    token_digest: bytes
    secret: str
    link: HubPeer


def check_path(path: str) -> None:
    """Refuse a ``peerjs_path`` the routes cannot use (``ValueError``)."""
    if not path.startswith("/") or path.endswith("/") or "{" in path:
        raise ValueError(
            f"peerjs_path {path!r}: use a path such as /peerjs (no trailing slash), "
            "or an empty one to turn the PeerJS endpoint off"
        )


class PeerJSEndpoint:
    """The PeerJS routes of one relay node."""

    def __init__(self, hub: Hub, admission: Admission) -> None:
        settings = hub.settings
        check_path(settings.peerjs_path)
        self.hub = hub
        self.settings = settings
        self.admission = admission
        self._origins = frozenset(o.lower().rstrip("/") for o in settings.origins)
        self.limits = protocol.Limits(settings.max_frame_bytes, settings.max_depth)
        self._held: dict[str, _Held] = {}

    def routes(self) -> list[BaseRoute]:
        """The routes to add to the app."""
        path = self.settings.peerjs_path
        origins = self.settings.origins
        return [
            cors_route(f"{path}/{{key}}/id", self.new_id, origins),
            cors_route(f"{path}/{{key}}/peers", self.list_peers, origins),
            WebSocketRoute(f"{path}/peerjs", self.serve),
        ]

    # --- REST -------------------------------------------------------------------

    async def new_id(self, request: Request) -> Response:
        """``GET {path}/{key}/id``: a random id no peer of this node holds."""
        if request.path_params["key"] != self.settings.peerjs_key:
            return _invalid_key()
        while adapter.held_locally(self.hub, peer_id := str(uuid.uuid4())):
            pass
        return PlainTextResponse(peer_id, headers={"Cache-Control": "no-store"})

    async def list_peers(self, request: Request) -> Response:
        """``GET {path}/{key}/peers``: every PeerJS id listed for discovery."""
        if request.path_params["key"] != self.settings.peerjs_key:
            return _invalid_key()
        if not self.settings.peerjs_discovery:
            return JSONResponse(
                {"error": "discovery-disabled", "message": "peer discovery is turned off"},
                status_code=401,
            )
        try:
            peers = await adapter.discoverable(self.hub)
        except BrokerUnavailable:
            return JSONResponse(
                {"error": "overloaded", "message": "the cluster backplane is unavailable"},
                status_code=503,
            )
        return JSONResponse(peers, headers={"Cache-Control": "no-store"})

    # --- WebSocket --------------------------------------------------------------

    async def serve(self, websocket: WebSocket) -> None:
        """One PeerJS socket, from the handshake to its end."""
        refusal = self._check_handshake(websocket)
        if refusal is not None:
            await _deny(websocket, *refusal)
            return
        ip = self.admission.client_ip(websocket.scope)
        denied = self.admission.admit(ip)
        if denied is not None:
            self.hub.metrics.refused.labels(denied.reason).inc()
            await _deny(websocket, denied.status, denied.message, CloseCode.TRY_AGAIN_LATER)
            return
        try:
            await websocket.accept()
            await self._connect(websocket)
        except (WebSocketDisconnect, WebSocketDisconnected):
            pass  # the client left during the handshake
        finally:
            self.admission.release(ip)

    def _check_handshake(self, websocket: WebSocket) -> tuple[int, str] | None:
        if not self.hub.accepting:
            return 503, "the relay is shutting down"
        origin = websocket.headers.get("origin")
        if self._origins and origin is not None and origin.lower().rstrip("/") not in self._origins:
            return 403, "origin not allowed"
        return None

    async def _connect(self, websocket: WebSocket) -> None:
        checked = self._check_query(websocket)
        if isinstance(checked, str):
            self.hub.metrics.errors.labels(ErrorCode.BAD_ENVELOPE.value).inc()
            await websocket.send_text(protocol.server_message(MessageType.ERROR, msg=checked))
            await websocket.close(CloseCode.POLICY_VIOLATION, "bad PeerJS parameters")
            return
        peer_id, token = checked
        transport = TextTransport(websocket, peer_id)
        link = HubPeer(self.hub, transport)
        try:
            if await self._register(link, transport, peer_id, token):
                await _Connection(self, link, transport, peer_id).run(websocket)
        finally:
            held = self._held.get(peer_id)
            if held is not None and held.link is link:
                del self._held[peer_id]
            with anyio.CancelScope(shield=True):
                await link.closed()

    def _check_query(self, websocket: WebSocket) -> tuple[str, str] | str:
        """The id and token the query gives, or what is wrong with it."""
        query = websocket.query_params
        peer_id, token, key = query.get("id"), query.get("token"), query.get("key")
        if not peer_id or not token or not key:
            return protocol.MISSING_PARAMETERS
        if key != self.settings.peerjs_key:
            return protocol.INVALID_KEY
        if not protocol.valid_id(peer_id, self.settings.max_id_length):
            return (
                "invalid id: letters and digits, with single spaces, _ or - between them, "
                f"at most {self.settings.max_id_length} characters"
            )
        if len(token) > protocol.MAX_TOKEN_LENGTH:
            return f"the token exceeds {protocol.MAX_TOKEN_LENGTH} characters"
        return peer_id, token

    async def _register(
        self, link: HubPeer, transport: TextTransport, peer_id: str, token: str
    ) -> bool:
        """Register ``peer_id``; True once ``OPEN`` was sent."""
        metrics = self.hub.metrics
        auth = self.hub.auth is not None
        digest = hashlib.sha256(token.encode()).digest()
        resume = None
        held = self._held.get(peer_id)
        if not auth and held is not None and hmac.compare_digest(held.token_digest, digest):
            resume = held.secret  # the same PeerJS client again: take over its socket
        try:
            secret = await link.register(peer_id, token if auth else None, resume)
        except BrokerUnavailable:
            metrics.errors.labels(ErrorCode.OVERLOADED.value).inc()
            await transport.send_text(
                protocol.server_message(MessageType.ERROR, msg="the cluster is unavailable")
            )
            await transport.close(CloseCode.TRY_AGAIN_LATER, "backplane unavailable")
            return False
        except RelayError as exc:
            metrics.errors.labels(exc.code.value).inc()
            if exc.code is ErrorCode.ID_TAKEN:
                text = protocol.server_message(MessageType.ID_TAKEN, msg="ID is taken")
            else:
                text = protocol.server_message(MessageType.ERROR, msg=exc.message)
            await transport.send_text(text)
            code = _REGISTER_CLOSE_CODES.get(exc.code, CloseCode.POLICY_VIOLATION)
            await transport.close(code, exc.message[:120])
            return False
        if not auth:
            self._held[peer_id] = _Held(digest, secret, link)
        open_text = protocol.server_message(MessageType.OPEN)
        await transport.send_text(open_text)
        metrics.sent["welcome"].add(len(open_text))
        if self.settings.peerjs_discovery:
            await link.join_discovery()
        return True


class _Connection:
    """One registered PeerJS socket: its reader, writer and pre-connect queue."""

    def __init__(
        self, endpoint: PeerJSEndpoint, link: HubPeer, transport: TextTransport, peer_id: str
    ) -> None:
        settings = endpoint.settings
        self.settings = settings
        self.limits = endpoint.limits
        self.metrics = endpoint.hub.metrics
        self.link = link
        self.transport = transport
        self.peer_id = peer_id
        self.rate = TokenBucket(settings.rate_per_second, settings.rate_burst, time.monotonic)
        self.pending = PreConnectQueue(
            max_messages=settings.peerjs_queue_messages,
            max_bytes=settings.peerjs_queue_bytes,
            expire_seconds=settings.peerjs_expire_seconds,
            clock=time.monotonic,
        )
        self.woken = anyio.Event()  # set when the pre-connect queue gets a message

    async def run(self, websocket: WebSocket) -> None:
        """Read frames until the socket ends."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self.link.write)
            tasks.start_soon(self.link.expire_with_token)
            tasks.start_soon(self._retry_held)
            while True:
                message = None
                with anyio.move_on_after(self.settings.peerjs_heartbeat_timeout_seconds):
                    message = await websocket.receive()
                if message is None:
                    if not self.link.closing:
                        self.link.close(
                            CloseCode.POLICY_VIOLATION, "no heartbeat in time", reason="silent"
                        )
                    continue
                if message["type"] == "websocket.disconnect":
                    tasks.cancel_scope.cancel()
                    return
                if self.link.closing:
                    continue
                text = message.get("text")
                if text is None:
                    size = len(message.get("bytes") or b"")
                    self.metrics.received["invalid"].add(size)
                    await self._refuse(
                        Refusal("binary frames are not accepted", CloseCode.UNSUPPORTED_DATA)
                    )
                else:
                    await self._receive(text)

    async def _receive(self, text: str) -> None:
        if not self.rate.take():
            self.metrics.received["invalid"].add(len(text))
            await self._refuse(Refusal("rate limit exceeded", CloseCode.RATE_LIMITED), "flood")
            return
        try:
            message = protocol.parse(text, self.peer_id, self.limits)
        except Refusal as refusal:
            self.metrics.received["invalid"].add(len(text))
            await self._refuse(refusal)
            return
        if isinstance(message, Heartbeat):
            self.metrics.received["ping"].add(len(text))
            return
        self.metrics.received["send"].add(len(text))
        if not protocol.valid_id(message.dst, self.settings.max_id_length):
            await self._expire(message.dst)  # no peer can ever hold it
        elif self.pending.holds(message.dst):
            await self._hold_or_expire(message)  # behind earlier messages to the same peer
        elif not await self._relay(message):
            await self._hold_or_expire(message)

    async def _relay(self, message: Relayed) -> bool:
        """Hand ``message`` to the hub; False when its destination cannot take it now."""
        started = time.perf_counter()
        try:
            await self.link.send(message)
        except _UNDELIVERED:
            return False
        except Exception:
            log.exception("internal error relaying a PeerJS %s", message.type)
            await self._refuse(Refusal("internal error", CloseCode.INTERNAL_ERROR), "error")
        else:
            self.metrics.routing.observe(time.perf_counter() - started)
        return True

    async def _hold_or_expire(self, message: Relayed) -> None:
        """Keep ``message`` for a peer not there yet; past the bounds that peer expires now."""
        if message.type not in HELD:
            return  # a LEAVE for an absent peer means nothing
        if self.pending.add(message):
            self.woken.set()
        else:
            self.pending.drop(message.dst)
            await self._expire(message.dst)

    async def _retry_held(self) -> None:
        """Try held messages again until they go out or their destination expires."""
        while True:
            if not self.pending:
                self.woken = anyio.Event()
                await self.woken.wait()
            await anyio.sleep(_RETRY_SECONDS)
            if self.link.closing:
                return  # a refused or replaced socket sends nothing more
            for dst in self.pending.expired():
                await self._expire(dst)
            for dst in self.pending.destinations():
                while (message := self.pending.first(dst)) is not None:
                    if not await self._relay(message):
                        break
                    self.pending.delivered(dst)

    async def _expire(self, dst: str) -> None:
        """Tell the client ``dst`` is unavailable (PeerJS's ``peer-unavailable``)."""
        self.metrics.errors.labels(ErrorCode.PEER_OFFLINE.value).inc()
        await self._say(protocol.server_message(MessageType.EXPIRE, src=dst, dst=self.peer_id))

    async def _refuse(self, refusal: Refusal, reason: str = "bad") -> None:
        """``ERROR`` that explains it, then close: PeerJS clients treat any ERROR as fatal."""
        code = _ERROR_FOR_CLOSE.get(CloseCode(refusal.close_code), ErrorCode.BAD_ENVELOPE)
        self.metrics.errors.labels(code.value).inc()
        with anyio.move_on_after(_EXPLAIN_SECONDS):
            await self._say(protocol.server_message(MessageType.ERROR, msg=refusal.message))
        self.link.close(refusal.close_code, refusal.message[:120], reason=reason)

    async def _say(self, text: str) -> None:
        if self.link.closing:
            return
        try:
            await self.transport.send_text(text)
        except (WebSocketDisconnect, WebSocketDisconnected, OSError):
            pass  # the socket is gone: the reader sees the disconnect
        else:
            self.metrics.sent["err"].add(len(text))


def _invalid_key() -> Response:
    return JSONResponse({"error": "invalid-key", "message": protocol.INVALID_KEY}, status_code=404)


async def _deny(
    websocket: WebSocket, status: int, body: str, close_code: int = CloseCode.POLICY_VIOLATION
) -> None:
    """Refuse before the upgrade: an HTTP answer where the server can give one, else a close."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(PlainTextResponse(body, status_code=status))
    else:
        await websocket.close(close_code)
