"""The server: uvicorn configured for the relay, with a drain on SIGTERM.

``uvicorn_config`` builds the uvicorn ``Config`` that serves the app with
the relay's own HTTP stage and WebSocket frame layer; ``RelayServer`` is
uvicorn's ``Server`` with the relay's lifecycle (a ready line, SIGHUP key
reload, the first SIGTERM or SIGINT draining). ``relay serve`` runs one;
``relay.workers`` runs one per worker process.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette

from relay.httpserver import HTTPLimits, RelayHTTPProtocol
from relay.hub import Hub
from relay.settings import Settings
from relay.wsserver import RelayWebSocketProtocol

log = logging.getLogger("relay")


class RelayServer(uvicorn.Server):
    """uvicorn, with a drain on the first SIGTERM/SIGINT, key reload on SIGHUP, a ready line."""

    # A class attribute: relay.workers.WorkerServer skips this __init__.
    _announcer: asyncio.Task[None] | None = None

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub
        self._draining = False

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if not (self.servers and self.servers[0].sockets):
            return  # startup failed; uvicorn says why
        # Full collections stall every socket: each walks every peer's replay
        # ring (thousands of frames under fan-out), 10-20 ms, several times a
        # second. What exists now lives as long as the process (freeze), and
        # the hot path makes no cyclic garbage: a full pass every hundred
        # second-generation passes (seconds apart under load) is enough, and
        # still frequent enough that handshake garbage does not pile up.
        # docs/design.md.
        gc.freeze()
        gc.set_threshold(700, 10, 100)
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        scheme = "wss" if self.config.ssl_keyfile else "ws"
        shown = f"[{host}]" if ":" in host else host
        url = f"{scheme}://{shown}:{port}{self.hub.settings.path}"
        if threading.current_thread() is threading.main_thread():
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._reload_keys)
        if self.hub.settings.admin_listen:  # its sockets are among those served
            web = "https" if self.config.ssl_keyfile else "http"
            _say(f"admin page only on {web}://{self.hub.settings.admin_listen}/admin/")
        if self.hub.broker.ready:
            _say(f"relay ready on {url}")
            return
        broker = without_password(self.hub.settings.broker)
        _say(
            f"relay on {url} is not ready: the backplane {broker} is unreachable; "
            "retrying (GET /readyz answers 503 until it is up)"
        )
        self._announcer = asyncio.get_running_loop().create_task(self._ready_when_broker_is(url))

    async def _ready_when_broker_is(self, url: str) -> None:
        # The broker reconnects by itself and offers no event to await.
        while not self.hub.broker.ready:  # noqa: ASYNC110 (a flag, cheap to poll)
            await asyncio.sleep(0.5)
        _say(f"relay ready on {url}")

    async def shutdown(self, sockets: Any = None) -> None:
        if self._announcer is not None:
            self._announcer.cancel()
        if threading.current_thread() is threading.main_thread():
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await super().shutdown(sockets)

    def _reload_keys(self) -> None:
        if self.hub.auth is None:
            log.info("SIGHUP: no JWT key file to re-read")
        else:
            self.hub.auth.reload()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # The first signal drains; uvicorn would otherwise close sockets with
        # 1012 and re-raise the signal, so the process would not exit 0.
        if self._draining:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain()))

    async def _drain(self) -> None:
        log.info("draining: closing sockets with 1001, flushing queues")
        await self.hub.drain(self.hub.settings.drain_seconds)
        self.should_exit = True


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def without_password(url: str) -> str:
    """``url`` with any password (``user:password@`` or ``?password=``) left out."""
    parts = urlsplit(url)
    if parts.password is not None:
        user, _, host = parts.netloc.rpartition("@")
        name = user.partition(":")[0]
        url = url.replace(parts.netloc, f"{name}@{host}" if name else host, 1)
    if parts.query:
        kept = "&".join(
            pair for pair in parts.query.split("&") if not pair.lower().startswith("password=")
        )
        url = url.replace("?" + parts.query, "?" + kept if kept else "", 1)
    return url


def uvicorn_config(
    app: Starlette, settings: Settings, *, inherited_send_buffer: bool = False, **overrides: Any
) -> uvicorn.Config:
    """The uvicorn configuration that serves ``app`` as ``settings`` say.

    ``inherited_send_buffer``: the sockets it will serve were bound by
    ``relay.listen.bind`` with ``send_buffer_bytes``, so each accepted socket
    has it already and the frame layer leaves it alone.
    """
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": RelayHTTPProtocol,
        "ws": RelayWebSocketProtocol if settings.ws_impl == "relay" else settings.ws_impl,
        "ws_max_size": settings.max_frame_bytes,
        "ws_max_queue": settings.asgi_queue_messages,
        "ws_ping_interval": settings.ping_interval_seconds,
        "ws_ping_timeout": settings.ping_timeout_seconds,
        "ws_per_message_deflate": False,
        "lifespan": "on",
        "log_level": settings.log_level,
        "server_header": False,
        "proxy_headers": False,
        # After a drain only stragglers are left; don't wait on them forever.
        "timeout_graceful_shutdown": 5,
    }
    if settings.certfile or settings.keyfile:
        # TLS straight from uvicorn: wss:// and https:// on the same port.
        options["ssl_certfile"] = settings.certfile or None
        options["ssl_keyfile"] = settings.keyfile or None
    config = uvicorn.Config(app, **{**options, **overrides})
    # uvicorn's Config has no field for these; the relay's frame layer reads them.
    config.ws_close_timeout = settings.close_timeout_seconds  # type: ignore[attr-defined]
    config.ws_send_buffer_bytes = (  # type: ignore[attr-defined]
        None if inherited_send_buffer else settings.send_buffer_bytes
    )
    config.http_limits = HTTPLimits.from_settings(settings)  # type: ignore[attr-defined]
    hub = getattr(getattr(app, "state", None), "hub", None)
    if hub is not None:  # the HTTP stage's refusals are counted in the node's metrics
        config.http_refused = hub.metrics.http_refused  # type: ignore[attr-defined]
    config.ws_max_fragments = settings.max_fragments  # type: ignore[attr-defined]
    config.ws_message_timeout = settings.message_timeout_seconds  # type: ignore[attr-defined]
    return config
