"""Admission before the WebSocket upgrade: who is the client, and may it connect now.

Three limits, checked in this order for every handshake:

1. the node-wide socket cap (``max_connections``): 503, or 1013 where the
   server cannot answer in HTTP;
2. the per-address socket cap (``max_connections_per_ip``): 429;
3. the per-address handshake rate (a token bucket, ``handshake_rate_per_second``
   and ``handshake_burst``): 429.

The client's address is the socket peer, unless that peer is a trusted proxy
(``trusted_proxies``): then X-Forwarded-For is read from the right, skipping
trusted proxies, and the first untrusted address is the client. Addresses
a client wrote itself (further left) are never believed.

Memory is bounded: live counts exist only for addresses holding sockets (at
most ``max_connections``), and rate buckets live in an LRU table of
``ip_table_size`` entries. Evicting a bucket only forgets that address's
recent handshakes.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from relay.limits import TokenBucket
from relay.settings import Settings


class Refusal(NamedTuple):
    """Why a handshake is refused: the HTTP status, the body, a metrics label."""

    status: int
    message: str
    reason: str


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_ip(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class Admission:
    """Counts sockets per client address and decides whether a handshake may proceed."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_total = settings.max_connections
        self._max_per_ip = settings.max_connections_per_ip
        self._rate = settings.handshake_rate_per_second
        self._burst = settings.handshake_burst
        self._table_size = max(1, settings.ip_table_size)
        self._clock = clock
        try:
            self._trusted: tuple[IPNetwork, ...] = tuple(
                ipaddress.ip_network(entry.strip(), strict=False)
                for entry in settings.trusted_proxies
            )
        except ValueError as exc:
            raise ValueError(f"trusted_proxies: {exc}") from exc
        self.total = 0
        self.per_ip: dict[str, int] = {}
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self._trusted)

    def client_ip(self, scope: Mapping[str, Any]) -> str:
        """The client's address: the socket peer, or what trusted proxies say it is."""
        client = scope.get("client")
        peer_text = str(client[0]) if client else "unknown"
        peer = _parse_ip(peer_text)
        if peer is None or not self._trusted or not self._is_trusted(peer):
            return str(peer) if peer is not None else peer_text
        forwarded: list[str] = []
        for key, value in scope.get("headers", []):
            if key == b"x-forwarded-for":
                forwarded.extend(bytes(value).decode("latin-1").split(","))
        current = peer
        for hop in reversed(forwarded):
            address = _parse_ip(hop)
            if address is None:
                break  # garbage: believe no further than the last trusted hop
            current = address
            if not self._is_trusted(address):
                break
        return str(current)

    def admit(self, ip: str) -> Refusal | None:
        """Reserve a socket for ``ip``; None when admitted, else why not.

        Every admitted socket must be given back with ``release``.
        """
        if self._max_total and self.total >= self._max_total:
            return Refusal(503, "the node is full, try again later", "node-full")
        count = self.per_ip.get(ip, 0)
        if self._max_per_ip and count >= self._max_per_ip:
            return Refusal(429, "too many connections from your address", "ip-cap")
        if self._rate > 0 and not self._bucket(ip).take():
            return Refusal(429, "too many handshakes from your address, slow down", "ip-rate")
        self.per_ip[ip] = count + 1
        self.total += 1
        return None

    def release(self, ip: str) -> None:
        """Give back a socket reserved by ``admit``."""
        self.total -= 1
        count = self.per_ip.get(ip, 0) - 1
        if count > 0:
            self.per_ip[ip] = count
        else:
            self.per_ip.pop(ip, None)

    def _bucket(self, ip: str) -> TokenBucket:
        bucket = self._buckets.get(ip)
        if bucket is None:
            bucket = TokenBucket(self._rate, self._burst, self._clock)
            self._buckets[ip] = bucket
            while len(self._buckets) > self._table_size:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(ip)
        return bucket
