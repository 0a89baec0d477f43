"""HTTP endpoints served beside the WebSocket: health, readiness, metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from relay.hub import Hub


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
