"""CORS for the HTTP routes browsers call from pages of other origins.

The PeerJS REST routes and ``/v1/ice-servers`` are fetched by pages that are
usually served from another origin than the relay, and such a page imports
the client from ``/client.js`` (a module script, which browsers fetch in CORS
mode). They answer the Origins of ``settings.origins`` (compared as the
WebSocket handshake compares them: case-insensitive, without a trailing
slash), or any Origin when the list is empty. Starlette's ``CORSMiddleware``
does the work, preflights included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, request_response
from starlette.types import ASGIApp


def _allowed(origins: tuple[str, ...]) -> list[str]:
    return [origin.lower().rstrip("/") for origin in origins] or ["*"]


def cors_files(app: ASGIApp, origins: tuple[str, ...]) -> ASGIApp:
    """``app`` (static files) answering GET and HEAD with CORS headers for ``origins``."""
    return CORSMiddleware(app, allow_origins=_allowed(origins), allow_methods=["GET", "HEAD"])


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
    app = CORSMiddleware(
        request_response(handler),
        allow_origins=_allowed(origins),
        allow_methods=["GET"],
        allow_headers=list(headers),
        max_age=600,
    )
    return Route(path, app, methods=["GET", "OPTIONS"])
