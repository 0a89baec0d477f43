"""The live admin page (docs/admin.md): ``/admin`` on the relay's own port.

``mount`` returns the /admin route of one node: 404 for everything unless
``admin_password`` is set. Only then does the node keep a journal of closes
and refusals and answer other nodes' admin requests, so a node without it
costs nothing (configure every node of a cluster alike).
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.routing import Mount, Router

from relay.admin.cluster import AdminCluster
from relay.admin.journal import Journal
from relay.admin.views import AdminViews, SecureHeaders
from relay.admission import Admission
from relay.hub import Hub
from relay.operator import Operator
from relay.settings import Settings


def mount(
    settings: Settings, hub: Hub, operator: Operator, admission: Admission
) -> tuple[Mount, AdminViews | None]:
    """The /admin mount of this node, and its views (None when the page is off)."""
    if not settings.admin_password:
        return Mount("/admin", app=SecureHeaders(Router([]), enabled=False)), None
    journal = Journal()
    hub.observers.append(journal)
    cluster = AdminCluster(hub, operator, journal)
    cluster.serve()
    views = AdminViews(settings, cluster, admission)
    # Its own 404 (Starlette's default raises past the headers' wrapper).
    router = Router(views.routes(), default=Response("Not Found", 404))
    return Mount("/admin", app=SecureHeaders(router, enabled=True)), views
