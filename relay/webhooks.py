"""Webhooks: session events POSTed, signed and in batches, to the backend's URLs.

``Webhooks`` is a ``SessionObserver`` (``relay.events``): the hub tells it
when a peer id comes online or goes offline for good, when a peer joins or
leaves a room, and when a room gets its first member or loses its last (the
broker says which node's join or leave did, so one node tells each in the
cluster). It turns each into an event (``id``, ``type``, ``time_ms``,
``node``, ``seq``, and ``peer`` and/or ``room``), appends it to each URL's
bounded buffer and returns, so nothing the hub does waits for a backend. One
``Sender`` per URL takes batches from its buffer (``webhook_batch_seconds``
after the oldest event, or as soon as ``webhook_batch_events`` wait), POSTs
one at a time with a ``Relay-Signature``, and retries with exponential
backoff until a 2xx or the end of the oldest event's retry time. What it
gives up is counted, logged at most once a minute, and told to the backend
in the next batch's ``dropped``. The contract is docs/hooks.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskGroup

from relay import __version__
from relay.events import SessionObserver
from relay.metrics import Metrics
from relay.settings import Settings
from relay.webhook_ledger import WRITE_EVERY_SECONDS, Ledger

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("relay.webhooks")

SIGNATURE_HEADER = "Relay-Signature"
_LOG_EVERY_SECONDS = 60.0  # drops are logged at most this often, per URL
_ANSWER_BYTES = 65536  # of a backend's answer, read at most (it is not used)


def sign(body: bytes, keys: Sequence[str], timestamp: int) -> str:
    """The ``Relay-Signature`` of ``body``: ``t=<timestamp>`` and one ``v1=<hex>`` per key.

    Each ``v1`` is the HMAC-SHA256, with that key, of ``"<timestamp>.<body>"``.
    """
    signed = f"{timestamp}.".encode() + body
    macs = (hmac.new(key.encode(), signed, hashlib.sha256).hexdigest() for key in keys)
    return ",".join([f"t={timestamp}", *(f"v1={mac}" for mac in macs)])


@dataclass(frozen=True, slots=True)
class Event:
    """One event: the JSON object sent, and when it happened (``time.monotonic``)."""

    fields: dict[str, Any]
    made: float


def _shown(url: str) -> str:
    """``url`` for the log: no user, password or query (they may hold credentials)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


class Sender:
    """One URL: its buffer, and the loop that delivers it in batches, one request at a time."""

    def __init__(self, url: str, settings: Settings, metrics: Metrics) -> None:
        self.url = url
        self._settings = settings
        self._metrics = metrics
        self._keys = [k for k in (settings.webhook_secret, settings.webhook_previous_secret) if k]
        self._buffer: deque[Event] = deque()
        self._batch: list[Event] = []  # the request in flight
        self._dropped = 0  # given up since the last delivered batch: the next batch says so
        self._unlogged: Counter[str] = Counter()  # dropped since the last log line, by reason
        self._logged_at = -_LOG_EVERY_SECONDS
        self._wake = anyio.Event()  # an event arrived, or the flush began
        self._moved = anyio.Event()  # a batch was delivered or given up
        self._flushing = False
        # Events given to this URL, and those delivered or dropped (counted):
        # what a kill would lose is the difference (relay.webhook_ledger).
        self.made = 0
        self.settled = 0

    def put(self, event: Event) -> None:
        """Buffer ``event``, or drop it when the buffer is full. Never waits."""
        self.made += 1
        if len(self._buffer) >= self._settings.webhook_buffer_events:
            self._drop(1, "buffer")
            return
        self._buffer.append(event)
        self._wake.set()

    async def run(self, client: httpx.AsyncClient) -> None:
        """Deliver batches until cancelled."""
        while True:
            await self._batch_ready()
            self._take_batch()
            if self._batch:
                await self._deliver(client)
            self._batch = []
            self._moved.set()
            self._log_drops()

    def flush(self) -> None:
        """Send what is held without waiting for batches to fill (the relay is stopping)."""
        self._flushing = True
        self._wake.set()

    async def emptied(self) -> None:
        """Return once nothing is buffered or in flight."""
        while self._buffer or self._batch:
            self._moved = anyio.Event()
            await self._moved.wait()

    def give_up(self) -> None:
        """Count what is still held as dropped (the drain's bound is over)."""
        held = len(self._buffer) + len(self._batch)
        self._buffer.clear()
        self._batch = []
        if held:
            self._drop(held, "shutdown")
        self._log_drops(now=True)

    async def _batch_ready(self) -> None:
        """Wait for an event, then for the batch to fill or its oldest event's wait to end."""
        while not self._buffer:
            self._wake = anyio.Event()
            # Drops not logged yet are logged when their minute is up, events or not.
            with anyio.move_on_after(self._log_due()):
                await self._wake.wait()
            self._log_drops()
        size = self._settings.webhook_batch_events
        while len(self._buffer) < size and not self._flushing:
            left = self._buffer[0].made + self._settings.webhook_batch_seconds - time.monotonic()
            if left <= 0:
                return
            self._wake = anyio.Event()
            with anyio.move_on_after(left):
                await self._wake.wait()

    def _take_batch(self) -> None:
        """Move the next batch out of the buffer, dropping events whose retry time is over."""
        oldest_kept = time.monotonic() - self._settings.webhook_retry_seconds
        expired = 0
        while self._buffer and self._buffer[0].made <= oldest_kept:
            self._buffer.popleft()
            expired += 1
        if expired:
            self._drop(expired, "expired")
        count = min(len(self._buffer), self._settings.webhook_batch_events)
        self._batch = [self._buffer.popleft() for _ in range(count)]

    async def _deliver(self, client: httpx.AsyncClient) -> None:
        """POST the batch until a 2xx, retrying until its oldest event's retry time is over."""
        settings = self._settings
        carried = self._dropped
        body = json.dumps(
            {"events": [event.fields for event in self._batch], "dropped": carried},
            separators=(",", ":"),
        ).encode()
        deadline = self._batch[0].made + settings.webhook_retry_seconds
        failures = 0
        while not await self._post(client, body):
            wait = min(
                settings.webhook_backoff_cap_seconds,
                settings.webhook_backoff_base_seconds * 2 ** min(failures, 60),  # no overflow
            )
            wait *= random.uniform(0.5, 1.0)  # jitter: relays restarted together spread out
            failures += 1
            if time.monotonic() + wait >= deadline:
                self._drop(len(self._batch), "expired")
                return
            self._metrics.webhook_retries.inc()
            await anyio.sleep(wait)
        now = time.monotonic()
        for event in self._batch:
            self._metrics.webhook_latency.observe(now - event.made)
        self._metrics.webhook_sent.inc(len(self._batch))
        self.settled += len(self._batch)
        self._dropped -= carried

    async def _post(self, client: httpx.AsyncClient, body: bytes) -> bool:
        """One try: True for a 2xx. A timeout, a refused connection or any other answer is False."""
        import httpx

        headers = {
            "content-type": "application/json",
            "user-agent": f"relay/{__version__}",
            # Signed at each try: a retry carries a fresh time the backend can check.
            SIGNATURE_HEADER: sign(body, self._keys, int(time.time())),
        }
        try:
            # httpx's timeout bounds each phase; this bounds the whole request.
            with anyio.fail_after(self._settings.webhook_timeout_seconds):
                async with client.stream("POST", self.url, content=body, headers=headers) as got:
                    # A short answer is read, so the connection is kept for the next
                    # request; a long one is not kept in memory (the connection closes).
                    read = 0
                    async for chunk in got.aiter_raw():
                        read += len(chunk)
                        if read > _ANSWER_BYTES:
                            break
        except (httpx.HTTPError, TimeoutError) as exc:
            log.debug("webhook %s: %s", _shown(self.url), exc or type(exc).__name__)
            return False
        except Exception:
            # Whatever a backend does, it must not end the sender (nor the relay with it).
            log.exception("webhook %s: unexpected failure; retrying", _shown(self.url))
            return False
        if 200 <= got.status_code < 300:
            return True
        log.debug("webhook %s: answered %d", _shown(self.url), got.status_code)
        return False

    def count_lost(self, count: int) -> None:
        """``count`` events a killed run of this node never sent (``relay.webhook_ledger``)."""
        self._dropped += count
        self._metrics.webhook_dropped.labels("killed").inc(count)
        self._unlogged["killed"] += count
        self._log_drops(now=True)

    def _drop(self, count: int, reason: str) -> None:
        self.settled += count
        self._dropped += count
        self._metrics.webhook_dropped.labels(reason).inc(count)
        self._unlogged[reason] += count
        self._log_drops()

    def _log_due(self) -> float:
        """Seconds until the drops not logged yet may be (infinite: there are none)."""
        if not self._unlogged:
            return math.inf
        return max(0.0, self._logged_at + _LOG_EVERY_SECONDS - time.monotonic())

    def _log_drops(self, *, now: bool = False) -> None:
        """Log what was dropped since the last line, if a minute has passed (or ``now``)."""
        if not self._unlogged or not (now or self._log_due() == 0):
            return
        reasons = ", ".join(f"{reason}: {count}" for reason, count in self._unlogged.items())
        total = self._unlogged.total()
        log.warning(
            "webhook %s: %d event%s dropped (%s); the next batch says how many",
            _shown(self.url),
            total,
            "" if total == 1 else "s",
            reasons,
        )
        self._unlogged.clear()
        self._logged_at = time.monotonic()


class Webhooks(SessionObserver):
    """The node's webhooks: session events in, one ``Sender`` per URL out.

    Add it to ``Hub.observers`` and serve within ``running()``.
    """

    def __init__(
        self, settings: Settings, metrics: Metrics, node: str, ledger: Ledger | None = None
    ) -> None:
        self._settings = settings
        self._ledger = ledger
        self._node = node
        self._types = frozenset(settings.webhook_events)
        self._stream = secrets.token_hex(6)  # makes ids unique across restarts of the node
        self._seq = 0
        self._meta: dict[str, object] = {}  # of this node's peers that have one
        self.senders = [Sender(url, settings, metrics) for url in settings.webhook_urls]
        self._tasks: TaskGroup | None = None  # the senders', while running

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Deliver while open; on exit, send what is held within ``webhook_drain_seconds``."""
        import httpx  # loaded only where a URL is configured, not at every start-up

        settings = self._settings
        client = httpx.AsyncClient(
            timeout=settings.webhook_timeout_seconds,
            limits=httpx.Limits(max_connections=len(self.senders)),  # one request per URL
        )
        ledger = self._ledger
        if ledger is not None:
            for sender in self.senders:
                lost = await ledger.take(sender.url)
                if lost:
                    sender.count_lost(lost)
        try:
            async with client, anyio.create_task_group() as tasks:
                self._tasks = tasks
                for sender in self.senders:
                    tasks.start_soon(sender.run, client)
                if ledger is not None:
                    tasks.start_soon(self._note_progress, ledger)
                try:
                    yield
                finally:
                    with anyio.CancelScope(shield=True):
                        await self.drain(settings.webhook_drain_seconds)
        finally:
            if ledger is not None:
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(settings.webhook_drain_seconds),
                ):
                    for sender in self.senders:  # all settled now: nothing for the next start
                        await ledger.write(sender.url, sender.made, sender.settled)
                    await ledger.close()

    async def _note_progress(self, ledger: Ledger) -> None:
        """Keep the ledger at most a second behind while events are made or settled."""
        noted: dict[str, tuple[int, int]] = {}
        while True:
            for sender in self.senders:
                progress = (sender.made, sender.settled)
                if noted.get(sender.url) != progress:
                    noted[sender.url] = progress
                    await ledger.write(sender.url, *progress)
            await anyio.sleep(WRITE_EVERY_SECONDS)

    async def drain(self, seconds: float) -> None:
        """Send what is held at once, for up to ``seconds``; drop the rest (counted) and stop."""
        for sender in self.senders:
            sender.flush()
        with anyio.move_on_after(seconds):
            for sender in self.senders:
                await sender.emptied()
        for sender in self.senders:
            sender.give_up()
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()

    def _emit(self, kind: str, **fields: str) -> None:
        if kind not in self._types:
            return
        peer_id = fields.get("peer")
        meta = self._meta.get(peer_id) if peer_id is not None else None
        self._seq += 1
        event = Event(
            {
                "id": f"{self._stream}-{self._seq}",
                "type": kind,
                "time_ms": int(time.time() * 1000),
                "node": self._node,
                "seq": self._seq,
                **fields,
                **({"meta": meta} if meta is not None else {}),
            },
            time.monotonic(),
        )
        for sender in self.senders:
            sender.put(event)

    # --- SessionObserver ------------------------------------------------------

    def online(self, peer_id: str, *, resumed: bool, meta: object = None) -> None:
        """``peer.online`` for a fresh registration; a resume is the same peer, still online.

        A ``meta`` (the connect proxy's, docs/hooks.md) goes with each event of the peer.
        """
        if meta is not None:
            self._meta[peer_id] = meta
        if not resumed:
            self._emit("peer.online", peer=peer_id)

    def offline(self, peer_id: str, reason: str, *, lost_node: str | None = None) -> None:
        """``peer.offline`` with ``reason``, unless the peer moved on to another node."""
        if reason == "moved":
            self._meta.pop(peer_id, None)
            return  # the node that took it over tells its end, and its rooms'
        if lost_node is None:
            self._emit("peer.offline", peer=peer_id, reason=reason)
        else:
            self._emit("peer.offline", peer=peer_id, reason=reason, lost_node=lost_node)
        self._meta.pop(peer_id, None)

    def joined(self, room: str, peer_id: str) -> None:
        """``room.joined``."""
        self._emit("room.joined", room=room, peer=peer_id)

    def left(self, room: str, peer_id: str) -> None:
        """``room.left``."""
        self._emit("room.left", room=room, peer=peer_id)

    def occupied(self, room: str) -> None:
        """``room.occupied``, just before the ``room.joined`` of the room's first member."""
        self._emit("room.occupied", room=room)

    def vacated(self, room: str) -> None:
        """``room.vacated``, just after the ``room.left`` of its last member."""
        self._emit("room.vacated", room=room)
