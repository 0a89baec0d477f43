"""Admission before the WebSocket upgrade: who is the client, and may it connect now.

Three limits, checked in this order for every handshake:

1. the node-wide socket cap (``max_connections``): 503, or 1013 where the
   server cannot answer in HTTP;
2. the per-address socket cap (``max_connections_per_ip``): 429;
3. the per-address handshake rate (a token bucket, ``handshake_rate_per_second``
   and ``handshake_burst``): 429.

The client's address is the socket peer, unless that peer is a trusted proxy
(``trusted_proxies``, loopback by default, as uvicorn's
``forwarded_allow_ips``): then X-Forwarded-For is read from the right,
skipping trusted proxies, and the first untrusted address is the client.
Addresses a client wrote itself (further left) are never believed.

Clients in ``admission_exempt`` (loopback by default: a test suite, a load
test or a health check on the same machine) skip limits 2 and 3; their
sockets still count toward the node-wide cap. Behind a local proxy the
client is the forwarded address, so the exemption covers local clients only.

Every refusal carries ``retry_after``, the seconds the client should wait
(the ``Retry-After`` header): for the handshake rate, until the address's
bucket holds a token again; for a full node or address, a fixed
``FULL_RETRY_AFTER`` since nobody can know when a socket will close.

Memory is bounded: live counts exist only for addresses holding sockets (at
most ``max_connections``), and rate buckets live in an LRU table of
``ip_table_size`` entries. Evicting a bucket only forgets that address's
recent handshakes.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from relay.limits import TokenBucket
from relay.settings import Settings

# Retry-After for a full node or address: a socket frees when some client
# leaves, which nobody can predict, so a short fixed wait.
FULL_RETRY_AFTER = 5


class Refusal(NamedTuple):
    """Why a handshake is refused, and how many seconds to wait (``Retry-After``).

    ``status`` and ``message`` are the HTTP answer, ``reason`` the metrics label.
    """

    status: int
    message: str
    reason: str
    retry_after: int = FULL_RETRY_AFTER


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=4096)  # see _parse_ip
def canonical_ip(text: str) -> str:
    """``text`` as the address the caps count (IPv4-mapped IPv6 as IPv4), or as it is."""
    address = _parse_ip(text)
    return str(address) if address is not None else text


class AddressSet:
    """Addresses/CIDRs from a setting (``admission_exempt``, ``trusted_proxies``)."""

    def __init__(self, entries: tuple[str, ...]) -> None:
        # Settings has checked that every entry parses.
        self._entries = entries
        self._networks = _networks(entries)
        self._holds = functools.lru_cache(maxsize=4096)(self._lookup)  # see _parse_ip

    def __reduce__(self) -> tuple[type[AddressSet], tuple[tuple[str, ...]]]:
        # Workers get it pickled (``relay serve --workers``); the cache is not sent.
        return AddressSet, (self._entries,)

    def __contains__(self, ip: object) -> bool:
        if not self._networks or not isinstance(ip, str):
            return False
        return self._holds(ip)

    def _lookup(self, ip: str) -> bool:
        address = _parse_ip(ip)
        return address is not None and any(address in network for network in self._networks)


# Every connection parses its address several times (the pending caps, the
# trusted proxies, the exemptions), and a reconnect storm brings thousands a
# second from few addresses: parsing is worth remembering, in a bounded table.
@functools.lru_cache(maxsize=4096)
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
        # Settings has checked that every entry parses.
        self._trusted = AddressSet(settings.trusted_proxies)
        self._exempt = AddressSet(settings.admission_exempt)
        self.total = 0
        self.per_ip: dict[str, int] = {}
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def is_exempt(self, ip: str) -> bool:
        """Whether ``ip`` skips the per-address caps (``admission_exempt``)."""
        return ip in self._exempt

    def client_ip(self, scope: Mapping[str, Any]) -> str:
        """The client's address: the socket peer, or what trusted proxies say it is."""
        client = scope.get("client")
        peer_text = str(client[0]) if client else "unknown"
        peer = _parse_ip(peer_text)
        if peer is None or peer_text not in self._trusted:
            return canonical_ip(peer_text)
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
            if hop not in self._trusted:
                break
        return str(current)

    def admit(self, ip: str) -> Refusal | None:
        """Reserve a socket for ``ip``; None when admitted, else why not.

        Every admitted socket must be given back with ``release``. An exempt
        address is admitted without per-address counting, but its sockets
        count toward ``max_connections``.
        """
        if self._max_total and self.total >= self._max_total:
            return Refusal(503, "the node is full, try again later", "node-full")
        if self.is_exempt(ip):
            self.total += 1
            return None
        count = self.per_ip.get(ip, 0)
        if self._max_per_ip and count >= self._max_per_ip:
            return Refusal(429, "too many connections from your address", "ip-cap")
        if self._rate > 0:
            bucket = self._bucket(ip)
            if not bucket.take():
                wait = max(1, math.ceil(bucket.seconds_until_token()))
                return Refusal(
                    429, "too many handshakes from your address, slow down", "ip-rate", wait
                )
        self.per_ip[ip] = count + 1
        self.total += 1
        return None

    def release(self, ip: str) -> None:
        """Give back a socket reserved by ``admit``."""
        self.total -= 1
        if self.is_exempt(ip):
            return
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


def _networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)
