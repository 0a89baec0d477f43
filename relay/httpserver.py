"""The relay's HTTP/1.1 protocol for uvicorn: ``http=RelayHTTPProtocol``.

uvicorn's httptools protocol, bounded. Every connection is *pending* from
its accept until it is upgraded to a WebSocket or closed (an HTTP request,
a keep-alive connection between requests, a handshake), and while pending:

- it counts toward ``max_pending_connections`` (the node) and, unless its
  address is in ``admission_exempt``, ``max_pending_per_ip`` (429 beyond,
  answered at once and closed before anything is read from it). A
  connection beyond the node's cap waits, unread, for a place (the oldest
  first), for up to ``pending_wait_seconds``, while the node holds fewer
  sockets than it has room for (``max_connections`` +
  ``max_pending_connections``; with no ``max_connections``, its open-file
  limit less the reserve); it is answered 503 when its wait ends or there is
  no room to wait. A reconnect storm then queues instead of retrying, and
  what waits holds no buffer of the relay's;
- its next request, head and body, must be in within ``head_timeout_seconds``
  of the moment the relay started waiting for it (the connection opened, or
  its previous response was sent): 408 if part of it came, a silent close if
  nothing did; between requests uvicorn's ``timeout_keep_alive`` also applies;
- a request head holds at most ``max_header_bytes`` (the request line, the
  header fields and the blank line) and ``max_header_count`` fields: 431;
- a WebSocket upgrade in another HTTP version than 1.1 is refused: 400
  (RFC 6455 4.1; uvicorn would hand it on as HTTP/1.1, and the frame layer,
  which validates the rest of the handshake, could not tell).

Each refusal is logged at most once a minute per client address, with the
count of those not logged (``RefusalLog``): an address opening thousands of
slow connections makes one line a minute, not one per socket.

A WebSocket upgrade request in its plain form (``rfc6455.plain_upgrade``:
what browsers and client libraries send), whole in a connection's first read
and within the head bounds, goes to the WebSocket protocol without httptools:
the protocol's own parser has read it, and a reconnect storm is thousands of
them a second. Anything else takes the general path below, and only then is
uvicorn's per-connection state made (``_become_http``): its loggers, parser
and flow control are not built for a connection that never needs them.

Pipelined requests are parsed one at a time: the next request is read only
once the previous one is answered, so the responses go out in order and an
upgrade request behind them is answered (101) after them. Nothing but
WebSocket frames follows a 101. Bytes that came in the same read as an
upgrade request's head are handed to the WebSocket protocol after the head.

How the head is measured: httptools keeps a header it has not finished out
of sight, so the bytes are fed to it in slices that end just after each
blank line (``\\r\\n\\r\\n``). A head ends at a blank line, so it completes
only at the end of a slice, and a request can start inside a slice only
after a ``Content-Length`` body, whose bytes ``on_body`` counts: the bytes of
a head are then known exactly (a few blank lines before a request line count
as head bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

import httptools
from prometheus_client import Counter
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from relay.admission import FULL_RETRY_AFTER, AddressSet, canonical_ip
from relay.fdlimit import RESERVED_FILES
from relay.rfc6455 import NEEDS_HTTP_11, http_response, plain_upgrade
from relay.settings import Settings
from relay.wsserver.addresses import remote_address
from relay.wsserver.connection import RelayWebSocketProtocol

log = logging.getLogger("relay.http")

LOG_INTERVAL: Final = 60.0
"""Seconds between two log lines about the refusals of one address."""

_BLANK_LINE: Final = b"\r\n\r\n"
_INVALID_REQUEST: Final = "Invalid HTTP request received."  # uvicorn's words, for its 400
_HEAD_TOO_LARGE: Final = "request header fields too large"  # as relay.rfc6455 words it


@dataclass(frozen=True, slots=True)
class HTTPLimits:
    """The bounds of the HTTP stage (see the module doc); from ``Settings``."""

    head_timeout: float
    max_pending: int
    pending_wait: float  # how long a connection over max_pending waits for a place
    max_sockets: int  # upgraded or not, before a connection over max_pending may wait; 0: fds
    max_pending_per_ip: int  # 0: no cap
    max_header_count: int
    max_header_bytes: int
    exempt: AddressSet
    table_size: int  # addresses whose last refusal line is remembered

    @classmethod
    def from_settings(cls, settings: Settings) -> HTTPLimits:
        return cls(
            head_timeout=settings.head_timeout_seconds,
            max_pending=settings.max_pending_connections,
            pending_wait=settings.pending_wait_seconds,
            max_sockets=settings.max_connections + settings.max_pending_connections
            if settings.max_connections
            else 0,
            max_pending_per_ip=settings.max_pending_per_ip,
            max_header_count=settings.max_header_count,
            max_header_bytes=settings.max_header_bytes,
            exempt=AddressSet(settings.admission_exempt),
            table_size=max(1, settings.ip_table_size),
        )


class RefusalLog:
    """Logs the refusals of an address at most once per ``LOG_INTERVAL``.

    The line after a quiet interval says how many refusals went unlogged
    since the previous line. At most ``table_size`` addresses are remembered
    (least recently refused forgotten first).
    """

    def __init__(self, table_size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._table_size = table_size
        self._clock = clock
        self._seen: OrderedDict[str, list[float | int]] = OrderedDict()  # [logged at, unlogged]

    def refused(self, ip: str, why: str) -> None:
        """Count one refusal of ``ip``; log it if this address has had no line lately."""
        now = self._clock()
        entry = self._seen.get(ip)
        if entry is not None:
            self._seen.move_to_end(ip)
            if now - entry[0] < LOG_INTERVAL:
                entry[1] += 1
                return
        unlogged = int(entry[1]) if entry is not None else 0
        more = (
            f" ({unlogged} more refusals of this address since its last line)" if unlogged else ""
        )
        log.warning("refused %s: %s%s", ip or "a client", why, more)
        self._seen[ip] = [now, 0]
        while len(self._seen) > self._table_size:
            self._seen.popitem(last=False)


class _Refused(Exception):
    """Raised from a parser callback to stop parsing: answer ``status`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# The scope extension an app calls to hold a response open out of the pending counts.
HELD_OPEN: Final = "relay.held_open"

# ``_Pending.admit``'s answer for a connection that waits for a place.
_WAIT: Final = _Refused(503, "the node is busy, try again later")


class _Pending:
    """The connections of one server that have not been upgraded: counts, refusals, the waiting."""

    def __init__(
        self, limits: HTTPLimits, connections: set[Any], counter: Counter | None = None
    ) -> None:
        self.limits = limits
        self.total = 0
        self.per_ip: dict[str, int] = {}
        self.waiting: deque[RelayHTTPProtocol] = deque()  # oldest first; closed ones skipped
        self._connections = connections  # every socket of the server, upgraded or not
        self._log = RefusalLog(limits.table_size)
        self._counter = counter

    def refused(self, ip: str, status: int | str, why: str) -> None:
        """Count a refusal in the metrics (by status), and log it as ``RefusalLog`` does."""
        if self._counter is not None:
            self._counter.labels(str(status)).inc()
        self._log.refused(ip, f"{status}: {why}")

    def admit(self, ip: str, *, waited: bool = False) -> _Refused | None:
        """Count a new connection from ``ip``; None, ``_WAIT``, or why it is refused."""
        limits = self.limits
        if self.total >= limits.max_pending or (self.waiting and not waited):
            if self._room_to_wait():
                return _WAIT
            self.refused(ip, 503, f"the node holds {self.total} connections not upgraded "
                         "(max_pending_connections) and no room for more to wait")  # fmt: skip
            return _Refused(503, "the node is busy, try again later")
        if limits.max_pending_per_ip and ip and ip not in limits.exempt:
            count = self.per_ip.get(ip, 0)
            if count >= limits.max_pending_per_ip:
                self.refused(ip, 429, f"it holds {count} connections not upgraded "
                             "(max_pending_per_ip)")  # fmt: skip
                return _Refused(429, "too many unfinished connections from your address")
            self.per_ip[ip] = count + 1
        self.total += 1
        return None

    def release(self, ip: str) -> None:
        """Give back what ``admit`` counted for ``ip``; the oldest waiting connection takes it."""
        self.total -= 1
        count = self.per_ip.get(ip)
        if count is not None:
            if count > 1:
                self.per_ip[ip] = count - 1
            else:
                del self.per_ip[ip]
        waiting = self.waiting
        while waiting and self.total < self.limits.max_pending:
            waiting.popleft().waited()

    def _room_to_wait(self) -> bool:
        cap = self.limits.max_sockets
        if not cap:
            cap = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - RESERVED_FILES
        return len(self._connections) <= cap


# One count per uvicorn server (tests run several servers in one process).
_pendings: weakref.WeakKeyDictionary[ServerState, _Pending] = weakref.WeakKeyDictionary()


def _pending_of(server_state: ServerState, config: Config) -> _Pending:
    pending = _pendings.get(server_state)
    if pending is None:
        limits = getattr(config, "http_limits", None) or HTTPLimits.from_settings(Settings())
        pending = _Pending(limits, server_state.connections, getattr(config, "http_refused", None))
        _pendings[server_state] = pending
    return pending


class RelayHTTPProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds and ordering of the module doc."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # uvicorn's own state (its loggers, parser, flow control, addresses) is
        # made by ``_become_http``, on a first read that is not a plain upgrade:
        # most connections are one, and need none of it. Until then, only what
        # the methods that may run before that read use is here.
        if not config.loaded:
            config.load()  # as uvicorn's own __init__ does (uvicorn has loaded it by now)
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.loop = _loop or asyncio.get_event_loop()
        self.connections = server_state.connections
        self.ws_protocol_class = config.ws_protocol_class
        self.cycle = None  # type: ignore[assignment]
        self.flow = None  # type: ignore[assignment]
        self._http = False  # uvicorn's state is made: the connection speaks HTTP
        self._pending = _pending_of(server_state, config)
        self._limits = self._pending.limits
        self._ip = ""
        self._counted = False  # holds a place in the pending counts
        self._deadline: asyncio.TimerHandle | None = None
        self._unparsed = b""  # read, not yet fed to the parser (a request waits for an answer)
        self._tail = b""  # the last bytes fed, to see a blank line split across two reads
        self._slice_length = 0  # of the slice being fed
        self._slice_body = 0  # body bytes the parser found in it so far
        self._in_head = False
        self._head_bytes = 0  # of the head being parsed, before the slice being fed
        self._message_done = True  # no request is partly parsed
        self._refusal: _Refused | None = None  # raised from a callback
        self._waiting = False  # in ``_Pending.waiting``, unread, for a place
        self._answer_later: _Refused | None = None  # once the request before is answered
        self._held_open = False  # its response is held open, out of the pending counts
        # Whether the WebSocket protocol takes requests parsed here (``--ws-impl relay``).
        self._takes_requests = isinstance(self.ws_protocol_class, type) and issubclass(
            self.ws_protocol_class, RelayWebSocketProtocol
        )

    # --- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.connections.add(self)
        client = remote_address(transport)
        self._ip = canonical_ip(client[0]) if client else ""
        self._enter(waited=False)

    def _become_http(self) -> None:
        """Make uvicorn's state: the first read is not a plain upgrade."""
        self._http = True
        transport = self.transport
        super().__init__(self.config, self.server_state, self.app_state, self.loop)
        super().connection_made(transport)

    def _enter(self, *, waited: bool) -> None:
        """Take a place among the pending connections, wait for one, or be refused."""
        refused = self._pending.admit(self._ip, waited=waited)
        if refused is _WAIT:
            self._waiting = True
            self._pending.waiting.append(self)
            self.transport.pause_reading()  # what it sends waits in the kernel
            self._deadline = self.loop.call_later(self._limits.pending_wait, self._waited_too_long)
            return
        if refused is not None:
            self._refuse(refused.status, refused.message, retry_after=FULL_RETRY_AFTER)
            return
        self._counted = True
        self._arm()

    def _stop_waiting(self) -> None:
        if self._waiting:
            self._waiting = False
            with contextlib.suppress(ValueError):
                self._pending.waiting.remove(self)

    def waited(self) -> None:
        """A place is free: take it (``_Pending.release`` calls this, oldest waiter first)."""
        if not self._waiting:
            return
        self._waiting = False
        self._disarm()
        if self.transport.is_closing():
            return
        self._enter(waited=True)
        if self._counted:
            self.transport.resume_reading()

    def _waited_too_long(self) -> None:
        self._deadline = None
        self._stop_waiting()
        seconds = f"{self._limits.pending_wait:g}"
        self._pending.refused(
            self._ip, 503, f"no place among the pending connections in {seconds} s"
        )
        self._refuse(503, "the node is busy, try again later", retry_after=FULL_RETRY_AFTER)

    def data_received(self, data: bytes) -> None:
        if not self._http:
            if self._upgraded_at_once(data):
                return
            self._become_http()
        if self._answer_later is None:  # else the connection ends after that answer
            self._unparsed += data
            self._parse()

    def _upgraded_at_once(self, data: bytes) -> bool:
        """Hand a plain upgrade request, whole in the first read, to the WebSocket protocol.

        Most connections open so, and httptools, uvicorn's request, and the
        request head uvicorn writes again for the WebSocket protocol to parse
        were a fifth of a registration in a reconnect storm (issue 22).
        Anything not plain, whole and within the head bounds takes the
        general path (``rfc6455.plain_upgrade``).
        """
        if not self._counted or not self._takes_requests:
            return False
        end = data.find(_BLANK_LINE)
        if end < 0 or end + len(_BLANK_LINE) > self._limits.max_header_bytes:
            return False
        request = plain_upgrade(data[:end])
        if request is None or len(request.headers) > self._limits.max_header_count:
            return False
        self._release()
        self._disarm()
        self.connections.discard(self)
        protocol = cast("type[RelayWebSocketProtocol]", self.ws_protocol_class)(
            config=self.config,
            server_state=self.server_state,
            app_state=self.app_state,
            _loop=self.loop,
        )
        protocol.connection_made(self.transport)
        self.transport.set_protocol(protocol)
        protocol.take_request(request, data[end + len(_BLANK_LINE) :])
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._http:
            super().connection_lost(exc)
        else:
            self.connections.discard(self)
        self._stop_waiting()
        self._release()
        self._disarm()
        self._unparsed = b""

    def pause_writing(self) -> None:
        if self._http:  # nothing but a refusal is written before
            super().pause_writing()

    def resume_writing(self) -> None:
        if self._http:
            super().resume_writing()

    # --- feeding the parser ---------------------------------------------------------

    def _parse(self) -> None:
        """Feed what was read to the parser, up to a request that waits for its answer."""
        while self._unparsed and not self._holding() and not self.transport.is_closing():
            self._unset_keepalive_if_required()
            data = self._unparsed
            end = self._slice_end(data)
            self._unparsed = data[end:]
            if not self._feed(data[:end]):
                return
        if self._unparsed and not self.transport.is_closing():
            self.flow.pause_reading()  # what was read is bounded by one read

    def _holding(self) -> bool:
        """A whole request waits for its answer: read no further request for now."""
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete and self._message_done

    def _slice_end(self, data: bytes) -> int:
        """Where the next slice of ``data`` ends: just after its first blank line, or its end."""
        tail = self._tail
        if tail:
            straddling = (tail + data[:3]).find(_BLANK_LINE)
            if straddling >= 0:
                return straddling + len(_BLANK_LINE) - len(tail)
        found = data.find(_BLANK_LINE)
        return len(data) if found < 0 else found + len(_BLANK_LINE)

    def _feed(self, piece: bytes) -> bool:
        """Parse one slice; False when parsing stops (refusal, bad request, upgrade)."""
        self._slice_length = len(piece)
        self._slice_body = 0
        self._tail = (self._tail + piece)[-3:]
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserUpgrade as upgrade:
            rest = piece[upgrade.args[0] :] + self._unparsed
            self._unparsed = b""
            if self._should_upgrade():
                if self.parser.get_http_version() != "1.1":
                    # uvicorn hands the WebSocket protocol the request as HTTP/1.1:
                    # only here is its version still known.
                    self._pending.refused(self._ip, 400, NEEDS_HTTP_11)
                    self._refuse(400, NEEDS_HTTP_11)
                    return False
                self._upgrade(rest)
            else:
                # Answered as plain HTTP, like uvicorn does; what follows is dropped.
                why = "an Upgrade other than websocket (answered as HTTP, the rest dropped)"
                self._pending.refused(self._ip, "upgrade", why)
            return False
        except httptools.HttpParserError:
            refusal, self._refusal = self._refusal, None
            if refusal is None:
                refusal = _Refused(400, _INVALID_REQUEST)
            self._pending.refused(self._ip, refusal.status, refusal.message)
            self._refuse(refusal.status, refusal.message)
            return False
        if self._in_head:
            self._head_bytes += len(piece)
            if self._head_bytes > self._limits.max_header_bytes:
                self._pending.refused(self._ip, 431, _HEAD_TOO_LARGE)
                self._refuse(431, _HEAD_TOO_LARGE)
                return False
        return True

    def _upgrade(self, rest: bytes) -> None:
        """Hand the connection to the WebSocket protocol, with the bytes after the head."""
        self._release()
        self._disarm()
        self.handle_websocket_upgrade()
        # The parser's callbacks are bound methods of this protocol: a cycle
        # that keeps both (2-4 KiB) until a full collection, which a burst of
        # upgrades makes rare (issue 22: idle connections cost 8-9 KiB
        # instead of 4 when 500 connect at once). Nothing is parsed here again.
        del self.parser
        protocol = self.transport.get_protocol()
        if rest and protocol is not self and not self.transport.is_closing():
            protocol.data_received(rest)  # type: ignore[attr-defined]

    # --- parser callbacks (uvicorn's, plus the counting) ------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._message_done = False
        self._in_head = True
        # Only the body of the request before can precede this one in the slice.
        self._head_bytes = -self._slice_body

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self._limits.max_header_count:
            self._refusal = _Refused(431, "too many header fields")
            raise self._refusal
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        # A head completes at the end of a slice (see the module doc).
        if self._head_bytes + self._slice_length > self._limits.max_header_bytes:
            self._refusal = _Refused(431, _HEAD_TOO_LARGE)
            raise self._refusal
        self._in_head = False
        if not self.parser.should_upgrade():
            # Not on an upgrade: the bound method would keep this protocol alive after it.
            scope: dict[str, Any] = self.scope  # type: ignore[assignment]
            scope.setdefault("extensions", {})[HELD_OPEN] = self._hold_open
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._slice_body += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._message_done = True
        self._disarm()
        super().on_message_complete()

    def _hold_open(self) -> None:
        """The app holds this response open (an HTTP-transport stream or poll).

        The connection then leaves the pending counts until the response
        completes, as an upgraded one does: the session it serves counts
        toward admission's caps instead, and many clients behind one address
        (an office's proxy) are not refused for holding streams.
        """
        if self._counted:
            self._release()
            self._held_open = True

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._held_open:
            self._held_open = False
            if self._pending.admit(self._ip) is not None:
                self.transport.close()  # no place to wait for a next request: the client reconnects
                return
            self._counted = True
        if self._answer_later is not None and not self.transport.is_closing():
            self._refuse(self._answer_later.status, self._answer_later.message)
        if not self.transport.is_closing():
            self._parse()
            if not self._holding():
                self._arm()  # waiting for the client again

    # --- bounds ---------------------------------------------------------------------

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self._limits.head_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        """The next request is not in within ``head_timeout``."""
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._message_done and not self._unparsed:
            self.transport.close()  # nothing came: an idle connection, not worth a line
            return
        seconds = f"{self._limits.head_timeout:g}"
        self._pending.refused(self._ip, 408, f"no whole request in {seconds} s")
        cycle = self.cycle
        if self._in_head or (cycle is not None and not cycle.response_started):
            self._refuse(408, "request not received in time")
        else:
            self.transport.close()  # its answer went out before its body came in

    def _refuse(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        """Answer ``status`` and close, after the answer to the request before, if any.

        A request refused before its head is complete comes after any request
        still being answered: its answer waits for that one. A request that
        is being answered already is only cut.
        """
        self._unparsed = b""
        self._disarm()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if self._in_head:
                self._answer_later = _Refused(status, message)
                self.flow.pause_reading()
                return
            if cycle.response_started:
                self.transport.close()
                return
        headers = list(self.server_state.default_headers)
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        self.transport.write(http_response(status, headers, message.encode()))
        self.transport.close()

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self._pending.release(self._ip)
