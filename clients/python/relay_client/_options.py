"""The settings of one peer: the keyword arguments of :func:`relay_client.connect`, checked once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ssl import SSLContext

from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

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

    def __post_init__(self) -> None:
        try:
            parse_uri(self.url)
        except InvalidURI as exc:
            raise ValueError(f"invalid relay URL {self.url!r}: {exc}") from None
        if self.buffer_size < 0 or self.inbox_size < 1:
            raise ValueError("buffer_size must be >= 0 and inbox_size >= 1")
        if self.backoff_base <= 0 or self.backoff_max < self.backoff_base:
            raise ValueError("need 0 < backoff_base <= backoff_max")
