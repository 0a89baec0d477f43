"""The live admin page (docs/admin.md): ``/admin`` on the relay's own port, or its own listener.

``routes`` returns the /admin routes of one node: 404 for everything unless
``admin_password`` or ``admin_jwt`` is set. Only then does the node keep a journal of closes
and refusals and answer other nodes' admin requests, so a node without it
costs nothing (configure every node of a cluster alike). With ``admin_listen``
the page is served only on that listener (told apart by the local port of the
connection, which the client cannot choose), and the relay's own port
answers 404 for /admin; the admin listener serves nothing else.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Match, Mount, NoMatchFound, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from relay.admin.cluster import AdminCluster
from relay.admin.journal import Journal
from relay.admin.views import AdminViews, SecureHeaders
from relay.admission import Admission
from relay.hub import Hub
from relay.operator import Operator
from relay.settings import Settings, split_host_port


class Listener(BaseRoute):
    """Every HTTP request and WebSocket that came in on local port ``port``, to ``app``."""

    def __init__(self, port: int, app: ASGIApp) -> None:
        self.port = port
        self.app = app

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        server = scope.get("server") if scope["type"] in ("http", "websocket") else None
        return (Match.FULL if server is not None and server[1] == self.port else Match.NONE), {}

    def url_path_for(self, name: str, /, **path_params: object) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def routes(
    settings: Settings, hub: Hub, operator: Operator, admission: Admission
) -> tuple[list[BaseRoute], AdminViews | None]:
    """The /admin routes of this node, and its views (None when the page is off).

    Put first: with ``admin_listen`` they take every request on that listener.
    """
    off = SecureHeaders(Router([]), enabled=False)
    # /admin itself too: Starlette would redirect it to the mount's /admin/
    closed: list[BaseRoute] = [Route("/admin", off), Mount("/admin", app=off)]
    if not (settings.admin_password or settings.admin_jwt):
        return closed, None
    journal = Journal()
    hub.observers.append(journal)
    cluster = AdminCluster(hub, operator, journal)
    cluster.serve()
    views = AdminViews(settings, cluster, admission)
    # Its own 404 (Starlette's default raises past the headers' wrapper).
    router = Router(views.routes(), default=Response("Not Found", 404))
    page = SecureHeaders(RedirectResponse("/admin/"), enabled=True)
    served: list[BaseRoute] = [
        Route("/admin", page),
        Mount("/admin", app=SecureHeaders(router, enabled=True)),
    ]
    if not settings.admin_listen:
        return served, views
    port = split_host_port(settings.admin_listen)[1]
    only_admin = Router(served, default=off)  # 404; a WebSocket is closed
    return [Listener(port, only_admin), *closed], views
