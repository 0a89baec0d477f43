"""The PeerJS server protocol over HTTP and WebSocket (docs/peerjs.md).

Routes under ``peerjs_path`` (default ``/peerjs``), as the ``peerjs`` client
configured with ``{host, port, path: "/peerjs", key}`` calls them:

- ``GET {path}/{key}/id``: a fresh random id (text);
- ``GET {path}/{key}/peers``: the PeerJS ids, when ``peerjs_discovery`` is on
  (401 otherwise, as peerjs-server answers);
- WebSocket ``{path}/peerjs?key=&id=&token=``: JSON text frames.

The socket goes through the gate native sockets go through
(``relay.upgrade``: draining 503, foreign Origin 403, then admission's caps,
with the same answers), then the PeerJS checks: the query's key, id and
token, with ``ERROR`` and a close for anything wrong. From there a
``PeerJSSession`` (``relay.peerjs.session``) runs it as a native session
runs: in direct mode on the relay's frame layer, on ``ws.ASGITransport`` on
uvicorn's implementations, the hub's frames turned into PeerJS text on the
way out (``relay.peerjs.transport``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from dataclasses import dataclass
from functools import partial

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.types import Receive, Scope, Send

from relay.admission import Admission
from relay.broker import BrokerUnavailable
from relay.cors import cors_route
from relay.hub import Hub
from relay.peerjs import protocol
from relay.peerjs.protocol import DISCOVERY_ROOM, NAMESPACE, MessageType
from relay.peerjs.session import PeerJSSession
from relay.peerjs.transport import DirectTextTransport, TextSender
from relay.protocol.codes import CloseCode, ErrorCode
from relay.upgrade import Gate, direct_connection
from relay.ws import ASGITransport

log = logging.getLogger("relay.peerjs")


@dataclass(slots=True)
class _Held:
    """An id this node holds, with the PeerJS token that may take it over."""

    token_digest: bytes
    secret: str
    session: PeerJSSession


class PeerJSEndpoint:
    """The PeerJS routes of one relay node; called as an ASGI app, the PeerJS socket."""

    def __init__(self, hub: Hub, admission: Admission) -> None:
        settings = hub.settings
        self.hub = hub
        self.settings = settings
        self.gate = Gate(hub, admission)
        self._held: dict[str, _Held] = {}

    def routes(self) -> list[BaseRoute]:
        """The routes to add to the app."""
        path = self.settings.peerjs_path
        origins = self.settings.origins
        return [
            cors_route(f"{path}/{{key}}/id", self.new_id, origins),
            cors_route(f"{path}/{{key}}/peers", self.list_peers, origins),
            WebSocketRoute(f"{path}/peerjs", self),
        ]

    # --- REST -------------------------------------------------------------------

    async def new_id(self, request: Request) -> Response:
        """``GET {path}/{key}/id``: a random id no peer of this node holds."""
        if request.path_params["key"] != self.settings.peerjs_key:
            return _invalid_key()
        while NAMESPACE + (peer_id := str(uuid.uuid4())) in self.hub.peers:
            pass
        return PlainTextResponse(peer_id, headers={"Cache-Control": "no-store"})

    async def list_peers(self, request: Request) -> Response:
        """``GET {path}/{key}/peers``: every PeerJS id listed for discovery, on every node."""
        if request.path_params["key"] != self.settings.peerjs_key:
            return _invalid_key()
        if not self.settings.peerjs_discovery:
            return JSONResponse(
                {"error": "discovery-disabled", "message": "peer discovery is turned off"},
                status_code=401,
            )
        try:
            members = await self.hub.broker.members(DISCOVERY_ROOM)
        except BrokerUnavailable:
            return JSONResponse(
                {"error": "overloaded", "message": "the cluster backplane is unavailable"},
                status_code=503,
            )
        peers = sorted(m.removeprefix(NAMESPACE) for m in members if m.startswith(NAMESPACE))
        return JSONResponse(peers, headers={"Cache-Control": "no-store"})

    # --- WebSocket --------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One PeerJS socket, from the handshake to its end."""
        ip = await self.gate.admit(scope, receive, send)
        if ip is None:
            return
        checked = self._check_query(scope)
        if isinstance(checked, str):
            await self._refuse_query(send, checked)
            self.gate.release(ip)
            return
        peer_id, token = checked
        on_end = partial(self._ended, ip, peer_id)
        connection = direct_connection(scope)
        if connection is not None:
            direct = DirectTextTransport(connection)
            session = PeerJSSession(self.hub, direct, peer_id, on_end=on_end)
            direct.translate = session.translate
            session.connect_info = self.gate.connect_info(scope, ip)
            self.hub.opened(session)
            connection.accept_direct(session)
            # Nothing is read before OPEN: what the client sends meanwhile
            # waits in the connection, as it waits in ASGI's queue below.
            session.hold()
            try:
                await self._register(session, token)
            finally:
                session.resume()
            return
        try:
            await send({"type": "websocket.accept"})
        except OSError:  # the client left during the handshake
            self.gate.release(ip)
            return
        sender = TextSender(send)
        transport = ASGITransport(sender, self.settings.close_timeout_seconds)
        session = PeerJSSession(self.hub, transport, peer_id, on_end=on_end)
        sender.translate = session.translate
        session.connect_info = self.gate.connect_info(scope, ip)
        self.hub.opened(session)
        await self._register(session, token)
        await transport.run(session, receive)

    async def _refuse_query(self, send: Send, error: str) -> None:
        """Accept, then ``ERROR`` and 1008: PeerJS clients read only what follows the upgrade."""
        try:
            await send({"type": "websocket.accept"})
            self.hub.metrics.errors.labels(ErrorCode.BAD_ENVELOPE.value).inc()
            error_text = protocol.server_message(MessageType.ERROR, msg=error)
            await send({"type": "websocket.send", "text": error_text})
            await send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION,
                        "reason": "bad PeerJS parameters"})  # fmt: skip
        except OSError:  # the client left during the handshake
            pass

    def _check_query(self, scope: Scope) -> tuple[str, str] | str:
        """The id and token the query gives, or what is wrong with it."""
        query = QueryParams(scope.get("query_string", b""))
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

    async def _register(self, session: PeerJSSession, token: str) -> None:
        """Register the session's id; in open mode the same token may take it over later."""
        auth = self.hub.auth is not None
        digest = hashlib.sha256(token.encode()).digest()
        resume = None
        held = self._held.get(session.peerjs_id)
        if not auth and held is not None and hmac.compare_digest(held.token_digest, digest):
            resume = held.secret  # the same PeerJS client again: take over its socket
        if await session.open(token if auth else None, resume) and not auth:
            assert session.peer is not None
            self._held[session.peerjs_id] = _Held(digest, session.peer.secret, session)

    def _ended(self, ip: str, peer_id: str) -> None:
        """A PeerJS session ended: its admission slot and its takeover entry go."""
        self.gate.release(ip)
        held = self._held.get(peer_id)
        if held is not None and held.session.ended:
            del self._held[peer_id]


def _invalid_key() -> Response:
    return JSONResponse({"error": "invalid-key", "message": protocol.INVALID_KEY}, status_code=404)
