"""The /admin routes: the page, login and logout, JSON reads, the pushed stream, actions.

Everything under /admin is 404 unless ``admin_password`` is set, and every
answer carries a strict CSP, ``frame-ancestors 'none'`` and ``no-store``.
Reads need the session cookie or HTTP Basic (user ``admin``) and are
rate-limited per address; actions need the cookie, its CSRF token in
``X-CSRF-Token`` and a JSON body, are refused in read-only mode, and are
logged with the operator and address. No answer carries a message payload.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.admin.auth import (
    COOKIE,
    CSRF_HEADER,
    PASSWORD_LOGIN,
    AdminAuth,
    AdminSession,
    Login,
    Throttle,
)
from relay.admin.cluster import AdminCluster
from relay.admission import AddressSet, Admission
from relay.api import BodyTooLarge, read_bounded_body
from relay.broker.base import BrokerUnavailable, RequestFailed
from relay.exceptions import RelayError
from relay.protocol import codec
from relay.protocol.envelopes import Publish
from relay.protocol.envelopes import Send as SendEnvelope
from relay.settings import Settings

log = logging.getLogger("relay.admin")

PAGE_DIR = Path(__file__).parent.parent / "static" / "admin"
HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
STREAM_SECONDS = 1.0  # how often the stream pushes the cluster's figures
MAX_STREAMS = 16  # open streams per node
PAGE_SIZE = 100  # most room members in one answer
READ_RATE, READ_BURST = 10.0, 40  # reads per second per address
# The page's files, by URL path under /admin/ (uplot.*: built by clients/js/scripts/build.js).
_PAGE_NAMES = ("index.html", "admin.js", "admin.css", "uplot.js", "uplot.css", "uplot.LICENSE.txt")
_PAGE_FILES = {"": "index.html"} | {name: name for name in _PAGE_NAMES}


class AdminError(Exception):
    """An answer other than 200, as JSON {"error", "message"}."""

    def __init__(self, status: int, code: str, message: str, retry_after: float = 0) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


class SecureHeaders:
    """ASGI wrapper: the admin headers on every answer, 404 for everything when off."""

    def __init__(self, app: ASGIApp, enabled: bool) -> None:
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *HEADERS]}
            await send(message)

        if not self.enabled:
            await Response("Not Found", 404)(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


class AdminViews:
    """The /admin endpoints of one node."""

    def __init__(self, settings: Settings, cluster: AdminCluster, admission: Admission) -> None:
        self.settings = settings
        self.cluster = cluster
        self.auth = AdminAuth(settings, cluster.hub.auth)
        self.admission = admission
        self.reads = Throttle(READ_RATE, READ_BURST, settings.ip_table_size)
        self._trusted = AddressSet(settings.trusted_proxies)
        self._streams = 0

    def routes(self) -> list[BaseRoute]:
        """The routes, relative to the /admin mount."""
        return [
            *(Route("/" + name, self.page) for name in _PAGE_FILES),
            Route("/login", self._wrap(self.login), methods=["POST"]),
            Route("/logout", self._wrap(self.logout), methods=["POST"]),
            Route("/api/session", self._wrap(self.session)),
            Route("/api/overview", self._wrap(self.overview)),
            Route("/api/events", self._wrap(self.events)),
            Route("/api/peers/{peer_id}", self._wrap(self.peer)),
            Route("/api/rooms/{room:path}", self._wrap(self.room)),
            Route("/api/search", self._wrap(self.search)),
            Route("/api/stream", self._wrap(self.stream)),
            Route("/api/disconnect", self._wrap(self.disconnect), methods=["POST"]),
            Route("/api/remove", self._wrap(self.remove), methods=["POST"]),
            Route("/api/publish", self._wrap(self.publish), methods=["POST"]),
        ]

    # --- plumbing -------------------------------------------------------------

    def _wrap(self, handler: Callable[[Request], Awaitable[Response]]) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except AdminError as exc:
                headers = {}
                if exc.retry_after:
                    headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
                if exc.status == 401 and request.headers.get("sec-fetch-mode") is None:
                    headers["WWW-Authenticate"] = 'Basic realm="relay admin", charset="UTF-8"'
                body = {"error": exc.code, "message": exc.message}
                return JSONResponse(body, exc.status, headers=headers)
            except ClientDisconnect:
                body = {"error": "bad-request", "message": "the body ended early"}
                return JSONResponse(body, 400)
            except (BrokerUnavailable, RequestFailed):
                body = {"error": "unavailable", "message": "the cluster could not be asked"}
                return JSONResponse(body, 503, headers={"Retry-After": "1"})

        return endpoint

    def _address(self, request: Request) -> str:
        return self.admission.client_ip(request.scope)

    def _is_https(self, request: Request) -> bool:
        if request.url.scheme == "https":
            return True
        client = request.client
        return (
            client is not None
            and client.host in self._trusted
            and request.headers.get("x-forwarded-proto", "").lower() == "https"
        )

    def _session(self, request: Request) -> AdminSession | None:
        return self.auth.session(request.cookies.get(COOKIE))

    async def _reader(self, request: Request) -> str:
        """Who reads: ``session`` or ``basic``; AdminError 401/429 otherwise."""
        address = self._address(request)
        if not self.reads.take(address):
            raise AdminError(
                429, "rate-limited", "too many requests", self.reads.retry_after(address)
            )
        if self._session(request) is not None:
            return "session"
        header = request.headers.get("authorization")
        if header is not None and header[:6].lower() == "basic ":
            if not self.auth.failures.allowed(address):
                retry = self.auth.failures.retry_after(address)
                raise AdminError(429, "rate-limited", "too many failed logins", retry)
            if await self.auth.check_basic(header):
                return "basic"
            self.auth.failures.take(address)
        raise AdminError(401, "unauthorized", "log in first")

    async def _operator(self, request: Request) -> str:
        """Check an action's credentials; returns who to log it as."""
        session = self._session(request)
        if session is None:
            await self._reader(request)  # 401 or 429 for a stranger
            raise AdminError(403, "forbidden", "HTTP Basic reads only: log in to act")
        if self.settings.admin_read_only:
            raise AdminError(403, "read-only", "the admin page is read-only (admin_read_only)")
        if not session.may_act:
            raise AdminError(403, "read-only", "this login reads only (its token says read)")
        if not self.auth.check_csrf(session, request.headers.get(CSRF_HEADER)):
            raise AdminError(403, "csrf", "the X-CSRF-Token header is missing or wrong")
        return f"{session.who} (session {session.sid[:6]}) from {self._address(request)}"

    async def _json_body(self, request: Request) -> dict[str, Any]:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise AdminError(415, "unsupported-media-type", "send application/json")
        try:
            body = await read_bounded_body(request, self.settings.api_max_body_bytes)
        except BodyTooLarge:
            raise AdminError(413, "too-large", "the body is too large") from None
        try:
            fields = json.loads(body)
        except (ValueError, RecursionError):
            raise AdminError(400, "bad-request", "the body is not valid JSON") from None
        if not isinstance(fields, dict):
            raise AdminError(400, "bad-request", "the body must be a JSON object")
        return fields

    def _peer_id(self, value: object) -> str:
        if not isinstance(value, str):
            raise AdminError(400, "bad-request", "a peer id is a string")
        try:
            self.cluster.hub.codec_limits.check_peer_id(value)
        except RelayError as exc:
            raise AdminError(400, "bad-request", exc.message) from None
        return value

    def _room(self, value: object) -> str:
        if not isinstance(value, str):
            raise AdminError(400, "bad-request", "a room is a string")
        try:
            self.cluster.hub.codec_limits.check_room(value)
        except RelayError as exc:
            raise AdminError(400, "bad-request", exc.message) from None
        return value

    # --- the page and the login -------------------------------------------------

    async def page(self, request: Request) -> Response:
        """The page's files (no data: the page asks the API, which checks credentials)."""
        name = request.url.path.removeprefix("/admin").lstrip("/")
        file = _PAGE_FILES.get(name)
        if file is None or not (PAGE_DIR / file).is_file():
            return Response("Not Found", 404)
        return FileResponse(PAGE_DIR / file)

    async def login(self, request: Request) -> Response:
        """POST /admin/login {"password"} or {"token"} (an admin JWT): sets the session cookie.

        401 for a wrong one, 429 after too many.
        """
        address = self._address(request)
        if not self.auth.failures.allowed(address):
            retry = self.auth.failures.retry_after(address)
            raise AdminError(429, "rate-limited", "too many failed logins, wait", retry)
        fields = await self._json_body(request)
        password, token = fields.get("password"), fields.get("token")
        login: Login | None = None
        if isinstance(password, str) and await self.auth.check_password(password):
            login = PASSWORD_LOGIN
        elif isinstance(token, str):
            login = self.auth.check_token(token)
        if login is None:
            self.auth.failures.take(address)
            log.warning("admin: failed login from %s", address)
            raise AdminError(401, "unauthorized", "wrong password or token")
        cookie, session = self.auth.issue(login)
        log.info("admin: %s logged in (session %s) from %s", login.who, session.sid[:6], address)
        response = JSONResponse(self._session_body(session))
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=self.auth.seconds_left(session),
            path="/admin",
            secure=self._is_https(request),
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(self, request: Request) -> Response:
        """POST /admin/logout: forgets the cookie in this browser."""
        response = JSONResponse({"logged_out": True})
        response.delete_cookie(COOKIE, path="/admin", httponly=True, samesite="strict")
        return response

    def _session_body(self, session: AdminSession | None) -> dict[str, Any]:
        return {
            "user": "admin" if session is None else session.who,
            "read_only": self.settings.admin_read_only or session is None or not session.may_act,
            "csrf": None if session is None else self.auth.csrf_token(session),
            "expires": None if session is None else session.expires,
        }

    # --- reads ------------------------------------------------------------------

    async def session(self, request: Request) -> Response:
        """GET /admin/api/session: who is logged in, read-only or not, the CSRF token."""
        await self._reader(request)
        return JSONResponse(self._session_body(self._session(request)))

    async def overview(self, request: Request) -> Response:
        """GET /admin/api/overview: every node's figures."""
        await self._reader(request)
        return JSONResponse({"nodes": await self.cluster.overview()})

    async def events(self, request: Request) -> Response:
        """GET /admin/api/events: the cluster's latest closes and refusals."""
        await self._reader(request)
        return JSONResponse({"events": await self.cluster.events()})

    async def peer(self, request: Request) -> Response:
        """GET /admin/api/peers/{id}: the peer's node, rooms, queue, resume state, refusals."""
        await self._reader(request)
        peer_id = self._peer_id(request.path_params["peer_id"])
        state = await self.cluster.inspect(peer_id)
        if state is None:
            raise AdminError(404, "peer-offline", f"no node holds {peer_id}")
        return JSONResponse(state)

    async def room(self, request: Request) -> Response:
        """GET /admin/api/rooms/{room}?offset=&limit=: the room's members, a page at a time.

        With each member of the page, its presence: online, resuming or unknown.
        """
        await self._reader(request)
        room = self._room(request.path_params["room"])
        try:
            offset = max(0, int(request.query_params.get("offset", "0")))
            limit = min(PAGE_SIZE, max(1, int(request.query_params.get("limit", str(PAGE_SIZE)))))
        except ValueError:
            raise AdminError(400, "bad-request", "offset and limit are integers") from None
        members = sorted(await self.cluster.hub.broker.members(room))
        page = members[offset : offset + limit]
        presence = await self.cluster.presence(room, page)
        body = {"room": room, "count": len(members), "offset": offset, "members": page}
        return JSONResponse({**body, "presence": presence})

    async def search(self, request: Request) -> Response:
        """GET /admin/api/search?q=: peer ids and rooms that start with q (20 of each)."""
        await self._reader(request)
        prefix = request.query_params.get("q", "")
        if not 1 <= len(prefix) <= 128:
            raise AdminError(400, "bad-request", "q is 1 to 128 characters")
        return JSONResponse(await self.cluster.search(prefix))

    async def stream(self, request: Request) -> Response:
        """GET /admin/api/stream: server-sent events, the cluster's figures every second."""
        await self._reader(request)
        if self._streams >= MAX_STREAMS:
            raise AdminError(503, "busy", "too many admin streams on this node", 5)
        basic = self._session(request) is None
        return StreamingResponse(self._figures(request, basic), media_type="text/event-stream")

    async def _figures(self, request: Request, basic: bool) -> AsyncIterator[str]:
        hub = self.cluster.hub
        self._streams += 1
        try:
            # A draining node ends the stream (an open one would hold its
            # shutdown); the browser reconnects, to another node if there is one.
            yield f"retry: {int(STREAM_SECONDS * 1000)}\n\n"
            while not hub.draining:
                if not basic and self._session(request) is None:
                    yield "event: expired\ndata: {}\n\n"  # the login ended
                    return
                nodes = await self.cluster.overview()
                events = await self.cluster.events()
                yield f"data: {json.dumps({'nodes': nodes, 'events': events})}\n\n"
                await anyio.sleep(STREAM_SECONDS)
        finally:
            self._streams -= 1

    # --- actions ----------------------------------------------------------------

    async def disconnect(self, request: Request) -> Response:
        """POST /admin/api/disconnect {"peer"}: close its connection with 4504."""
        operator = await self._operator(request)
        peer_id = self._peer_id((await self._json_body(request)).get("peer"))
        done = await self.cluster.disconnect(peer_id)
        log.warning(
            "admin: %s disconnected %s (%s)", operator, peer_id, "done" if done else "absent"
        )
        return JSONResponse({"peer": peer_id, "disconnected": done})

    async def remove(self, request: Request) -> Response:
        """POST /admin/api/remove {"peer", "room"}: take the peer out of the room."""
        operator = await self._operator(request)
        fields = await self._json_body(request)
        peer_id, room = self._peer_id(fields.get("peer")), self._room(fields.get("room"))
        done = await self.cluster.remove_from_room(peer_id, room)
        log.warning("admin: %s removed %s from %s (%s)", operator, peer_id, room,
                    "done" if done else "not a member")  # fmt: skip
        return JSONResponse({"peer": peer_id, "room": room, "removed": done})

    async def publish(self, request: Request) -> Response:
        """POST /admin/api/publish {"to" or "room", "d", "ev"?}: a message from @server."""
        operator = await self._operator(request)
        fields = await self._json_body(request)
        hub = self.cluster.hub
        if ("to" in fields) == ("room" in fields) or "d" not in fields:
            raise AdminError(400, "bad-request", "give d and one of to or room")
        if "to" in fields:
            envelope = self._envelope({"type": "send", "to": self._peer_id(fields["to"])}, fields)
            assert isinstance(envelope, SendEnvelope)
            outcome = await hub.server_send(envelope.to, envelope.d_raw, envelope.ev)
            log.warning("admin: %s sent a message to %s", operator, fields["to"])
            return JSONResponse({"to": fields["to"], "delivered": outcome.delivered,
                                 "queued": outcome.queued, "offline": outcome.offline})  # fmt: skip
        room = self._room(fields["room"])
        published = self._envelope({"type": "pub", "room": room}, fields)
        assert isinstance(published, Publish)
        await hub.server_publish(room, published.d_raw, published.ev)
        log.warning("admin: %s published a message to room %s", operator, room)
        return JSONResponse({"room": room, "published": True})

    def _envelope(self, head: dict[str, Any], fields: dict[str, Any]) -> object:
        """The envelope the codec makes of ``head`` with ``fields``' d and ev, checked as any."""
        body = {**head, "d": fields["d"]}
        if fields.get("ev") is not None:
            body["ev"] = fields["ev"]
        try:
            return codec.decode(codec.pack_value(body), self.cluster.hub.codec_limits)
        except (ValueError, TypeError, OverflowError, RelayError) as exc:
            raise AdminError(400, "bad-request", f"the message is not valid: {exc}") from None
