"""A PeerJS socket as a hub session: the one place that calls the hub for PeerJS.

``PeerJSSession`` is the hub's own ``relay.session.Session`` with PeerJS
frames: text in (``text_received``), and everything the hub writes to the
socket turned into PeerJS JSON (``translate``) by its transport
(``relay.peerjs.transport``: direct mode, or ASGI on uvicorn's servers).
So a PeerJS peer has the queue, backpressure, slow-consumer close, drain,
token expiry and cluster routing of a native peer, through the same code.

It registers as the peer ``@peerjs/<id>`` (``relay.peerjs.protocol.NAMESPACE``),
an id namespace native hellos cannot reach (the codec refuses ids starting
with ``@``). Because the codec refuses that namespace, PeerJS requests do
not go through ``Session.message_received``; the session calls the hub
directly:

- ``Hub.register(session, Hello(peer_id="@peerjs/<id>", token, resume))``
  (``token``: the JWT when auth is on; ``resume``: the secret of this node's
  earlier session with the same PeerJS token, which takes over a half-open
  socket);
- ``Hub.send(session, Send(to="@peerjs/<dst>", d_raw, ev=<PeerJS type>, id=n))``
  for each relayed message, with an id of this socket's own: the hub's
  ``ok`` or ``err`` for it comes back through the socket's queue, and an
  ``err`` (``peer-offline``: nobody holds the id; ``overloaded``: a full queue
  or the backplane down) puts the message in the pre-connect queue
  (``relay.peerjs.pending``) to be tried again, not ``EXPIRE`` at once;
- ``Hub.join(session, Join(room="@peerjs"))`` when discovery is on.

PeerJS clients cannot resume, so the session is not ``resumable``: however
the socket ends, the hub removes the peer at once and its id is free on
every node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from relay.broker.base import BrokerUnavailable
from relay.clock import Timer
from relay.exceptions import BadEnvelope, Internal, PeerOffline, RateLimited, RelayError
from relay.hub import Hub
from relay.peerjs import protocol
from relay.peerjs.pending import PreConnectQueue
from relay.peerjs.protocol import DISCOVERY_ROOM, HELD, NAMESPACE, Heartbeat, Relayed
from relay.protocol.codes import CloseCode
from relay.protocol.envelopes import Hello, Join, Send
from relay.session import EXPLAIN_SECONDS, Session
from relay.transport import Transport

log = logging.getLogger("relay.peerjs")

_RETRY_SECONDS = 0.25  # how often held messages are tried again


@dataclass(slots=True)
class _Sent:
    """A message handed to the hub whose ``ok`` or ``err`` has not come back yet."""

    message: Relayed
    held: bool  # the first message of its destination's pre-connect line
    size: int


class PeerJSSession(Session):
    """One PeerJS socket, attached (once ``register`` succeeds) to the peer ``@peerjs/<id>``."""

    __slots__ = (
        "_heartbeat_timer",
        "_last_heard",
        "_next_id",
        "_now",
        "_pending",
        "_retry_timer",
        "_settling",
        "_text_limits",
        "_trying",
        "_unanswered",
        "_unanswered_bytes",
        "_waiting_answers",
        "peerjs_id",
    )
    resumable = False

    def __init__(
        self,
        hub: Hub,
        transport: Transport,
        peerjs_id: str,
        *,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(hub, transport, on_end=on_end)
        settings = hub.settings
        self.peerjs_id = peerjs_id
        clock = hub.scheduler.time
        self._now = clock
        self._text_limits = protocol.Limits(
            settings.max_frame_bytes, settings.max_depth, settings.max_id_length
        )
        self._pending = PreConnectQueue(
            max_messages=settings.peerjs_queue_messages,
            max_bytes=settings.peerjs_queue_bytes,
            expire_seconds=settings.peerjs_expire_seconds,
            clock=clock,
        )
        self._trying: set[str] = set()  # destinations whose first held message is out
        self._unanswered: dict[int, _Sent] = {}
        self._unanswered_bytes = 0
        self._settling: list[tuple[_Sent, bool]] = []  # answers translate took: (sent, taken)
        self._waiting_answers = False  # reading paused until answers come back
        self._next_id = 1
        self._last_heard = clock()
        self._heartbeat_timer: Timer | None = None
        self._retry_timer: Timer | None = None

    # --- registration ----------------------------------------------------------

    async def open(self, token: str | None, resume: str | None) -> bool:
        """Claim the PeerJS id through the shared registration; True once ``OPEN`` is written.

        A refusal writes ``ID-TAKEN`` or ``ERROR`` and closes the socket, with
        the close codes of any refused hello (``Session.register``).
        """
        hello = Hello(peer_id=NAMESPACE + self.peerjs_id, token=token, resume=resume)
        if not await self.register(hello):
            return False
        self._heartbeat_timer = self.routing.scheduler.call_later(
            self.routing.settings.peerjs_heartbeat_timeout_seconds, self._check_heartbeat
        )
        if self.routing.settings.peerjs_discovery:
            # Not read meanwhile: the peer's first messages follow its listing.
            self.run(self._join_discovery())
        return True

    async def _join_discovery(self) -> None:
        """Be listed by ``GET {path}/{key}/peers`` (a hub room: the whole cluster sees it)."""
        try:
            await self.routing.join(self, Join(room=DISCOVERY_ROOM))
        except (RelayError, BrokerUnavailable) as exc:  # room-full, forbidden by the token
            log.info("PeerJS peer %s not listed for discovery: %s", self.peerjs_id, exc)

    # --- what the connection calls ---------------------------------------------

    def text_received(self, text: str) -> None:
        """One PeerJS message: checked, rate-limited, then relayed, held or refused."""
        if self.peer is None or self.close_code is not None:
            return
        self._last_heard = self._now()
        received = self.routing.metrics.received
        if not self._rate.take():
            received["invalid"].add(len(text))
            self._close_with_error(RateLimited("rate limit exceeded"), "flood")
            return
        try:
            message = protocol.parse(text, self.peerjs_id, self._text_limits)
        except RelayError as exc:  # BadEnvelope, TooLarge
            received["invalid"].add(len(text))
            self._close_with_error(exc)
            return
        if isinstance(message, Heartbeat):
            received["ping"].add(len(text))
            return
        received["send"].add(len(text))
        if self._pending.holds(message.dst):
            self._hold(message)  # behind earlier messages to the same peer
        else:
            self._relay(message, held=False)

    def message_received(self, frame: bytes) -> None:
        """PeerJS speaks text only: a binary frame gets ``ERROR`` and 1003."""
        if self.peer is None or self.close_code is not None:
            return
        self.routing.metrics.received["invalid"].add(len(frame))
        # A bad message, but the close says which kind of frame, as a native
        # session's 1003 for a text frame does.
        self._close_with_error(
            BadEnvelope("binary frames are not accepted"), close_code=CloseCode.UNSUPPORTED_DATA
        )

    def connection_lost(self, code: int, reason: str = "") -> None:
        """The socket is gone: held messages are dropped with it."""
        for timer in (self._heartbeat_timer, self._retry_timer):
            if timer is not None:
                timer.cancel()
        self._heartbeat_timer = self._retry_timer = None
        super().connection_lost(code, reason)

    # --- what the hub writes ---------------------------------------------------

    def translate(self, frame: bytes) -> list[str]:
        """The PeerJS texts for one frame the hub wrote to this socket.

        The hub's answers to this socket's own sends give none: an ``ok``
        settles the message, an ``err`` holds it for a retry. Both take effect
        once the current callback is over (``_settle``): in direct mode the
        transport calls this from inside whatever wrote the answer (the hub
        routing, an acknowledgement check), and relaying the next held
        message from there would re-enter the hub mid-call.
        """
        envelope = protocol.unpack(frame)
        if envelope is None:
            return []
        kind = envelope.get("type")
        if kind == "welcome":
            self._last_heard = self._now()  # silence is counted from OPEN
        elif kind in ("ok", "err"):
            request_id = envelope.get("id")
            sent = self._unanswered.pop(request_id, None) if isinstance(request_id, int) else None
            if sent is not None:
                if not self._settling:
                    self.routing.scheduler.call_soon(self._settle)
                self._settling.append((sent, kind == "ok"))
                return []
        return protocol.from_relay(envelope, self.peerjs_id)

    def _settle(self) -> None:
        """Act on the answers ``translate`` took since the last call."""
        settling, self._settling = self._settling, []
        if not self.ended:
            for sent, taken in settling:
                self._answered(sent, taken=taken)

    # --- relaying and the pre-connect queue -------------------------------------

    def _relay(self, message: Relayed, *, held: bool) -> None:
        """Hand ``message`` to the hub, with an id whose answer says whether it was taken."""
        request_id = self._next_id
        self._next_id += 1
        d_raw = protocol.to_relay(message)
        sent = _Sent(message, held, len(d_raw))
        self._unanswered[request_id] = sent
        self._unanswered_bytes += sent.size
        settings = self.routing.settings
        if not self._waiting_answers and (
            len(self._unanswered) >= settings.inflight_per_session
            or self._unanswered_bytes >= settings.queue_bytes
        ):
            self._waiting_answers = True
            self.hold()
        request = Send(to=NAMESPACE + message.dst, d_raw=d_raw, ev=message.type.value,
                       id=request_id)  # fmt: skip
        started = time.perf_counter()
        try:
            self.routing.send(self, request)
        except Exception:
            log.exception("internal error relaying a PeerJS %s", message.type)
            self._close_with_error(Internal("internal error"), "error")
            return
        self.routing.metrics.routing.observe(time.perf_counter() - started)

    def _answered(self, sent: _Sent, *, taken: bool) -> None:
        self._unanswered_bytes -= sent.size
        settings = self.routing.settings
        if self._waiting_answers and (
            len(self._unanswered) < settings.inflight_per_session
            and self._unanswered_bytes < settings.queue_bytes
        ):
            self._waiting_answers = False
            self.resume()
        dst = sent.message.dst
        if not sent.held:
            if not taken:
                self._hold(sent.message)
            return
        if self._pending.first(dst) is not sent.message:
            return  # its line expired or was dropped meanwhile
        self._trying.discard(dst)
        if taken:
            self._pending.delivered(dst)
            self._try(dst)  # the next held message at once

    def _hold(self, message: Relayed) -> None:
        """Keep ``message`` for a peer not there yet; past the bounds that peer expires now."""
        if message.type not in HELD:
            return  # a LEAVE for an absent peer means nothing
        if self._pending.add(message):
            if self._retry_timer is None and not self.ended:
                self._retry_timer = self.routing.scheduler.call_later(_RETRY_SECONDS, self._retry)
        else:
            self._pending.drop(message.dst)
            self._trying.discard(message.dst)
            self._expire(message.dst)

    def _retry(self) -> None:
        """Try held messages again; ``EXPIRE`` destinations whose time is up."""
        self._retry_timer = None
        if self.close_code is not None:
            return  # a refused or replaced socket sends nothing more
        for dst in self._pending.expired():
            self._trying.discard(dst)
            self._expire(dst)
        for dst in self._pending.destinations():
            self._try(dst)
        if self._pending:
            self._retry_timer = self.routing.scheduler.call_later(_RETRY_SECONDS, self._retry)

    def _try(self, dst: str) -> None:
        message = self._pending.first(dst)
        if message is not None and dst not in self._trying and self.close_code is None:
            self._trying.add(dst)
            self._relay(message, held=True)

    # --- what the relay says itself ----------------------------------------------

    def _expire(self, dst: str) -> None:
        """Tell the client ``dst`` is unavailable (PeerJS's ``peer-unavailable``)."""
        self._refuse(PeerOffline(f"{dst} is not connected", to=NAMESPACE + dst))

    def _close_with_error(
        self, exc: RelayError, label: str = "bad", *, close_code: int | None = None
    ) -> None:
        """``ERROR`` that explains it, then close: PeerJS clients treat any ERROR as fatal.

        The error is counted by its code, and the close code follows from it
        (``protocol.close_code``) unless ``close_code`` says otherwise.
        """
        self._refuse(exc)
        if close_code is None:
            close_code = protocol.close_code(exc.code)
        self.close(close_code, exc.message[:120], label=label, flush_seconds=EXPLAIN_SECONDS)

    def _check_heartbeat(self) -> None:
        timeout = self.routing.settings.peerjs_heartbeat_timeout_seconds
        silent = self._now() - self._last_heard
        if silent >= timeout:
            self._heartbeat_timer = None
            self.close(CloseCode.POLICY_VIOLATION, "no heartbeat in time", label="silent")
        else:
            self._heartbeat_timer = self.routing.scheduler.call_later(
                timeout - silent, self._check_heartbeat
            )
