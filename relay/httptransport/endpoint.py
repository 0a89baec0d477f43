"""The HTTP fallback's requests: ``POST {http_path}/{open,stream,poll,send,ack,close}``.

Every request but ``open`` names its session by the secret in
``Relay-Session``, which starts with the (base64url) id of the node that
holds the session. That node answers it; any other node forwards it there
as an ``http`` request over the broker (``Broker.request``), so a load
balancer needs no stickiness. A forwarded stream is a loop of forwarded
``fetch`` requests, each held until a record comes or the keepalive is due.

The operations (``_operate``) are the same whether the request came here or
was forwarded: a list of msgpack values in, a list out.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import secrets
from collections.abc import Iterator
from typing import Any

import anyio
import msgpack
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from relay.api import BodyTooLarge, read_bounded_body
from relay.broker.base import (
    MAX_PENDING_REQUESTS,
    BrokerUnavailable,
    NodeUnreachable,
    RequestFailed,
)
from relay.httpserver import HELD_OPEN
from relay.httptransport.records import (
    KEEPALIVE_RECORD,
    BadRecords,
    RecordTooLarge,
    check_envelopes,
)
from relay.httptransport.transport import HTTPTransport, OutOfOrder, SessionOver
from relay.hub import Hub
from relay.session import Session
from relay.upgrade import Gate, Refusal

log = logging.getLogger("relay.http")

REQUEST_KIND = "http"  # the broker request kind of forwarded operations
# Streams and polls one node forwards at once. Each holds a node-to-node
# request while it lasts: half the broker's budget, so that other requests
# (the admin page's, the operator's) still find room.
MAX_FORWARDED_READERS = MAX_PENDING_REQUESTS // 2
HEADERS = ("relay-session", "relay-received", "relay-seq", "content-type")
_NO_STORE = [(b"cache-control", b"no-store")]
_RECORDS = [
    (b"content-type", b"application/octet-stream"),
    (b"x-accel-buffering", b"no"),
    *_NO_STORE,
]

Result = list[Any]  # [status, text or body, ...]: what an operation answers
OPERATIONS = frozenset(("open", "stream", "poll", "send", "ack", "close"))


class HTTPEndpoint:
    """The HTTP transport of one node: its sessions, and the routes serving them."""

    def __init__(self, hub: Hub, gate: Gate) -> None:
        self.hub = hub
        self.settings = hub.settings
        self.gate = gate
        self.sessions: dict[str, HTTPTransport] = {}
        self.forwarded_readers = 0  # streams and polls held for sessions of other nodes
        self._node_tag = _tag(hub.node_id)
        hub.broker.serve(REQUEST_KIND, self._serve_forwarded)

    def app(self) -> ASGIApp:
        """What serves ``{http_path}/...``: this endpoint, CORS included for the allowed Origins.

        ``relay.app.RelayApp`` hands it those requests itself, past Starlette's
        router: each message over HTTP is a request or two.
        """
        return CORSMiddleware(
            self,
            allow_origins=[o.lower().rstrip("/") for o in self.settings.origins] or ["*"],
            allow_methods=["POST"],
            allow_headers=list(HEADERS),
            expose_headers=["retry-after"],
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        operation = scope["path"][len(self.settings.http_path) + 1 :]
        if operation not in OPERATIONS:
            await _respond(send, 404, b"no such request")
            return
        if scope["method"] != "POST":
            await _respond(send, 405, b"POST only", [(b"allow", b"POST")])
            return
        request = Request(scope, receive)
        if operation == "open":
            status, body, headers = await self._open(scope)
            await _respond(send, status, body, headers)
            return
        secret = request.headers.get("relay-session", "")
        received = _count(request.headers.get("relay-received"))
        if received is None:
            await _respond(send, 400, b"Relay-Received must be a count of envelopes")
            return
        node = self._holder(secret)
        if node is None:
            await _respond(send, 404, b"unknown session")
            return
        if operation in ("stream", "poll"):
            await self._read(scope, node, secret, received, operation == "poll", receive, send)
            return
        args: list[Any] = [secret, received]
        if operation == "send":
            seq = _count(request.headers.get("relay-seq"))
            if seq is None or seq == 0:
                await _respond(send, 400, b"Relay-Seq must be a batch number from 1")
                return
            try:
                body = await read_bounded_body(request, self.settings.http_body_bytes)
            except BodyTooLarge as exc:
                await _respond(send, 413, str(exc).encode())
                return
            args += [seq, body]
        result = await self._call(node, operation, args, self.settings.http_forward_seconds)
        await _respond(send, result[0], result[1])

    # --- opening ----------------------------------------------------------------------

    async def _open(self, scope: Scope) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        decided = self.gate.decide(scope)
        if isinstance(decided, Refusal):
            after = decided.retry_after
            retry = [(b"retry-after", str(after).encode())] if after is not None else []
            return decided.status, decided.body.encode(), retry
        ip = decided
        settings = self.settings
        secret = f"{self._node_tag}.{secrets.token_urlsafe(32)}"
        transport = HTTPTransport(
            self.hub.scheduler,
            buffer_bytes=settings.http_buffer_bytes,
            fetch_bytes=settings.http_body_bytes,
            idle_seconds=settings.http_idle_seconds,
            close_seconds=settings.close_timeout_seconds,
        )

        def ended() -> None:
            self.sessions.pop(secret, None)
            self.gate.release(ip)

        session = Session(self.hub, transport)
        transport.session = session
        transport.on_end = ended
        session.connect_info = self.gate.connect_info(scope, ip)
        self.sessions[secret] = transport
        self.hub.opened(session)
        answer = {
            "session": secret,
            "keepalive_seconds": settings.http_keepalive_seconds,
            "poll_seconds": settings.http_poll_seconds,
            "idle_seconds": settings.http_idle_seconds,
            "body_bytes": settings.http_body_bytes,
        }
        headers = [(b"content-type", b"application/msgpack")]
        return 200, msgpack.packb(answer), headers

    # --- reading: streams and polls ---------------------------------------------------

    async def _read(
        self,
        scope: Scope,
        node: str,
        secret: str,
        received: int,
        poll: bool,
        receive: Receive,
        send: Send,
    ) -> None:
        with self._reader_place(node) as placed:
            if not placed:
                await _respond(send, 503, b"this node forwards as many streams as it may")
                return
            forward = self.settings.http_forward_seconds
            attached = await self._call(node, "attach", [secret, received], forward)
            if attached[0] != 200:
                await _respond(send, attached[0], attached[1])
                return
            held_open = scope.get("extensions", {}).get(HELD_OPEN)
            if held_open is not None:
                held_open()  # the session holds admission's place: out of the pending counts
            hold = self.settings.http_poll_seconds if poll else self.settings.http_keepalive_seconds
            await send({"type": "http.response.start", "status": 200, "headers": _RECORDS})
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_until_disconnected, receive, tasks.cancel_scope)
                reader = attached[2]
                await self._pass_records(node, secret, reader, received, hold, poll, send)
                tasks.cancel_scope.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pass_records(
        self, node: str, secret: str, reader: int, start: int, hold: float, poll: bool, send: Send
    ) -> None:
        """What reader number ``reader`` fetches from envelope ``start`` on, into the response.

        A stream goes on until its last record (or a newer reader, or its end);
        a poll takes one fetch.
        """
        if not poll:
            await _send_part(send, KEEPALIVE_RECORD)
        timeout = hold + self.settings.http_forward_seconds
        while True:
            fetched = await self._call(node, "fetch", [secret, reader, start, hold], timeout)
            if fetched[0] != 200:
                return
            _status, body, start, last = fetched
            if body or poll:
                # A poll that a newer reader ended still answers something.
                await _send_part(send, body or KEEPALIVE_RECORD)
            if last or poll:
                return

    @contextlib.contextmanager
    def _reader_place(self, node: str) -> Iterator[bool]:
        """A place for a reader of a session ``node`` holds: False when none is free.

        Only readers forwarded to another node count (``MAX_FORWARDED_READERS``).
        """
        forwarded = node != self.hub.node_id
        if forwarded and self.forwarded_readers >= MAX_FORWARDED_READERS:
            yield False
            return
        self.forwarded_readers += forwarded
        try:
            yield True
        finally:
            self.forwarded_readers -= forwarded

    # --- the operations, here or on the node that holds the session -------------------

    async def _call(
        self,
        node: str,
        operation: str,
        args: list[Any],
        timeout: float,  # noqa: ASYNC109 - it travels: the holding node bounds its wait by it
    ) -> Result:
        if node == self.hub.node_id:
            return await self._operate(operation, args)
        body = msgpack.packb([operation, *args])
        try:
            reply = await self.hub.broker.request(node, REQUEST_KIND, body, timeout)
        except NodeUnreachable:
            if not await self._serving(node):
                return [404, b"unknown session (its node is gone)"]
            return [503, b"the node holding this session cannot be reached now"]
        except BrokerUnavailable:
            return [503, b"the node holding this session cannot be reached now"]
        except RequestFailed:
            return [503, b"the node holding this session could not answer"]
        result: Result = msgpack.unpackb(reply)
        return result

    async def _serving(self, node: str) -> bool:
        """Whether ``node`` serves the cluster (True when the broker cannot tell now)."""
        try:
            return node in await self.hub.broker.serving_nodes()
        except BrokerUnavailable:
            return True

    async def _serve_forwarded(self, body: bytes) -> bytes:
        operation, *args = msgpack.unpackb(body)
        reply: bytes = msgpack.packb(await self._operate(operation, args))
        return reply

    async def _operate(self, operation: str, args: list[Any]) -> Result:
        transport = self.sessions.get(args[0])
        if transport is None:
            return [404, b"unknown session"]
        try:
            if operation == "fetch":
                fetched = await transport.fetch(args[1], args[2], args[3])
                return [200, fetched.body, fetched.position, fetched.last]
            transport.heard(args[1])
            if operation == "attach":
                return [200, b"", transport.attach()]
            if operation == "send":
                return await self._accept(transport, args[2], args[3])
            if operation == "close":
                transport.close_by_client()
            return [204, b""]
        except SessionOver:
            return [404, b"unknown session"]
        except ValueError as exc:
            return [400, str(exc).encode()]

    async def _accept(self, transport: HTTPTransport, seq: int, body: bytes) -> Result:
        try:
            check_envelopes(body, self.settings.max_frame_bytes)
        except RecordTooLarge as exc:
            transport.too_large(str(exc))
            return [413, str(exc).encode()]
        except BadRecords as exc:
            return [400, str(exc).encode()]
        try:
            await transport.accept(seq, body)
        except OutOfOrder as exc:
            return [409, str(exc).encode()]
        return [204, b""]

    def _holder(self, secret: str) -> str | None:
        """The id of the node holding the session ``secret`` names (None: not a secret)."""
        tag, dot, _rest = secret.partition(".")
        if not dot:
            return None
        if tag == self._node_tag:
            return self.hub.node_id
        try:
            return base64.urlsafe_b64decode(tag + "=" * (-len(tag) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None


def _tag(node_id: str) -> str:
    return base64.urlsafe_b64encode(node_id.encode()).decode().rstrip("=")


def _count(text: str | None) -> int | None:
    if text is None or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


async def _until_disconnected(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def _send_part(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    if headers is None:
        headers = [(b"content-type", b"text/plain; charset=utf-8")] if body else []
    if status == 503 and not any(name == b"retry-after" for name, _ in headers):
        headers = [*headers, (b"retry-after", b"1")]
    await send({"type": "http.response.start", "status": status, "headers": headers + _NO_STORE})
    await send({"type": "http.response.body", "body": body})
