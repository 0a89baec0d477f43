"""The relay's WebSocket server protocol for uvicorn: ``ws=RelayWebSocketProtocol``.

The HTTP protocol (``relay.httpserver``, uvicorn's httptools one underneath)
parses the request, then hands the socket over: it creates this protocol,
calls ``connection_made(transport)``, makes this object the transport's
protocol, replays the request through ``data_received``, then passes on the
bytes that came after the head in the same read (uvicorn's own HTTP
protocols drop those: serve with ``http=RelayHTTPProtocol``, as
``relay.server.uvicorn_config`` does). From there on every byte goes through
``relay.rfc6455``.

The modules, one concern each:

- ``connection``: ``RelayWebSocketProtocol``, the asyncio protocol of one
  connection (reading, writing, direct mode, the I/O side of closing);
- ``direct``: ``FrameHandler`` and ``DirectConnection``, the direct-mode
  contract between a connection and its owner;
- ``asgi``: ``ASGIBridge``, which runs any ASGI app over a connection through
  the small interface ``BridgedConnection``;
- ``keepalive``: one timer per server that pings every open connection and
  fails the silent ones (1011);
- ``states``: where a connection is, shared by the connection and the bridge.

Two ways to use a connection:

- **ASGI**: any app sees a standard ``websocket`` scope and messages
  (``asgi.ASGIBridge``), including the denial-response extension.
- **Direct**: the app looks up ``scope["extensions"]["relay.direct"]["connection"]``
  and calls ``accept_direct(handler)``. Messages then reach ``handler``
  synchronously from ``data_received`` (``FrameHandler``), and the owner
  writes with ``write`` (``DirectConnection``): no ASGI dicts, no queue, no
  task per connection, and every frame written during one event-loop pass
  leaves in one ``transport.writelines``.

Closing: ``relay.rfc6455.ClosingHandshake`` decides (what to send, when to
stop sending, which code the owner hears); the connection carries it out. The
close frame goes out after anything already written; then the
server half-closes TCP first (RFC 6455 7.1.1) and reads until the client's FIN;
``close_timeout`` after the close started, a peer that has not finished is
aborted. ``close_timeout`` is ``config.ws_close_timeout`` when that attribute
exists (uvicorn's ``Config`` has no such option; set it on the object), else
``DEFAULT_CLOSE_TIMEOUT``.

Keepalive: one timer per server (``keepalive.Keepalive``) pings every open connection
each ``ws_ping_interval`` and fails those that sent nothing (no data, no pong)
within ``ws_ping_timeout`` of the ping: close 1011 with the reason
``KEEPALIVE_TIMEOUT`` (what the owner hears too), then TCP ends as for any
close, aborted ``close_timeout`` later at most.

Incoming messages are bounded in bytes (``ws_max_size``, 1009), in frames
(``config.ws_max_fragments``, 1009) and in time: a message (or a frame) whose
first byte arrived ``config.ws_message_timeout`` seconds ago and that is still
incomplete closes the connection with 1008. Like ``ws_close_timeout``, these
two are attributes one sets on uvicorn's ``Config``; ``DEFAULT_MAX_FRAGMENTS``
and ``DEFAULT_MESSAGE_TIMEOUT`` apply without them.
"""

from relay.wsserver.connection import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_FRAGMENTS,
    DEFAULT_MESSAGE_TIMEOUT,
    DEFAULT_SEND_BUFFER,
    KEEPALIVE_TIMEOUT,
    WRITE_HIGH_WATER,
    RelayWebSocketProtocol,
)
from relay.wsserver.direct import DirectConnection, FrameHandler

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_MAX_FRAGMENTS",
    "DEFAULT_MESSAGE_TIMEOUT",
    "DEFAULT_SEND_BUFFER",
    "KEEPALIVE_TIMEOUT",
    "WRITE_HIGH_WATER",
    "DirectConnection",
    "FrameHandler",
    "RelayWebSocketProtocol",
]
