"""Protocol v1 over HTTP requests, for clients whose WebSockets are blocked.

The wire format is docs/protocol-http.md. ``records`` frames bodies,
``transport`` is the ``relay.transport.Transport`` an HTTP session's
``relay.session.Session`` runs on, and ``endpoint`` serves the requests,
forwarding those of sessions another node holds over the broker.
"""

from relay.httptransport.endpoint import HTTPEndpoint

__all__ = ["HTTPEndpoint"]
