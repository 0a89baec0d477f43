"""The app factory: ``create_app(settings)`` assembles one relay node."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay import admin, api, ice
from relay.broker import Broker, create_broker
from relay.cors import cors_files, cors_route
from relay.httptransport import HTTPEndpoint
from relay.hub import Hub
from relay.metrics import Metrics
from relay.operator import Operator
from relay.peerjs.endpoint import PeerJSEndpoint
from relay.proxy import Outbound, ProxyDecider, RpcCaller
from relay.settings import Settings, split_host_port
from relay.webhook_ledger import ledger_for
from relay.webhooks import Webhooks
from relay.ws import RelayEndpoint, unknown_path

STATIC_DIR = Path(__file__).parent / "static"


class RelayApp(Starlette):
    """Starlette, but the peers' own paths go straight to their endpoints.

    A reconnect storm is thousands of WebSocket handshakes a second, and a
    message over the HTTP transport is a request or two: each would otherwise
    cross Starlette's middleware and try the router's routes in turn, and
    the endpoints check what they are given themselves. Requests on the admin
    listener (``admin_port``) still take the routes, which serve that
    listener nothing but the admin page.
    """

    def __init__(
        self,
        websocket: tuple[str, RelayEndpoint],
        http: tuple[str, ASGIApp] | None,
        admin_port: int | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._ws_path, self._ws_app = websocket
        self._http_prefix = http[0] + "/" if http else ""
        self._http_app: ASGIApp | None = http[1] if http else None
        self._admin_port = admin_port

    def _peers_side(self, scope: Scope) -> bool:
        return self._admin_port is None or (scope.get("server") or ("", 0))[1] != self._admin_port

    def take_websocket(self, scope: Scope, answer: Callable[[Message], None]) -> bool:
        """A socket of the peers' path, at once (``relay.wsserver.asgi.TakesWebSockets``)."""
        if scope["path"] != self._ws_path or not self._peers_side(scope):
            return False
        scope["app"] = self
        return self._ws_app.take_websocket(scope, answer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "lifespan" and self._peers_side(scope):
            if kind == "websocket" and scope["path"] == self._ws_path:
                scope["app"] = self
                await self._ws_app(scope, receive, send)
                return
            if (
                kind == "http"
                and self._http_app is not None
                and scope["path"].startswith(self._http_prefix)
            ):
                scope["app"] = self
                await self._http_app(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, *, broker: Broker | None = None) -> Starlette:
    """Build the ASGI app of one relay node.

    ``broker`` overrides the one named by ``settings.broker`` (tests use it to
    put several nodes on one in-memory cluster). The hub is ``app.state.hub``, its
    operator commands ``app.state.operator``, its webhooks (None without a URL)
    ``app.state.webhooks``, its admin page's views (None when off) ``app.state.admin``, its HTTP
    transport (None when off) ``app.state.http``, its WebSocket endpoint
    ``app.state.relay_endpoint``.
    A proxy URL (``relay.proxy``) makes the hub's decider and, for RPC, its backend.
    """
    settings = settings or Settings()
    hub = Hub(settings, broker or create_broker(settings.broker, settings), Metrics())
    operator = Operator(hub)
    operator.serve()
    # No URL, no observer: the hub's event loops stay empty.
    webhooks = None
    if settings.webhook_urls:
        webhooks = Webhooks(settings, hub.metrics, hub.node_id, ledger_for(settings))
        hub.observers.append(webhooks)

    # No proxy URL, no outbound client: hellos, joins and pubs go as before.
    outbound = rpc = None
    if settings.connect_proxy_url or settings.join_proxy_url or settings.rpc_proxy_url:
        outbound = Outbound(settings, hub.metrics)
    if outbound is not None and (settings.connect_proxy_url or settings.join_proxy_url):
        decider = ProxyDecider(settings, outbound, hub.node_id)
        hub.decider = decider
        hub.observers.append(decider)
    if outbound is not None and settings.rpc_proxy_url:
        rpc = hub.backend = RpcCaller(settings, outbound, hub, hub.node_id)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if webhooks is not None:
                # Entered first, left last: what the hub's shutdown reports is sent too.
                await stack.enter_async_context(webhooks.running())
            if outbound is not None:
                await stack.enter_async_context(outbound.running())
            if rpc is not None:
                await stack.enter_async_context(rpc.running())
            await stack.enter_async_context(hub.running())
            yield

    relay_endpoint = RelayEndpoint(hub)
    # PeerJS sockets count against the same admission caps as native ones.
    peerjs = PeerJSEndpoint(hub, relay_endpoint.admission) if settings.peerjs_path else None
    # HTTP sessions pass the same gate as sockets: one admission, the same caps.
    http = HTTPEndpoint(hub, relay_endpoint.gate) if settings.http_path else None
    admin_routes, admin_views = admin.routes(settings, hub, operator, relay_endpoint.admission)
    routes = [
        # First: 404 unless the page is on; with admin_listen, all that listener serves.
        *admin_routes,
        WebSocketRoute(settings.path, relay_endpoint),
        Route("/healthz", api.healthz),
        Route("/readyz", api.readyz),
        Route("/metrics", api.metrics),
        Route("/v1/send", api.api_send, methods=["POST"]),
        Route("/v1/rooms/{room:path}/publish", api.api_publish, methods=["POST"]),
        Route("/v1/rooms/{room:path}", api.api_room, methods=["GET"]),
        Route("/v1/peers/{peer_id}", api.api_peer, methods=["GET"]),
        cors_route(
            "/v1/ice-servers", ice.endpoint(hub), settings.origins, headers=("authorization",)
        ),
        *(peerjs.routes() if peerjs is not None else ()),
        WebSocketRoute("/{path:path}", unknown_path),
        # The demo, and /client.js for pages of the allowed Origins to import.
        Mount(
            "/",
            cors_files(
                StaticFiles(directory=STATIC_DIR, html=True, check_dir=False), settings.origins
            ),
        ),
    ]
    admin_port = split_host_port(settings.admin_listen)[1] if settings.admin_listen else None
    app = RelayApp(
        (settings.path, relay_endpoint),
        (settings.http_path, http.app()) if http is not None else None,
        admin_port,
        routes=routes,
        lifespan=lifespan,
    )
    app.state.hub = hub
    app.state.operator = operator
    app.state.webhooks = webhooks
    app.state.admin = admin_views
    app.state.http = http
    app.state.relay_endpoint = relay_endpoint
    app.state.api_access = api.APIAccess(settings)
    return app
