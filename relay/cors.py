"""CORS for the HTTP routes browsers call from pages of other origins.

The PeerJS REST routes and ``/v1/ice-servers`` are fetched by pages that are
usually served from another origin than the relay. They answer the Origins
of ``settings.origins`` (compared as the WebSocket handshake compares them:
case-insensitive, without a trailing slash), or any Origin when the list is
empty. Starlette's ``CORSMiddleware`` does the work, preflights included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, request_response


def cors_route(
    path: str,
    handler: Callable[[Request], Awaitable[Response]],
    origins: tuple[str, ...],
    *,
    headers: tuple[str, ...] = (),
) -> Route:
    """A GET route whose answers carry CORS headers for ``origins`` (empty: any).

    ``headers`` lists the request headers a page may send (e.g. authorization).
    """
    allowed = [origin.lower().rstrip("/") for origin in origins] or ["*"]
    app = CORSMiddleware(
        request_response(handler),
        allow_origins=allowed,
        allow_methods=["GET"],
        allow_headers=list(headers),
        max_age=600,
    )
    return Route(path, app, methods=["GET", "OPTIONS"])
