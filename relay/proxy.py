"""Proxies: the backend admits hellos and joins, and answers RPC, over signed HTTP.

``ProxyDecider`` is the hub's ``Decider`` (``relay.decisions``): it POSTs each
fresh ``hello`` to ``connect_proxy_url`` and each ``join`` (or first ``pub``)
of a room nothing has decided yet to ``join_proxy_url``, as JSON, and reads
``{"allow": true, ...}`` or ``{"allow": false, "reason": ...}``. A refusal is
``unauthorized`` (a hello: closed 4501, as a bad token) or ``forbidden`` (a
room); a backend that cannot be reached, is slower than
``proxy_timeout_seconds`` or answers anything else is ``overloaded`` (a hello:
closed 1013, which clients retry): never a hang, never an accidental allow.

``RpcCaller`` is the router's ``Backend``: each ``send`` to ``@backend`` is
POSTed to ``rpc_proxy_url`` in its own task, so the caller's later frames are
read meanwhile and a backend that hangs holds nobody else up; the answer
becomes a ``msg`` from ``@backend`` with ``re`` = the send's ``rid``, then its
``ok``, or an ``err`` on the send.

Every request goes through one ``Outbound``: one connection pool, each request
signed as a webhook is (``Relay-Signature``, ``relay.webhooks.sign``), bounded
in time, and at most ``proxy_inflight`` of them per node (RPC also
``proxy_inflight_per_session`` per session): beyond, ``overloaded`` at once.
The contract is docs/hooks.md.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import msgpack
from anyio.abc import TaskGroup

from relay import __version__
from relay.decisions import Admitted, HelloAsked
from relay.events import SessionObserver
from relay.exceptions import (
    BackendError,
    BadEnvelope,
    Forbidden,
    Internal,
    Overloaded,
    RelayError,
    Unauthorized,
)
from relay.metrics import Metrics
from relay.protocol import codec
from relay.protocol.envelopes import BACKEND_ID, Send
from relay.router import Router
from relay.session import Session
from relay.settings import Settings
from relay.webhooks import SIGNATURE_HEADER, sign

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("relay.proxy")

_DECISION_BYTES = 65536  # of a decision's answer, read at most
_DECIDED_KEPT = 256  # rooms decided per peer, remembered for its pubs (the oldest go first)
_LOG_EVERY_SECONDS = 60.0  # a failing backend is logged at most this often, per URL
_ENVELOPE_ROOM = 512  # bytes a msg needs around an RPC answer's payload (from, re...)
_REFUSAL_TEXT = 200  # characters of a plain-text refusal passed on to the caller


class AnswerTooLarge(Exception):
    """The backend's answer was longer than the caller reads."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A backend's HTTP answer."""

    status: int
    content_type: str
    body: bytes


class Outbound:
    """The HTTP side of decisions and RPC: a pool, signing, time and in-flight bounds."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._keys = [k for k in (settings.webhook_secret, settings.webhook_previous_secret) if k]
        self._client: httpx.AsyncClient | None = None
        self._inflight = 0
        self._logged: dict[str, float] = {}  # URL -> when a failure of it was last logged

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Hold the connection pool while open."""
        import httpx  # loaded only where a URL is configured, not at every start-up

        settings = self._settings
        client = httpx.AsyncClient(
            timeout=settings.proxy_timeout_seconds,
            limits=httpx.Limits(max_connections=settings.proxy_inflight),
        )
        async with client:
            self._client = client
            try:
                yield
            finally:
                self._client = None

    def reserve(self) -> None:
        """Count one more request in flight, or refuse it (``Overloaded``) at the node's bound."""
        if self._inflight >= self._settings.proxy_inflight or self._client is None:
            raise Overloaded("too many requests to the backend in flight: try again later")
        self._inflight += 1

    def release(self) -> None:
        """A request ``reserve`` counted is over."""
        self._inflight -= 1

    @property
    def inflight(self) -> int:
        """Requests to the backend in flight on this node."""
        return self._inflight

    async def post(self, url: str, body: bytes, content_type: str, limit: int) -> Answer:
        """POST ``body``, signed; the answer, read up to ``limit`` bytes.

        ``Overloaded`` when the backend cannot be reached or does not answer
        within ``proxy_timeout_seconds``; ``AnswerTooLarge`` past ``limit``.
        """
        import httpx

        client = self._client
        if client is None:
            raise Overloaded("the relay is stopping")
        headers = {
            "content-type": content_type,
            "user-agent": f"relay/{__version__}",
            SIGNATURE_HEADER: sign(body, self._keys, int(time.time())),
        }
        chunks: list[bytes] = []
        try:
            # httpx's timeout bounds each phase; this bounds the whole request.
            with anyio.fail_after(self._settings.proxy_timeout_seconds):
                async with client.stream("POST", url, content=body, headers=headers) as got:
                    size = 0
                    async for chunk in got.aiter_bytes():
                        size += len(chunk)
                        if size > limit:
                            raise AnswerTooLarge(f"the backend's answer is over {limit} bytes")
                        chunks.append(chunk)
        except TimeoutError:
            self.complain(url, "no answer within proxy_timeout_seconds")
            raise Overloaded("the backend did not answer in time: try again later") from None
        except httpx.HTTPError as exc:
            self.complain(url, str(exc) or type(exc).__name__)
            raise Overloaded("the backend cannot be reached: try again later") from None
        return Answer(got.status_code, got.headers.get("content-type", ""), b"".join(chunks))

    def count(self, kind: str, outcome: str) -> None:
        """One request of ``kind`` (connect, join, rpc) ended with ``outcome``, for the metrics."""
        self._metrics.proxy_requests.labels(kind, outcome).inc()

    def unusable(self, kind: str, url: str, problem: str) -> Overloaded:
        """Count and log an answer that cannot be used; the refusal to raise."""
        self.count(kind, "failed")
        self.complain(url, problem)
        return Overloaded("the backend's answer cannot be used: try again later")

    def complain(self, url: str, problem: str) -> None:
        """Log a failing backend, at most once a minute per URL (a down backend fails often)."""
        now = time.monotonic()
        if now - self._logged.get(url, -math.inf) >= _LOG_EVERY_SECONDS:
            self._logged[url] = now
            log.warning("backend %s: %s", _shown(url), problem)


def _shown(url: str) -> str:
    """``url`` for the log, without its query (it may hold credentials)."""
    return url.split("?", 1)[0]


class ProxyDecider(SessionObserver):
    """The ``Decider`` that asks the backend over HTTP (``connect_proxy_url``, ``join_proxy_url``).

    It is also a ``SessionObserver``: the rooms the join proxy allowed a peer
    online here are remembered for its pubs, and forgotten when it goes offline.
    """

    def __init__(self, settings: Settings, outbound: Outbound, node: str) -> None:
        self._settings = settings
        self._outbound = outbound
        self._node = node
        self._connect_url = settings.connect_proxy_url
        self._join_url = settings.join_proxy_url
        self._headers = frozenset(name.lower() for name in settings.proxy_headers)
        self._decided: dict[str, dict[str, None]] = {}  # peer -> rooms allowed, oldest first

    async def decide_hello(self, asked: HelloAsked) -> Admitted:
        """Ask the connect proxy (when there is one): its ``meta`` and ``rooms``, or refuse."""
        if not self._connect_url:
            return Admitted()
        connection = asked.connection
        headers: dict[str, str] = {}
        for name, value in connection.headers if connection is not None else ():
            if name in self._headers:
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
        url = self._connect_url
        answer = await self._ask(
            "connect",
            url,
            {
                "type": "connect",
                "id": asked.peer_id,
                "token": asked.token,
                "address": connection.address if connection is not None else None,
                "headers": headers,
                "node": self._node,
            },
        )
        outbound = self._outbound
        if not answer["allow"]:
            outbound.count("connect", "refused")
            raise Unauthorized(_reason(answer, "refused by the connect proxy"))
        if answer.get("id", asked.peer_id) != asked.peer_id:
            # The id is the client's (or the token's) to name, never the backend's.
            raise outbound.unusable("connect", url, "answered another id")
        rooms = answer.get("rooms")
        if isinstance(rooms, str):
            rooms = [rooms]
        if rooms is not None and not (
            isinstance(rooms, list) and all(isinstance(room, str) for room in rooms)
        ):
            raise outbound.unusable("connect", url, "rooms is not a list of strings")
        meta = answer.get("meta")
        if len(json.dumps(meta, separators=(",", ":"))) > self._settings.proxy_meta_bytes:
            raise outbound.unusable("connect", url, "meta is over proxy_meta_bytes")
        try:
            msgpack.packb(meta)  # it goes into RPC bodies and between nodes
        except (OverflowError, ValueError, TypeError):
            raise outbound.unusable("connect", url, "meta holds an integer over 64 bits") from None
        outbound.count("connect", "ok")
        return Admitted(meta, None if rooms is None else tuple(rooms))

    async def decide_join(self, peer_id: str, room: str, meta: object) -> None:
        """Ask the join proxy (when there is one), and remember a yes for the peer's pubs."""
        decided = self._decided.get(peer_id)
        if not self._join_url or (decided is not None and room in decided):
            return
        answer = await self._ask(
            "join",
            self._join_url,
            {"type": "join", "id": peer_id, "room": room, "meta": meta, "node": self._node},
        )
        self._outbound.count("join", "ok" if answer["allow"] else "refused")
        if not answer["allow"]:
            raise Forbidden(_reason(answer, f"room {room} refused by the join proxy"))
        decided = self._decided.get(peer_id)
        if decided is None:
            return  # it went offline meanwhile: nothing to remember it for
        if len(decided) >= _DECIDED_KEPT:
            del decided[next(iter(decided))]
        decided[room] = None

    def room_decided(self, peer_id: str, room: str) -> bool:
        """Whether a ``pub`` to ``room`` needs no decision: nobody decides, or it was allowed."""
        if not self._join_url:
            return True
        decided = self._decided.get(peer_id)
        return decided is not None and room in decided

    def online(self, peer_id: str, *, resumed: bool, meta: object = None) -> None:
        """Remember what the join proxy allows the peer from now on (kept across a resume)."""
        if self._join_url:
            self._decided.setdefault(peer_id, {})

    def offline(self, peer_id: str, reason: str, *, lost_node: str | None = None) -> None:
        """Forget the rooms allowed (a node taking the peer over asks again)."""
        self._decided.pop(peer_id, None)

    async def _ask(self, kind: str, url: str, fields: dict[str, Any]) -> dict[str, Any]:
        """POST one question; the answer, which has a boolean ``allow`` (else ``Overloaded``)."""
        body = json.dumps(fields, separators=(",", ":")).encode()
        outbound = self._outbound
        try:
            outbound.reserve()
        except Overloaded:
            outbound.count(kind, "busy")
            raise
        try:
            answer = await outbound.post(url, body, "application/json", _DECISION_BYTES)
        except AnswerTooLarge:
            answer = Answer(0, "", b"")
        except Overloaded:
            outbound.count(kind, "failed")
            raise
        finally:
            outbound.release()
        try:
            decided = json.loads(answer.body) if answer.status == 200 else None
        except ValueError:
            decided = None
        if not isinstance(decided, dict) or not isinstance(decided.get("allow"), bool):
            problem = f"answered {answer.status}" if answer.status else "answered too much"
            if answer.status == 200:
                problem = "answered 200 without a JSON object with a boolean allow"
            raise outbound.unusable(kind, url, problem)
        return decided


def _reason(answer: dict[str, Any], default: str) -> str:
    reason = answer.get("reason")
    return reason[:_REFUSAL_TEXT] if isinstance(reason, str) and reason else default


class RpcCaller:
    """The router's ``Backend``: sends to ``@backend`` POSTed to ``rpc_proxy_url``."""

    def __init__(self, settings: Settings, outbound: Outbound, router: Router, node: str) -> None:
        self._settings = settings
        self._outbound = outbound
        self._router = router
        self._node = node
        self._url = settings.rpc_proxy_url
        self._json = settings.rpc_format == "json"
        self._content_type = "application/json" if self._json else "application/msgpack"
        # An answer fits in a msg the client accepts as any frame of the relay's.
        self._limit = max(1, settings.max_frame_bytes - _ENVELOPE_ROOM)
        self._calls: dict[str, int] = {}  # peer id -> calls in flight
        self._tasks: TaskGroup | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run calls while open; on exit, those in flight are cancelled."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            try:
                yield
            finally:
                self._tasks = None
                tasks.cancel_scope.cancel()

    def calls(self, peer_id: str) -> int:
        """Calls of ``peer_id`` in flight."""
        return self._calls.get(peer_id, 0)

    def call(self, session: Session, request: Send) -> None:
        """Start the call, or refuse it: a payload JSON cannot carry, too many in flight."""
        peer = session.peer
        assert peer is not None
        if self._tasks is None:
            raise Overloaded("the relay is stopping")
        count = self._calls.get(peer.id, 0)
        if count >= self._settings.proxy_inflight_per_session:
            self._outbound.count("rpc", "busy")
            raise Overloaded(
                f"{count} calls to {BACKEND_ID} in flight already (proxy_inflight_per_session)"
            )
        body = self._body(peer.id, request, session.meta)
        try:
            self._outbound.reserve()
        except Overloaded:
            self._outbound.count("rpc", "busy")
            raise
        self._calls[peer.id] = count + 1
        if request.id is not None:
            peer.owed += 1  # a drain waits for the answer, as for any send
        self._tasks.start_soon(self._run, peer.id, request, body)

    def _body(self, peer_id: str, request: Send, meta: object) -> bytes:
        head = {"from": peer_id, "ev": request.ev, "meta": meta, "node": self._node}
        if not self._json:
            # The payload's own bytes are spliced in: it reaches the backend exactly as sent.
            parts = [b"\x85"]  # a map of 5 entries
            parts += [msgpack.packb(key) + msgpack.packb(value) for key, value in head.items()]
            parts += [msgpack.packb("d"), request.d_raw]
            return b"".join(parts)
        try:
            d = msgpack.unpackb(request.d_raw, raw=False, strict_map_key=False)
            _check_json(d)
            return json.dumps({**head, "d": d}, separators=(",", ":"), allow_nan=False).encode()
        except (ValueError, TypeError) as exc:
            raise BadEnvelope(f"the payload cannot be sent as JSON (rpc_format): {exc}") from None

    async def _run(self, peer_id: str, request: Send, body: bytes) -> None:
        frames: list[tuple[bytes, str]]
        try:
            frames = [(await self._answer(request, body), "msg")]
            if request.id is not None:
                frames.append((codec.encode_ok(request.id), "ok"))
        except Exception as exc:
            if not isinstance(exc, RelayError):
                # Whatever the backend answered, it must not end the calls' task group.
                log.exception("RPC of %s: unexpected failure", peer_id)
                exc = Internal("internal error")
            self._router.metrics.errors.labels(exc.code.value).inc()
            frames = [(codec.encode_err(exc.code.value, exc.message, request_id=request.id), "err")]
        finally:
            self._outbound.release()
            left = self._calls.pop(peer_id, 1) - 1
            if left:
                self._calls[peer_id] = left
        peer = self._router.peers.get(peer_id)
        if peer is None:
            return  # the caller left for good: nobody to tell
        if request.id is not None and peer.owed:
            peer.owed -= 1
        for frame, kind in frames:
            peer.enqueue(frame, kind, None)

    async def _answer(self, request: Send, body: bytes) -> bytes:
        """The ``msg`` that carries the backend's answer; ``RelayError`` for a failed call."""
        outbound = self._outbound
        try:
            answer = await outbound.post(self._url, body, self._content_type, self._limit)
        except AnswerTooLarge as exc:
            outbound.count("rpc", "failed")
            raise BackendError(str(exc)) from None
        except Overloaded:
            outbound.count("rpc", "failed")
            raise
        if not 200 <= answer.status < 300:
            outbound.count("rpc", "refused")
            message = f"the backend answered {answer.status}"
            if answer.content_type.startswith("text/plain") and answer.body:
                message += ": " + answer.body[:_REFUSAL_TEXT].decode("utf-8", "replace")
            raise BackendError(message)
        try:
            if not answer.body:
                d_raw = msgpack.packb(None)
            elif self._json:
                d_raw = msgpack.packb(json.loads(answer.body))
            else:
                msgpack.unpackb(answer.body, raw=True, strict_map_key=False)  # one value, whole
                d_raw = answer.body
        except (ValueError, RecursionError, OverflowError, msgpack.UnpackException):
            outbound.count("rpc", "failed")
            outbound.complain(self._url, f"answered a body that is not {self._format}")
            raise BackendError(f"the backend's answer is not {self._format}") from None
        outbound.count("rpc", "ok")
        return codec.encode_msg(BACKEND_ID, d_raw, re=request.rid)

    @property
    def _format(self) -> str:
        return "JSON" if self._json else "msgpack"


def _check_json(value: object) -> None:
    """Raise ``ValueError`` for what JSON would not carry exactly (bytes, extensions, keys)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"a map key {key!r} is not a string")
            _check_json(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_json(item)
    elif not (value is None or isinstance(value, bool | int | float | str)):
        raise ValueError(f"{type(value).__name__} has no JSON form")
