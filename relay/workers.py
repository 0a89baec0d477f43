"""``relay serve --workers N``: N relay processes on one port, over a shared broker.

uvicorn's multi-process supervisor starts each worker by spawning a fresh
interpreter, so the app is named by an import string (``app_factory``) and
the settings travel in one environment variable (``RELAY_WORKER_SETTINGS``,
JSON of every field). Each worker is one relay node with its own node id and
its own registration in the broker; the kernel spreads accepted sockets over
them.

uvicorn's worker ``Process`` would run a plain ``uvicorn.Server``, which closes
sockets with 1012 on SIGTERM. ``WorkerProcess`` runs a ``WorkerServer`` (the
same drain as the single-process ``RelayServer``: close 1001, flush, exit 0)
instead; the supervisor sends SIGTERM to every worker when it gets one, then
waits for them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import sys
from typing import Any, cast

import uvicorn
from starlette.applications import Starlette
from uvicorn.supervisors import multiprocess

from relay.app import create_app
from relay.hub import Hub
from relay.server import RelayServer, uvicorn_config
from relay.settings import Settings

SETTINGS_ENV = "RELAY_WORKER_SETTINGS"
APP_FACTORY = "relay.workers:app_factory"

_hub: Hub | None = None  # this worker's hub, set by app_factory


def settings_from_env() -> Settings:
    values: dict[str, Any] = json.loads(os.environ[SETTINGS_ENV])
    for field in dataclasses.fields(Settings):
        if isinstance(field.default, tuple) and field.name in values:
            values[field.name] = tuple(values[field.name])
    return Settings(**values)


def app_factory() -> Starlette:
    """Build this worker's app (uvicorn calls it in each worker process)."""
    global _hub
    settings = settings_from_env()
    if settings.node_id:
        settings = settings.replace(node_id=f"{settings.node_id}-{os.getpid()}")
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    _hub = app.state.hub
    return app


class WorkerServer(RelayServer):
    """``RelayServer`` whose hub is created in the worker, by ``app_factory``."""

    def __init__(self, config: uvicorn.Config) -> None:
        uvicorn.Server.__init__(self, config)
        self._draining = False

    @property
    def hub(self) -> Hub:
        assert _hub is not None, "the app is loaded before the server starts"
        return _hub

    @hub.setter
    def hub(self, value: Hub) -> None:
        raise AttributeError("a worker's hub comes from app_factory")


class WorkerProcess(multiprocess.Process):
    """uvicorn's worker process, running the drain-aware ``WorkerServer``."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = WorkerServer(config=self.config)
        return self._server


def run_workers(settings: Settings, sockets: list[socket.socket]) -> int:
    """Run ``settings.workers`` worker processes on ``sockets`` until SIGTERM; the exit status.

    The sockets are bound already (``relay.listen.bind``), so a port in use
    stopped ``relay serve`` before any worker started.
    """
    os.environ[SETTINGS_ENV] = json.dumps(dataclasses.asdict(settings))
    config = uvicorn_config(
        cast(Starlette, APP_FACTORY),
        settings,
        inherited_send_buffer=True,
        factory=True,
        workers=settings.workers,
    )
    # The supervisor builds its workers from this module-level name.
    multiprocess.Process = WorkerProcess  # type: ignore[misc]
    try:
        multiprocess.Multiprocess(config, sockets=sockets).run()
    finally:
        for sock in sockets:
            sock.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run workers with: relay serve --workers N")
