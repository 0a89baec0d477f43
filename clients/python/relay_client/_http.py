"""The HTTP transport: protocol v1 envelopes over plain HTTP requests.

docs/protocol-http.md is the contract; this is its client side. One
:class:`HttpSocket` is one HTTP session and behaves as a
:class:`~relay_client._socket.Socket`, so the peer does not know which
transport it holds. Four tasks do the work:

* the *downlink* reads the stream (``POST stream``), opening it again with
  the current ``Relay-Received`` when it is cut, and turns to long-poll
  (``POST poll``, one at a time) for the rest of the session when a stream
  brings no record within :data:`FIRST_RECORD_SECONDS` (a buffering proxy);
* the *uplink* sends what :meth:`HttpSocket.send` queued, as batches
  (``POST send``, one in flight, ``Relay-Seq`` one more each); a batch whose
  answer was lost or refused for a while (503, 429) is sent again with the
  same number and body, after a backoff or ``Retry-After``;
* the *acker* reports what arrived (``POST ack``, one in flight) when
  envelopes came and were not reported, and in answer to every keepalive;
* the *watchdog* declares the session lost when no request succeeded and no
  record arrived for the relay's ``idle_seconds``.

A lost session (``404``, ``409``, the watchdog) ends the socket like a
dropped WebSocket (1006), so the peer resumes as it does after a drop; a
close record ends it with that record's code and reason. The session secret
travels only in the ``Relay-Session`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

import httpx
import msgpack

from ._options import Options
from ._records import RECORD_HEADER, BadRecord, Kind, Record, RecordReader, encode
from ._socket import DROPPED, SocketClosed, TransportName
from .errors import RelayUnavailable

log = logging.getLogger("relay_client")

FIRST_RECORD_SECONDS = 3.0
"""A stream that brings no record this long after it was opened is held back by a
proxy: the session turns to long-poll (docs/protocol-http.md, *Proxies*)."""

BATCH_BYTES = 256 * 1024
"""The most a batch carries (records included), unless the relay's ``body_bytes``
is smaller."""

QUEUED_BYTES = 1024 * 1024
"""What :meth:`HttpSocket.send` queues before it waits for the uplink, as a
WebSocket's write buffer makes a writer wait."""

RECEIVED_FRAMES = 1024
"""Frames read and not yet taken before the downlink stops reading."""

_RETRY_FIRST, _RETRY_MAX = 0.1, 5.0  # seconds between attempts of one request

# Answers that end the session, with the close code the peer sees: a lost
# session is a dropped WebSocket (resume); a client the relay calls broken
# (400), refused (403) or oversized (413) does not retry.
_ENDING = {404: DROPPED, 409: DROPPED, 400: 1002, 403: 1008, 413: 1009}


@dataclass(frozen=True, slots=True)
class _Session:
    """What ``open`` answered."""

    secret: str
    keepalive_seconds: float
    poll_seconds: float
    idle_seconds: float
    body_bytes: int


class _Retry(Exception):
    """The relay asked to wait (429, 503) before the stream is opened again."""

    def __init__(self, wait: float) -> None:
        super().__init__(wait)
        self.wait = wait


class _Over(Exception):
    """The session is over, with this close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class HttpSocket:
    """One HTTP session, used as a :class:`~relay_client._socket.Socket`."""

    transport: TransportName = "http"

    def __init__(
        self, client: httpx.AsyncClient, url: str, session: _Session, options: Options
    ) -> None:
        self._client = client
        self._url = url
        self._session = session
        self._max_size = options.max_size
        self._open_timeout = options.open_timeout
        self._close_timeout = options.close_timeout
        self._received = 0  # envelope records received in this HTTP session
        self._reported = 0  # the most a successful request told the relay
        self._seq = 0
        self._queued: deque[bytes] = deque()
        self._queued_bytes = 0
        self._flushed = asyncio.Event()  # nothing queued, no batch in flight
        self._flushed.set()
        self._has_frames = asyncio.Event()
        self._room = asyncio.Event()  # send() may queue
        self._room.set()
        self._ack_wanted = asyncio.Event()
        self._ack_forced = False  # a keepalive or close record asks for an ack regardless
        self._frames: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: the end
        self._reading = asyncio.Event()  # the downlink may read on
        self._reading.set()
        self._exhausted = False
        self._alive = asyncio.Event()  # set by every sign of life: the watchdog waits on it
        self._closing = False
        self._ended = False
        self._code = DROPPED
        self._reason = ""
        self._drained = False
        self.polling = False
        """Whether the session turned to long-poll (a stream brought nothing in time)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._shutdown: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, options: Options) -> HttpSocket:
        """Open an HTTP session at ``options.http_endpoint()`` and start its tasks.

        Raise :class:`RelayUnavailable` when it cannot be opened (unreachable,
        no HTTP transport there, an admission refusal).
        """
        url = options.http_endpoint()
        client = httpx.AsyncClient(
            verify=options.ssl if options.ssl is not None else True,
            timeout=options.open_timeout,
        )
        try:
            session = await _open(client, url)
            sock = cls(client, url, session, options)
        except BaseException:
            await client.aclose()
            raise
        sock._start()
        return sock

    # ------------------------------------------------------------------ #
    # The Socket interface
    # ------------------------------------------------------------------ #

    @property
    def open(self) -> bool:
        return not (self._closing or self._ended)

    @property
    def close_code(self) -> int:
        return self._code

    @property
    def close_reason(self) -> str:
        return self._reason

    @property
    def drained(self) -> bool:
        return self._drained

    async def send(self, frame: bytes) -> None:
        while self.open and not self._room.is_set():
            await self._room.wait()
        if not self.open:
            raise SocketClosed
        self._queued.append(frame)
        self._queued_bytes += len(frame)
        self._flushed.clear()
        self._has_frames.set()
        if self._queued_bytes >= QUEUED_BYTES:
            self._room.clear()

    async def recv(self) -> bytes:
        if self._exhausted:
            raise SocketClosed
        frame = await self._frames.get()
        if self._frames.qsize() < RECEIVED_FRAMES // 2:
            self._reading.set()
        if frame is None:
            self._exhausted = True
            raise SocketClosed
        return frame

    async def frames(self) -> AsyncIterator[bytes]:
        while True:
            try:
                yield await self.recv()
            except SocketClosed:
                return

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send what is queued (within ``close_timeout``), then end the session (``POST close``)."""
        if self.open:
            self._closing = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._close_timeout):
                    await self._flushed.wait()
            with contextlib.suppress(httpx.HTTPError, _Over, TimeoutError):
                async with asyncio.timeout(self._close_timeout):
                    await self._request("close", attempts=1)
            self._end(code, reason)
        if self._shutdown is not None:
            await asyncio.shield(self._shutdown)

    def abort(self) -> None:
        self._end(DROPPED, "")

    # ------------------------------------------------------------------ #
    # Tasks
    # ------------------------------------------------------------------ #

    def _start(self) -> None:
        for work in (self._downlink(), self._uplink(), self._acker(), self._watchdog()):
            task = asyncio.create_task(self._guard(work))
            self._tasks.add(task)

    async def _guard(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except _Over as over:
            self._end(over.code, over.reason)
        except Exception as exc:  # a bug must not leave the peer waiting on a dead session
            log.exception("HTTP transport failure")
            self._end(DROPPED, f"client failure: {exc!r}")

    def _end(self, code: int, reason: str, *, drained: bool = False) -> None:
        """The session is over: end the frames after what was read, stop the tasks."""
        if self._ended:
            return
        self._ended = True
        self._code, self._reason, self._drained = code, reason, drained
        self._frames.put_nowait(None)
        self._room.set()
        self._flushed.set()  # nothing more will be sent
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._shutdown = asyncio.create_task(self._stop())

    async def _stop(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks)
        await self._client.aclose()

    async def _downlink(self) -> None:
        pause = _RETRY_FIRST
        while True:
            if self.polling:
                await self._poll()
                continue
            try:
                got = await self._stream()
            except _Retry as retry:
                await asyncio.sleep(retry.wait)
                continue
            if got is None:
                log.info("no record on the HTTP stream in %ss: long-polling", FIRST_RECORD_SECONDS)
                self.polling = True
            elif got:
                pause = _RETRY_FIRST  # a stream that worked was cut: open the next at once
            else:
                await asyncio.sleep(pause)
                pause = min(pause * 2, _RETRY_MAX)

    async def _stream(self) -> bool | None:
        """Read one stream until it ends; whether it brought a record, ``None`` if
        none came within :data:`FIRST_RECORD_SECONDS`."""
        reader = RecordReader(self._max_size)
        got = False
        timeout = httpx.Timeout(
            self._open_timeout, read=2 * self._session.keepalive_seconds + self._open_timeout
        )
        try:
            async with asyncio.timeout(FIRST_RECORD_SECONDS) as first:
                async with self._client.stream(
                    "POST", f"{self._url}/stream", headers=self._headers(), timeout=timeout
                ) as answer:
                    if answer.status_code != 200:
                        await answer.aread()
                        raise _Retry(self._refused(answer))
                    async for chunk in answer.aiter_bytes():
                        for record in self._parse(reader, chunk):
                            if not got:
                                got = True
                                first.reschedule(None)
                            await self._take(record, streaming=True)
        except TimeoutError:
            if not got:
                return None
            raise
        except httpx.TransportError as exc:
            log.debug("HTTP stream cut: %r", exc)
        return got

    async def _poll(self) -> None:
        hold = self._session.poll_seconds + self._open_timeout
        try:
            answer = await self._client.post(
                f"{self._url}/poll", headers=self._headers(), timeout=hold
            )
        except httpx.TransportError as exc:
            # The answer is lost: the relay sends its records again after Relay-Received.
            log.debug("HTTP poll failed: %r", exc)
            await asyncio.sleep(_RETRY_FIRST)
            return
        if answer.status_code != 200:
            await asyncio.sleep(self._refused(answer))
            return
        self._sign()
        for record in self._parse(RecordReader(self._max_size), answer.content):
            await self._take(record, streaming=False)

    async def _uplink(self) -> None:
        while True:
            await self._has_frames.wait()
            bound = min(BATCH_BYTES, self._session.body_bytes)
            batch = [self._queued.popleft()]
            size = RECORD_HEADER + len(batch[0])
            while self._queued and size + RECORD_HEADER + len(self._queued[0]) <= bound:
                size += RECORD_HEADER + len(self._queued[0])
                batch.append(self._queued.popleft())
            self._queued_bytes -= size - RECORD_HEADER * len(batch)
            if not self._queued:
                self._has_frames.clear()
            if self._queued_bytes < QUEUED_BYTES:
                self._room.set()
            self._seq += 1
            body = b"".join(encode(frame) for frame in batch)
            await self._request("send", body, seq=self._seq)
            if not self._queued:
                self._flushed.set()

    async def _acker(self) -> None:
        while True:
            await self._ack_wanted.wait()
            self._ack_wanted.clear()
            forced, self._ack_forced = self._ack_forced, False
            # A send or stream since may have reported it already.
            if forced or self._received > self._reported:
                await self._request("ack")

    async def _watchdog(self) -> None:
        idle = self._session.idle_seconds
        while True:
            self._alive.clear()
            try:
                async with asyncio.timeout(idle):
                    await self._alive.wait()
            except TimeoutError:
                reason = f"no answer from the relay's HTTP transport for {idle}s"
                raise _Over(DROPPED, reason) from None

    # ------------------------------------------------------------------ #
    # Requests and records
    # ------------------------------------------------------------------ #

    def _headers(self, seq: int | None = None) -> dict[str, str]:
        headers = {"Relay-Session": self._session.secret, "Relay-Received": str(self._received)}
        if seq is not None:
            headers["Relay-Seq"] = str(seq)
            headers["Content-Type"] = "application/octet-stream"
        return headers

    def _sign(self) -> None:
        """The relay answered: the session is alive."""
        self._alive.set()

    async def _request(
        self, name: str, body: bytes = b"", *, seq: int | None = None, attempts: int | None = None
    ) -> None:
        """POST ``name`` until the relay accepts it, the same body each time.

        A transport error, 429 or 503 is retried after a backoff (or the
        ``Retry-After``); an answer that ends the session raises :class:`_Over`.
        """
        pause = _RETRY_FIRST
        tried = 0
        while True:
            tried += 1
            headers = self._headers(seq)
            try:
                answer = await self._client.post(
                    f"{self._url}/{name}",
                    content=body,
                    headers=headers,
                    timeout=self._session.idle_seconds,
                )
            except httpx.TransportError as exc:
                if attempts is not None and tried >= attempts:
                    raise
                log.debug("HTTP %s failed (%r), sending it again", name, exc)
                wait = pause
            else:
                if answer.is_success:
                    self._sign()
                    self._reported = max(self._reported, int(headers["Relay-Received"]))
                    return
                wait = self._refused(answer, pause)
                if attempts is not None and tried >= attempts:
                    return
            await asyncio.sleep(wait)
            pause = min(pause * 2, _RETRY_MAX)

    def _refused(self, answer: httpx.Response, pause: float = _RETRY_FIRST) -> float:
        """How long to wait before asking again after ``answer``; raise :class:`_Over`
        when the answer ends the session."""
        status = answer.status_code
        text = answer.text.strip()
        if status in _ENDING or (400 <= status < 500 and status != 429):
            raise _Over(_ENDING.get(status, DROPPED), f"HTTP {status}: {text}"[:120])
        wait = _retry_after(answer, pause)
        log.debug("HTTP %s from the relay (%s); asking again in %.2fs", status, text, wait)
        return wait

    def _parse(self, reader: RecordReader, chunk: bytes) -> list[Record]:
        try:
            return reader.feed(chunk)
        except BadRecord as exc:
            raise _Over(1002, f"bad record from the relay: {exc}") from None

    async def _take(self, record: Record, *, streaming: bool) -> None:
        self._sign()
        if record.kind is Kind.ENVELOPE:
            self._received += 1
            self._frames.put_nowait(record.payload)
            if self._frames.qsize() >= RECEIVED_FRAMES:
                self._reading.clear()
                await self._reading.wait()
            if streaming:  # a poll reports what it received itself: the next poll
                self._ack_wanted.set()
        elif record.kind is Kind.KEEPALIVE:
            if streaming:
                self._ack_forced = True
                self._ack_wanted.set()
        else:
            code, reason = _close_record(record.payload)
            self._end(code, reason, drained=code == 1001)
            # The relay keeps the session until the close record is reported.
            with contextlib.suppress(httpx.HTTPError, _Over, TimeoutError):
                async with asyncio.timeout(self._close_timeout):
                    await self._request("ack", attempts=1)
            raise _Over(code, reason)  # nothing follows a close record


async def _open(client: httpx.AsyncClient, url: str) -> _Session:
    """``POST open``: a new HTTP session, or :class:`RelayUnavailable`."""
    try:
        answer = await client.post(f"{url}/open")
    except httpx.HTTPError as exc:
        raise RelayUnavailable(f"cannot reach relay at {url}: {_describe(exc)}") from None
    if answer.status_code != 200:
        raise RelayUnavailable(
            f"relay at {url} refused to open an HTTP session (HTTP {answer.status_code})"
        )
    try:
        fields = msgpack.unpackb(answer.content, raw=False)
        return _Session(
            secret=str(fields["session"]),
            keepalive_seconds=float(fields["keepalive_seconds"]),
            poll_seconds=float(fields["poll_seconds"]),
            idle_seconds=float(fields["idle_seconds"]),
            body_bytes=int(fields["body_bytes"]),
        )
    except Exception:
        raise RelayUnavailable(f"relay at {url} answered open with something unexpected") from None


def _close_record(payload: bytes) -> tuple[int, str]:
    try:
        fields = msgpack.unpackb(payload, raw=False)
        return int(fields["code"]), str(fields.get("reason", ""))
    except Exception:
        return 1002, "malformed close record from the relay"


def _retry_after(answer: httpx.Response, default: float) -> float:
    try:
        return max(0.0, float(answer.headers.get("Retry-After", "")))
    except ValueError:
        return default


def _describe(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    cause: BaseException | None = exc
    while cause is not None:  # httpx wraps the OSError that says what happened
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__
