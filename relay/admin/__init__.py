"""The live admin page (docs/admin.md): ``/admin`` on the relay's own port.

``routes`` returns the /admin routes of one node: 404 for everything unless
``admin_password`` or ``admin_jwt`` is set. Only then does the node keep a journal of closes
and refusals and answer other nodes' admin requests, so a node without it
costs nothing (configure every node of a cluster alike).
"""

from __future__ import annotations

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router

from relay.admin.cluster import AdminCluster
from relay.admin.journal import Journal
from relay.admin.views import AdminViews, SecureHeaders
from relay.admission import Admission
from relay.hub import Hub
from relay.operator import Operator
from relay.settings import Settings


def routes(
    settings: Settings, hub: Hub, operator: Operator, admission: Admission
) -> tuple[list[BaseRoute], AdminViews | None]:
    """The /admin routes of this node, and its views (None when the page is off)."""
    if not (settings.admin_password or settings.admin_jwt):
        off = SecureHeaders(Router([]), enabled=False)
        # /admin itself too: Starlette would redirect it to the mount's /admin/
        return [Route("/admin", off), Mount("/admin", app=off)], None
    journal = Journal()
    hub.observers.append(journal)
    cluster = AdminCluster(hub, operator, journal)
    cluster.serve()
    views = AdminViews(settings, cluster, admission)
    # Its own 404 (Starlette's default raises past the headers' wrapper).
    router = Router(views.routes(), default=Response("Not Found", 404))
    page = SecureHeaders(RedirectResponse("/admin/"), enabled=True)
    return [Route("/admin", page), Mount("/admin", app=SecureHeaders(router, enabled=True))], views
