"""HTTP endpoints served beside the WebSocket: health, readiness, metrics, and /v1."""

from __future__ import annotations

import hmac
import json
from typing import Any

import msgpack
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from relay.broker.base import BrokerUnavailable
from relay.exceptions import RelayError, TooLarge
from relay.hub import Hub
from relay.protocol import codec
from relay.protocol.envelopes import Publish, Send


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


async def healthz(request: Request) -> Response:
    """Liveness: the process is up and serving HTTP."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: 200 while new peers are accepted, 503 while starting or draining."""
    hub = _hub(request)
    if not hub.accepting:
        return JSONResponse({"status": "draining", "node": hub.node_id}, status_code=503)
    if not hub.broker.ready:
        return JSONResponse({"status": "backplane-down", "node": hub.node_id}, status_code=503)
    return JSONResponse({"status": "ready", "node": hub.node_id})


async def metrics(request: Request) -> Response:
    """Prometheus metrics of this node."""
    hub = _hub(request)
    hub.metrics.broker_up.set(1 if hub.broker.ready else 0)
    return Response(generate_latest(hub.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# --- the server-side API (/v1), for backends ----------------------------------
#
# Bearer keys from ``api_keys``; none configured: every /v1 route answers 404
# {"error": "api-disabled"}. Bodies are JSON or msgpack (by Content-Type), read
# incrementally up to ``api_max_body_bytes`` (413 beyond), and validated by the
# same codec as WebSocket envelopes, so a backend can send nothing a peer could
# not. Every error is JSON: {"error": code, "message": text}.

JSON_TYPES = frozenset({"application/json"})
MSGPACK_TYPES = frozenset(
    {"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"}
)


class _APIError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _error(status: int, code: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="relay"'} if status == 401 else None
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def _check_key(request: Request) -> None:
    """Refuse a request without a valid API key (404 disabled, 401 missing, 403 wrong)."""
    keys = _hub(request).settings.api_keys
    if not keys:
        raise _APIError(404, "api-disabled", "the HTTP API is disabled: no api_keys configured")
    header = request.headers.get("authorization")
    if header is None:
        raise _APIError(
            401, "unauthorized", "an Authorization: Bearer <api key> header is required"
        )
    scheme, _, presented = header.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented or " " in presented:
        raise _APIError(401, "unauthorized", "malformed Authorization header: use Bearer <api key>")
    given = presented.encode("latin-1")  # the header's raw bytes (Starlette decodes latin-1)
    matched = False
    for key in keys:  # every key, in constant time each: no early exit to time
        matched |= hmac.compare_digest(given, key.encode())
    if not matched:
        raise _APIError(403, "forbidden", "the API key is not valid")


async def _read_body(request: Request) -> bytes:
    """The body, read chunk by chunk and refused (413) once past the limit."""
    limit = _hub(request).settings.api_max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _APIError(413, "too-large", f"the body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _APIError(413, "too-large", f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


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
            _check_key(request)
            response: Response = await handler(request)
            return response
        except _APIError as exc:
            return _error(exc.status, exc.code, exc.message)
        except BrokerUnavailable:
            return _error(503, "overloaded", "the cluster backplane is unavailable")

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
