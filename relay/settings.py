"""Every setting of the relay, with its default in sight.

``Settings`` is the one configuration object: ``create_app(settings)`` takes
it, and the CLI builds one from flags, ``RELAY_*`` environment variables and an
optional TOML file (in that order of precedence). Each field's ``help`` is what
``relay serve --help`` prints and what docs/configuration.md tabulates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from relay.protocol.codec import DEFAULT_ID_PATTERN, DEFAULT_ROOM_PATTERN, CodecLimits


def _setting(default: Any, help: str, *, group: str = "server") -> Any:
    return field(default=default, metadata={"help": help, "group": group})


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of one relay node. Every field has a safe default."""

    # Server
    host: str = _setting("127.0.0.1", "Interface to listen on.")
    port: int = _setting(8080, "TCP port for WebSocket and HTTP (0 picks a free one).")
    path: str = _setting("/v1/ws", "URL path of the WebSocket endpoint.")
    node_id: str = _setting("", "Name of this node in welcome.node (random when empty).")
    origins: tuple[str, ...] = _setting(
        (),
        "Allowed browser Origins (scheme://host[:port]); empty accepts any Origin.",
    )
    ws_impl: str = _setting(
        "relay",
        "WebSocket implementation: relay (the relay's own frame layer, relay/wsserver.py), "
        "or uvicorn's websockets-sansio, websockets or wsproto.",
    )
    ping_interval_seconds: float = _setting(20.0, "WebSocket keepalive ping interval.")
    ping_timeout_seconds: float = _setting(20.0, "Close a peer whose pong is this late.")
    drain_seconds: float = _setting(10.0, "On SIGTERM, time allowed to flush queues.")
    broker: str = _setting(
        "memory", "Broker backend: memory (one node) or redis://host:6379/0 (a cluster)."
    )
    log_level: str = _setting("info", "Log level: debug, info, warning or error.")

    # Limits
    max_frame_bytes: int = _setting(65536, "Largest frame a peer may send.", group="limits")
    max_depth: int = _setting(32, "Deepest nesting allowed in a payload.", group="limits")
    max_targets: int = _setting(100, "Most peers one send may address.", group="limits")
    hello_timeout_seconds: float = _setting(
        5.0, "Close a socket that sends no hello this soon.", group="limits"
    )
    rate_per_second: float = _setting(
        200.0, "Envelopes per second a session may send (refill).", group="limits"
    )
    rate_burst: int = _setting(400, "Token bucket size for the session rate.", group="limits")
    rate_strikes: int = _setting(
        100, "Rate-limited envelopes in a row before closing 4029.", group="limits"
    )
    bad_envelope_budget: int = _setting(
        10, "Bad envelopes a session may send before closing 4500.", group="limits"
    )
    rooms_per_peer: int = _setting(64, "Rooms one peer may be in.", group="limits")
    peers_per_room: int = _setting(10000, "Members one room may have.", group="limits")
    max_id_length: int = _setting(64, "Longest peer id.", group="limits")
    id_pattern: str = _setting(DEFAULT_ID_PATTERN, "Regex a peer id must match.", group="limits")
    max_room_length: int = _setting(128, "Longest room name.", group="limits")
    room_pattern: str = _setting(
        DEFAULT_ROOM_PATTERN, "Regex a room name must match.", group="limits"
    )
    queue_messages: int = _setting(
        1024, "Outbound queue per peer, in messages (4008 when full).", group="limits"
    )
    queue_bytes: int = _setting(
        1048576, "Outbound queue per peer, in bytes (4008 when full).", group="limits"
    )
    replay_messages: int = _setting(
        256,
        "Frames kept after sending, replayed on resume if the client never got them.",
        group="limits",
    )
    resume_seconds: float = _setting(
        30.0, "How long a dropped peer's id, rooms and queue wait for a resume.", group="limits"
    )

    # Authentication (docs/security.md): open mode unless a key is configured
    jwt_secret: str = _setting(
        "", "HS256 shared secret for hello tokens (empty: no HS256).", group="auth"
    )
    jwt_public_key_file: str = _setting(
        "", "PEM public key file verifying RS256/ES256 hello tokens.", group="auth"
    )
    jwt_jwks_file: str = _setting(
        "", "Local JWKS file whose keys (chosen by kid) verify hello tokens.", group="auth"
    )
    jwt_algorithms: tuple[str, ...] = _setting(
        (),
        "Accepted JWT algorithms (empty: HS256 for a secret, the key's own for a key).",
        group="auth",
    )
    jwt_audience: str = _setting("", "Required aud claim (empty: tokens with aud are refused).",
                                 group="auth")  # fmt: skip
    jwt_issuer: str = _setting("", "Required iss claim (empty: not checked).", group="auth")
    jwt_rooms_claim: str = _setting(
        "rooms", "Claim listing the rooms (globs) a peer may join and publish to.", group="auth"
    )
    jwt_leeway_seconds: float = _setting(
        0.0, "Clock skew allowed when checking exp and nbf.", group="auth"
    )

    # Server-side HTTP API
    api_keys: tuple[str, ...] = _setting(
        (), "Bearer keys of the /v1 HTTP API (empty: the API is disabled).", group="api"
    )
    api_max_body_bytes: int = _setting(65536, "Largest HTTP API request body.", group="api")

    # TLS
    certfile: str = _setting("", "PEM certificate chain: serve wss:// and https://.", group="tls")
    keyfile: str = _setting("", "PEM private key of certfile.", group="tls")

    # Admission (before the WebSocket upgrade)
    max_connections: int = _setting(
        10000, "Sockets this node holds at most (503 / 1013 beyond; 0: no cap).", group="admission"
    )
    max_connections_per_ip: int = _setting(
        256, "Sockets one client address may hold (429 beyond; 0: no cap).", group="admission"
    )
    handshake_rate_per_second: float = _setting(
        10.0, "WebSocket handshakes per second per client address (0: no limit).",
        group="admission",
    )  # fmt: skip
    handshake_burst: int = _setting(
        30, "Token bucket size for the handshake rate.", group="admission"
    )
    ip_table_size: int = _setting(
        65536, "Client addresses whose handshake rate is remembered (LRU).", group="admission"
    )
    trusted_proxies: tuple[str, ...] = _setting(
        (),
        "Proxy addresses/CIDRs whose X-Forwarded-For is believed (right-most untrusted wins).",
        group="admission",
    )

    # Cluster (the redis broker; see docs/scaling.md)
    workers: int = _setting(
        1, "Worker processes on this machine (more than 1 needs a shared broker).", group="cluster"
    )
    redis_prefix: str = _setting(
        "relay", "Prefix of every Redis key and channel, so relays can share a Redis.",
        group="cluster",
    )  # fmt: skip
    node_lease_seconds: float = _setting(
        5.0, "A node silent this long is dead: its peers and rooms are dropped.", group="cluster"
    )
    heartbeat_seconds: float = _setting(1.0, "How often a node renews its lease.", group="cluster")
    probe_seconds: float = _setting(
        2.0, "How often a node checks its own subscription end to end.", group="cluster"
    )
    broker_timeout_seconds: float = _setting(
        1.0, "Longest wait for any backplane operation before err overloaded.", group="cluster"
    )
    broker_queue: int = _setting(
        10000, "Frames waiting to be published to the backplane, at most.", group="cluster"
    )

    def codec_limits(self) -> CodecLimits:
        """The subset of limits the stateless codec enforces."""
        return CodecLimits(
            max_frame_bytes=self.max_frame_bytes,
            max_depth=self.max_depth,
            max_targets=self.max_targets,
            max_id_length=self.max_id_length,
            max_room_length=self.max_room_length,
            id_pattern=self.id_pattern,
            room_pattern=self.room_pattern,
        )

    def advertised_limits(self) -> dict[str, int | float]:
        """The limits a client is told in ``welcome.limits``."""
        return {
            "max_frame_bytes": self.max_frame_bytes,
            "max_depth": self.max_depth,
            "max_targets": self.max_targets,
            "rate_per_second": self.rate_per_second,
            "rate_burst": self.rate_burst,
            "rooms_per_peer": self.rooms_per_peer,
            "peers_per_room": self.peers_per_room,
            "queue_messages": self.queue_messages,
            "queue_bytes": self.queue_bytes,
            "resume_seconds": self.resume_seconds,
            "replay_messages": self.replay_messages,
            "hello_timeout_seconds": self.hello_timeout_seconds,
        }

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


def describe() -> list[tuple[str, str, Any, str]]:
    """``(name, group, default, help)`` for every setting, in declaration order."""
    return [
        (f.name, f.metadata["group"], f.default, f.metadata["help"])
        for f in dataclasses.fields(Settings)
    ]
