"""``GET /v1/ice-servers``: STUN and TURN servers for ``RTCPeerConnection`` (docs/webrtc.md).

TURN credentials follow coturn's shared-secret scheme (``use-auth-secret``,
the "TURN REST API"): the username is ``<expiry>:<peer>``, ``expiry`` in
seconds since the epoch, and the credential is the base64 HMAC-SHA1 of the
username keyed with the secret coturn also knows (``static-auth-secret``).
coturn checks both and refuses a username whose expiry has passed, so the
relay never talks to coturn and a leaked credential is worth ``turn_ttl_seconds``.

With auth on, the caller proves who it is as a peer does: a token in
``Authorization: Bearer``, whose ``sub`` becomes the ``peer`` part. In open
mode anyone may ask; ``?id=`` names the peer part (``anonymous`` without).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from relay.exceptions import RelayError, Unauthorized
from relay.hub import Hub
from relay.settings import Settings


def turn_credential(secret: str, username: str) -> str:
    """coturn's ``use-auth-secret`` password for ``username``: base64 HMAC-SHA1."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class IceServers:
    """Builds the ``iceServers`` list, with fresh TURN credentials each time.

    ``Settings`` has checked the URLs' schemes and that TURN has its secret.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._stun = list(settings.stun_urls)
        self._turn = list(settings.turn_urls)
        self._secret = settings.turn_secret
        self._ttl = math.ceil(settings.turn_ttl_seconds)
        self._clock = clock

    def for_peer(self, peer: str) -> dict[str, Any]:
        """The answer for ``peer``: ``{iceServers, ttl}``."""
        servers: list[dict[str, Any]] = []
        if self._stun:
            servers.append({"urls": self._stun})
        if self._turn:
            username = f"{int(self._clock()) + self._ttl}:{peer}"
            credential = turn_credential(self._secret, username)
            servers.append({"urls": self._turn, "username": username, "credential": credential})
        return {"iceServers": servers, "ttl": self._ttl}


def endpoint(hub: Hub) -> Callable[[Request], Any]:
    """The ``GET /v1/ice-servers`` handler of ``hub``'s node."""
    ice = IceServers(hub.settings)

    async def ice_servers(request: Request) -> Response:
        """ICE servers for ``RTCPeerConnection``; TURN with time-limited credentials."""
        try:
            peer = _caller(hub, request)
        except Unauthorized as exc:
            return JSONResponse(
                {"error": exc.code.value, "message": exc.message},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="relay"'},
            )
        except RelayError as exc:  # a malformed ?id=
            return JSONResponse({"error": "bad-request", "message": exc.message}, status_code=400)
        return JSONResponse(ice.for_peer(peer), headers={"Cache-Control": "no-store"})

    return ice_servers


def _caller(hub: Hub, request: Request) -> str:
    """Who asks: the token's ``sub`` with auth on, else ``?id=`` or ``anonymous``."""
    if hub.auth is None:
        asked = request.query_params.get("id")
        return "anonymous" if asked is None else hub.codec_limits.check_peer_id(asked)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("an Authorization: Bearer <token> header is required")
    return hub.auth.verify(token.strip()).sub
