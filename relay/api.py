"""HTTP endpoints served beside the WebSocket: health, readiness, metrics, and /v1."""

from __future__ import annotations

import hmac
import json
import math
import time
from collections.abc import Callable
from typing import Any

import msgpack
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from relay.broker.base import BrokerUnavailable
from relay.exceptions import RelayError, TooLarge
from relay.hub import Hub
from relay.limits import TokenBucket
from relay.protocol import codec
from relay.protocol.envelopes import Publish, Send
from relay.settings import Settings

# Retry-After on a 503: the node is draining or its backplane is down, and
# either ends (another node takes over, or Redis is back) on no known clock.
UNAVAILABLE_RETRY_AFTER = 1


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


async def healthz(request: Request) -> Response:
    """Liveness: the process is up and serving HTTP."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: 200 while new peers are accepted, 503 while starting or draining."""
    hub = _hub(request)
    retry = {"Retry-After": str(UNAVAILABLE_RETRY_AFTER)}
    if not hub.accepting:
        body = {"status": "draining", "node": hub.node_id}
        return JSONResponse(body, status_code=503, headers=retry)
    if not hub.broker.ready:
        body = {"status": "backplane-down", "node": hub.node_id}
        return JSONResponse(body, status_code=503, headers=retry)
    return JSONResponse({"status": "ready", "node": hub.node_id})


async def metrics(request: Request) -> Response:
    """Prometheus metrics of this node."""
    hub = _hub(request)
    hub.metrics.broker_up.set(1 if hub.broker.ready else 0)
    return Response(generate_latest(hub.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# --- the server-side API (/v1), for backends ----------------------------------
#
# Bearer keys from ``api_keys``; none configured: these four routes answer 404
# {"error": "api-disabled"}. Each key has its own request rate (a token
# bucket, ``api_rate_per_second``/``api_rate_burst``): 429 with Retry-After
# beyond it. Bodies are JSON or msgpack (by Content-Type), read incrementally
# up to ``api_max_body_bytes`` (413 beyond), and validated by the same codec as
# WebSocket envelopes, so a backend can send nothing a peer could not. Every
# error is JSON: {"error": code, "message": text}; a body that is malformed in
# any way is a 400, never a 500.

JSON_TYPES = frozenset({"application/json"})
MSGPACK_TYPES = frozenset(
    {"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"}
)


class _APIError(Exception):
    def __init__(
        self, status: int, code: str, message: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def _error(status: int, code: str, message: str, *, retry_after: int | None = None) -> JSONResponse:
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="relay"'
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


class APIAccess:
    """Who may call /v1: the configured keys, each with its own request rate."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self._keys = tuple(key.encode() for key in settings.api_keys)
        rate, burst = settings.api_rate_per_second, settings.api_rate_burst
        self._buckets = tuple(TokenBucket(rate, burst, clock) for _ in self._keys) if rate else ()

    def check(self, header: str | None) -> None:
        """Refuse a request: 404 API disabled, 401 no key, 403 wrong key, 429 over its rate."""
        if not self._keys:
            raise _APIError(404, "api-disabled", "the HTTP API is disabled: no api_keys configured")
        if header is None:
            raise _APIError(
                401, "unauthorized", "an Authorization: Bearer <api key> header is required"
            )
        scheme, _, presented = header.partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented or " " in presented:
            raise _APIError(
                401, "unauthorized", "malformed Authorization header: use Bearer <api key>"
            )
        given = presented.encode("latin-1")  # the header's raw bytes (Starlette decodes latin-1)
        # Every key, each compared in constant time: no early exit to time.
        matched = -1
        for index, key in enumerate(self._keys):
            if hmac.compare_digest(given, key):
                matched = index
        if matched < 0:
            raise _APIError(403, "forbidden", "the API key is not valid")
        if self._buckets:
            bucket = self._buckets[matched]
            if not bucket.take():
                raise _APIError(
                    429,
                    "rate-limited",
                    "too many requests with this API key, slow down",
                    retry_after=max(1, math.ceil(bucket.seconds_until_token())),
                )


class BodyTooLarge(Exception):
    """A request body (declared or read) beyond its limit."""


async def read_bounded_body(request: Request, limit: int) -> bytes:
    """The body, read chunk by chunk; ``BodyTooLarge`` once past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_body(request: Request) -> bytes:
    """The body, refused (413) once past ``api_max_body_bytes``."""
    try:
        return await read_bounded_body(request, _hub(request).settings.api_max_body_bytes)
    except BodyTooLarge as exc:
        raise _APIError(413, "too-large", str(exc)) from None


def _as_frame(kind: str, body: bytes, content_type: str, extra: dict[str, Any]) -> bytes:
    """Turn a request body into a protocol frame of type ``kind`` (for the codec)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in JSON_TYPES:
        try:
            fields = json.loads(body)
        except (ValueError, RecursionError):
            raise _APIError(400, "bad-request", "the body is not valid JSON") from None
        if not isinstance(fields, dict):
            raise _APIError(400, "bad-request", "the body must be a JSON object")
        if "type" in fields:
            raise _APIError(400, "bad-request", "type is not a field of an API body")
        try:
            return codec.pack_value({**fields, **extra, "type": kind})
        except (ValueError, TypeError, OverflowError):
            raise _APIError(400, "bad-request", "the body holds unencodable values") from None
    if media in MSGPACK_TYPES:
        # Keep the payload's bytes untouched: prepend the extra keys to the map.
        if not body or not (0x80 <= body[0] <= 0x8F or body[0] in (0xDE, 0xDF)):
            raise _APIError(400, "bad-request", "the body must be a msgpack map")
        if body[0] <= 0x8F:
            count, head = body[0] & 0x0F, 1
        elif body[0] == 0xDE:
            count, head = int.from_bytes(body[1:3], "big"), 3
        else:
            count, head = int.from_bytes(body[1:5], "big"), 5
        # Each entry takes two bytes at least: a larger count is a lie (and
        # one near 2**32 could not even be re-encoded with the added keys).
        if len(body) < head or 2 * count > len(body) - head:
            raise _APIError(400, "bad-request", "the msgpack map declares more than the body holds")
        added = {**extra, "type": kind}
        packer = msgpack.Packer(use_bin_type=True)
        prefix = packer.pack_map_header(count + len(added))
        prefix += b"".join(packer.pack(k) + packer.pack(v) for k, v in added.items())
        return bytes(prefix) + body[head:]
    raise _APIError(415, "unsupported-media-type", "send application/json or application/msgpack")


def _decode(request: Request, frame: bytes) -> object:
    hub = _hub(request)
    try:
        return codec.decode(frame, hub.codec_limits)
    except TooLarge as exc:
        raise _APIError(413, "too-large", exc.message) from None
    except RelayError as exc:
        raise _APIError(400, "bad-request", exc.message) from None


def _api(handler: Any) -> Any:
    """Wrap a /v1 handler: key check first, then errors as JSON."""

    async def endpoint(request: Request) -> Response:
        try:
            access: APIAccess = request.app.state.api_access
            access.check(request.headers.get("authorization"))
            response: Response = await handler(request)
            return response
        except _APIError as exc:
            return _error(exc.status, exc.code, exc.message, retry_after=exc.retry_after)
        except BrokerUnavailable:
            return _error(
                503,
                "overloaded",
                "the cluster backplane is unavailable",
                retry_after=UNAVAILABLE_RETRY_AFTER,
            )
        except ClientDisconnect:
            return _error(400, "bad-request", "the body ended early")  # nobody reads it

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


async def _body_envelope(request: Request, kind: str, extra: dict[str, Any]) -> object:
    body = await _read_body(request)
    frame = _as_frame(kind, body, request.headers.get("content-type", ""), extra)
    return _decode(request, frame)


@_api
async def api_send(request: Request) -> Response:
    """POST /v1/send {to, d, ev?}: deliver from "@server" to one or several peers."""
    envelope = await _body_envelope(request, "send", {})
    if not isinstance(envelope, Send):
        raise _APIError(400, "bad-request", "the body must hold to and d")
    outcome = await _hub(request).server_send(envelope.to, envelope.d_raw, envelope.ev)
    return JSONResponse(
        {
            "delivered": outcome.delivered,
            "queued": outcome.queued,
            "offline": outcome.offline,
            "overloaded": outcome.overloaded,
        }
    )


@_api
async def api_publish(request: Request) -> Response:
    """POST /v1/rooms/{room}/publish {d, ev?}: deliver from "@server" to a room's members."""
    room = request.path_params["room"]
    envelope = await _body_envelope(request, "pub", {"room": room})
    if not isinstance(envelope, Publish) or envelope.room != room:
        raise _APIError(400, "bad-request", "the body must hold d (the room is in the path)")
    await _hub(request).server_publish(envelope.room, envelope.d_raw, envelope.ev)
    return JSONResponse({"room": envelope.room, "published": True})


@_api
async def api_peer(request: Request) -> Response:
    """GET /v1/peers/{id}: whether the peer is online, and on which node."""
    hub = _hub(request)
    peer_id = request.path_params["peer_id"]
    try:
        hub.codec_limits.check_peer_id(peer_id)
    except RelayError as exc:
        raise _APIError(400, "bad-request", exc.message) from None
    peer = hub.peers.get(peer_id)
    if peer is not None:
        node: str | None = hub.node_id
        connected: bool | None = peer.session is not None
    else:
        node = await hub.broker.locate(peer_id)
        connected = None  # known only to the holding node
    if node is None:
        return JSONResponse(
            {
                "error": "peer-offline",
                "message": f"{peer_id} is held by no session",
                "id": peer_id,
                "online": False,
            },
            status_code=404,
        )
    body: dict[str, Any] = {"id": peer_id, "online": True, "node": node}
    if connected is not None:
        body["connected"] = connected  # False: inside its resume window
    return JSONResponse(body)


@_api
async def api_room(request: Request) -> Response:
    """GET /v1/rooms/{room}: the room's members on every node."""
    hub = _hub(request)
    room = request.path_params["room"]
    try:
        hub.codec_limits.check_room(room)
    except RelayError as exc:
        raise _APIError(400, "bad-request", exc.message) from None
    members = await hub.broker.members(room)
    return JSONResponse({"room": room, "members": members, "count": len(members)})
