"""The settings of one peer: the keyword arguments of :func:`relay_client.connect`, checked once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ssl import SSLContext
from urllib.parse import urlsplit, urlunsplit

from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

TRANSPORTS = ("websocket", "http")
"""The transports a peer knows, in the order it tries them by default."""

TokenSource = str | Callable[[], str | Awaitable[str]] | None
"""A token, or a function (sync or async) called before every (re)connect for a fresh one."""


@dataclass(frozen=True, slots=True)
class Options:
    """What :func:`relay_client.connect` was given; see its docstring for each field."""

    url: str
    id: str | None
    token: TokenSource
    resume: str | None
    reconnect: bool
    pace: bool
    backoff_base: float
    backoff_max: float
    max_retries: int | None
    buffer_size: int
    inbox_size: int
    request_timeout: float
    open_timeout: float
    ping_interval: float | None
    ping_timeout: float | None
    close_timeout: float | None
    max_size: int | None
    ssl: SSLContext | None
    transports: tuple[str, ...]
    http_url: str | None
    fallback_timeout: float

    def __post_init__(self) -> None:
        try:
            parse_uri(self.url)
        except InvalidURI as exc:
            raise ValueError(f"invalid relay URL {self.url!r}: {exc}") from None
        unknown = [t for t in self.transports if t not in TRANSPORTS]
        if not self.transports or unknown or len(set(self.transports)) < len(self.transports):
            raise ValueError(
                f"transports must be distinct values among {TRANSPORTS}, got {self.transports!r}"
            )
        if self.http_url is not None:
            check_http_url(self.http_url)
        elif self.transports[0] == "http":
            # No WebSocket to try first: an HTTP URL is needed from the start.
            derive_http_url(self.url)
        if self.fallback_timeout <= 0:
            raise ValueError("fallback_timeout must be > 0")

    def http_endpoint(self) -> str:
        """Where the HTTP transport is: ``http_url``, else derived from ``url``
        (ValueError when it cannot be, see :func:`derive_http_url`)."""
        if self.http_url is not None:
            return self.http_url.rstrip("/")
        return derive_http_url(self.url)
        if self.buffer_size < 0 or self.inbox_size < 1:
            raise ValueError("buffer_size must be >= 0 and inbox_size >= 1")
        if self.backoff_base <= 0 or self.backoff_max < self.backoff_base:
            raise ValueError("need 0 < backoff_base <= backoff_max")


def check_http_url(url: str) -> None:
    """Raise ValueError unless ``url`` is an ``http(s)://`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid HTTP transport URL {url!r}: it needs http:// or https://")


def derive_http_url(ws_url: str) -> str:
    """The HTTP transport's URL beside the WebSocket at ``ws_url``:
    ``ws://h:8080/v1/ws`` -> ``http://h:8080/v1/http`` (``wss`` -> ``https``).

    Raise ValueError when the path's last segment is not ``ws`` (the relay's
    ``path`` and ``http_path`` were changed): then only ``http_url`` says where.
    """
    parts = urlsplit(ws_url)
    head, _, last = parts.path.rpartition("/")
    if last != "ws" or parts.query:
        raise ValueError(
            f"cannot derive the HTTP transport's URL from {ws_url!r} (its path does not "
            "end in /ws, or it has a query): pass http_url"
        )
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, f"{head}/http", "", ""))
