"""Every setting of the relay, with its default and what it accepts in sight.

``Settings`` is the one configuration object: ``create_app(settings)`` takes
it, and the CLI builds one from flags, ``RELAY_*`` environment variables and an
optional TOML file (in that order of precedence). Each field's ``help`` is what
``relay serve --help`` prints and what docs/configuration.md tabulates, and
its ``Rule`` says which values it accepts.

A ``Settings`` cannot hold a value its rule refuses: construction raises
``SettingError`` naming the setting, the value and what was expected, so no
code path (CLI, tests, ``--workers``) runs on a port of 70000 or a frame limit
of 0. What needs the filesystem (TLS files readable, the key matching the
certificate) is ``check_files()``, which the CLI runs once at startup; the JWT
key files are loaded, and so checked, by ``relay.auth``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from relay.protocol.codec import DEFAULT_ID_PATTERN, DEFAULT_ROOM_PATTERN, CodecLimits
from relay.protocol.envelopes import SERVER_ID
from relay.rfc6455 import MAX_REQUEST_HEAD

# The session events a webhook can carry (docs/hooks.md).
WEBHOOK_EVENTS = (
    "peer.online",
    "peer.offline",
    "room.occupied",
    "room.vacated",
    "room.joined",
    "room.left",
)


class SettingError(ValueError):
    """A setting holds a value it does not accept.

    ``name`` is the setting, ``value`` the offending value (one item of a
    list setting), ``problem`` what is wrong with it ("expected ...").
    """

    def __init__(self, name: str, value: object, problem: str) -> None:
        self.name = name
        self.value = value
        self.problem = problem
        shown = "(hidden)" if is_secret(name) else repr(value)
        super().__init__(f"{name} = {shown}: {problem}")


@dataclass(frozen=True, slots=True)
class Rule:
    """The values a setting accepts: ``expected`` for people, ``test`` for values.

    A list setting's rule applies to each of its items.
    """

    expected: str
    test: Callable[[Any], bool]


def _int_at_least(low: int) -> Rule:
    return Rule(f"an integer >= {low}", lambda value: value >= low)


def _one_of(*choices: str) -> Rule:
    return Rule("one of " + ", ".join(choices), lambda value: value in choices)


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError):
        return False
    return True


def _is_origin(text: str) -> bool:
    """``scheme://host[:port]``, as a browser sends it in ``Origin``."""
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError for a bad port
    except ValueError:
        return False
    return (
        re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", parts.scheme) is not None
        and bool(parts.hostname)
        and "@" not in parts.netloc
        and parts.path in ("", "/")
        and not parts.query
        and not parts.fragment
        and (port is None or port > 0)
    )


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return False
    return True


def _is_broker(text: str) -> bool:
    if text == "memory":
        return True
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        return False
    if parts.scheme in ("redis", "rediss"):
        return bool(parts.netloc)
    return parts.scheme == "unix" and bool(parts.path)


def _is_http_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and " " not in text


def split_host_port(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6) as its host and port; ValueError if it is not."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or (":" in host and not text.startswith("[")) or not port.isdigit():
        raise ValueError(f"{text!r} is not host:port")
    number = int(port)
    if number > 65535:
        raise ValueError(f"port {number} is over 65535")
    return host, number


def _is_listen_address(text: str) -> bool:
    if text == "":
        return True
    try:
        split_host_port(text)
    except ValueError:
        return False
    return True


def _ice_url(kind: str) -> Rule:
    """A STUN or TURN URL (RFC 7064, RFC 7065) as ``RTCPeerConnection`` takes it."""
    return Rule(
        f"a {kind}: or {kind}s: URL such as {kind}:turn.example.com:3478",
        lambda value: (
            re.fullmatch(rf"{kind}s?:[^\s/?#]+(\?transport=(udp|tcp))?", value) is not None
        ),
    )


def _is_id_pattern(pattern: str) -> bool:
    return _compiles(pattern) and re.fullmatch(pattern, SERVER_ID) is None


_ANY = Rule("", lambda value: True)  # any string
# A file setting's path is checked when the file is read: check_files, relay.auth.
_FILE = Rule("a readable file, or empty", lambda value: True)
_NOT_EMPTY = Rule("a non-empty string", lambda value: value.strip() != "")
_NO_SPACE = Rule(
    "a non-empty string without spaces", lambda value: re.fullmatch(r"\S+", value) is not None
)
_POSITIVE = Rule("a number > 0", lambda value: value > 0)
_NOT_NEGATIVE = Rule("a number >= 0", lambda value: value >= 0)
_COUNT = _int_at_least(1)
_BOOL = Rule("true or false", lambda value: True)
_OPTIONAL_HTTP_URL = Rule(
    "an http:// or https:// URL, or empty", lambda value: value == "" or _is_http_url(value)
)
_NETWORK = Rule("an IP address or CIDR such as 10.0.0.0/8", _is_network)
# An HMAC-SHA256 key at least as long as the hash (as relay.auth asks of jwt_secret).
_HMAC_KEY = Rule(
    "empty, or at least 32 bytes", lambda value: value == "" or len(value.encode()) >= 32
)


def _setting(
    default: Any,
    help: str,
    rule: Rule,
    *,
    group: str = "server",
    secret: bool = False,
) -> Any:
    return field(
        default=default, metadata={"help": help, "group": group, "rule": rule, "secret": secret}
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of one relay node. Every field has a safe default."""

    # Server
    host: str = _setting("127.0.0.1", "Interface to listen on.", _NOT_EMPTY)
    port: int = _setting(
        8080,
        "TCP port for WebSocket and HTTP (0 picks a free one).",
        Rule("an integer 0-65535", lambda value: 0 <= value <= 65535),
    )
    path: str = _setting(
        "/v1/ws",
        "URL path of the WebSocket endpoint.",
        Rule("a path starting with /", lambda value: value.startswith("/")),
    )
    node_id: str = _setting(
        "",
        "Name of this node in welcome.node (random when empty).",
        Rule(
            "at most 64 letters, digits and _.:~- (or empty)",
            lambda value: re.fullmatch(r"[A-Za-z0-9_.:~-]{0,64}", value) is not None,
        ),
    )
    origins: tuple[str, ...] = _setting(
        (),
        "Allowed browser Origins; empty accepts any Origin.",
        Rule("an origin scheme://host[:port] such as https://app.example.com", _is_origin),
    )
    ws_impl: str = _setting(
        "relay",
        "WebSocket implementation: relay is the relay's own frame layer (relay/wsserver/), "
        "the others are uvicorn's.",
        _one_of("relay", "websockets-sansio", "websockets", "wsproto"),
    )
    ping_interval_seconds: float = _setting(20.0, "WebSocket keepalive ping interval.", _POSITIVE)
    ping_timeout_seconds: float = _setting(20.0, "Close a peer whose pong is this late.", _POSITIVE)
    drain_seconds: float = _setting(
        10.0,
        "On SIGTERM, time allowed to flush queues (0: close at once).",
        _NOT_NEGATIVE,
    )
    broker: str = _setting(
        "memory",
        "Broker backend: memory for one node, a Redis URL for a cluster.",
        Rule("memory, or a redis://host:6379/0, rediss:// or unix:// URL", _is_broker),
    )
    log_level: str = _setting(
        "info",
        "Log level.",
        _one_of("debug", "info", "warning", "error"),
    )

    # Limits
    max_frame_bytes: int = _setting(
        65536,
        "Largest frame a peer may send (1009 beyond).",
        Rule("an integer >= 1024 (a hello with a token must fit)", lambda value: value >= 1024),
        group="limits",
    )
    max_fragments: int = _setting(
        256,
        "Most WebSocket frames one message may come in, empty ones included (1009 beyond; "
        "ws_impl relay only).",
        _COUNT,
        group="limits",
    )
    message_timeout_seconds: float = _setting(
        30.0,
        "Close 1008 a peer whose message (all its frames) is not complete this long after its "
        "first byte (ws_impl relay only).",
        _POSITIVE,
        group="limits",
    )
    asgi_queue_messages: int = _setting(
        32,
        "Messages read ahead for a socket served over ASGI (PeerJS sockets; every socket with "
        "uvicorn's ws_impl) before it stops being read.",
        _COUNT,
        group="limits",
    )
    max_depth: int = _setting(32, "Deepest nesting allowed in a payload.", _COUNT, group="limits")
    max_targets: int = _setting(100, "Most peers one send may address.", _COUNT, group="limits")
    hello_timeout_seconds: float = _setting(
        5.0, "Close a socket that sends no hello this soon.", _POSITIVE, group="limits"
    )
    rate_per_second: float = _setting(
        200.0, "Envelopes per second a session may send (refill).", _POSITIVE, group="limits"
    )
    rate_burst: int = _setting(
        400, "Token bucket size for the session rate.", _COUNT, group="limits"
    )
    rate_strikes: int = _setting(
        100,
        "Rate-limited envelopes in a row before closing 4029 (0: close at the first).",
        _int_at_least(0),
        group="limits",
    )
    bad_envelope_budget: int = _setting(
        10,
        "Bad envelopes a session may send before closing 4500 (0: close at the first).",
        _int_at_least(0),
        group="limits",
    )
    rooms_per_peer: int = _setting(64, "Rooms one peer may be in.", _COUNT, group="limits")
    peers_per_room: int = _setting(10000, "Members one room may have.", _COUNT, group="limits")
    max_id_length: int = _setting(64, "Longest peer id.", _COUNT, group="limits")
    id_pattern: str = _setting(
        DEFAULT_ID_PATTERN,
        "Regex a peer id must match (never @server).",
        Rule("a regular expression that does not match @server", _is_id_pattern),
        group="limits",
    )
    max_room_length: int = _setting(128, "Longest room name.", _COUNT, group="limits")
    room_pattern: str = _setting(
        DEFAULT_ROOM_PATTERN,
        "Regex a room name must match.",
        Rule("a regular expression", _compiles),
        group="limits",
    )
    queue_messages: int = _setting(
        1024, "Outbound queue per peer, in messages (overloaded when full).", _COUNT,
        group="limits",
    )  # fmt: skip
    queue_bytes: int = _setting(
        1048576,
        "Outbound queue per peer, in bytes (overloaded when full; at least max_frame_bytes).",
        _COUNT,
        group="limits",
    )
    slow_consumer_seconds: float = _setting(
        5.0,
        "Close 4008 a peer whose outbound queue has not moved this long (it stopped reading).",
        _POSITIVE,
        group="limits",
    )
    close_timeout_seconds: float = _setting(
        2.0,
        "Abort a socket whose closing handshake takes longer than this.",
        _POSITIVE,
        group="limits",
    )
    send_buffer_bytes: int = _setting(
        262144,
        "Kernel send buffer of each socket (SO_SNDBUF; Linux doubles it); keep it well under "
        "replay_bytes so a resume can replay whatever a socket swallowed.",
        _COUNT,
        group="limits",
    )
    replay_bytes: int = _setting(
        1048576,
        "Sent frames not yet acknowledged by the peer's host, kept per peer for replay on "
        "resume, in bytes (covers the socket's buffers).",
        _COUNT,
        group="limits",
    )
    resume_seconds: float = _setting(
        30.0,
        "How long a dropped peer's id, rooms and queue wait for a resume (0: no resume).",
        _NOT_NEGATIVE,
        group="limits",
    )

    # Authentication (docs/security.md): open mode unless a key is configured
    jwt_secret: str = _setting(
        "",
        "HS256 shared secret for hello tokens, 32 bytes or more (empty: no HS256).",
        _ANY,
        group="auth",
        secret=True,
    )
    jwt_public_key_file: str = _setting(
        "", "PEM public key file verifying RS256/ES256 hello tokens.", _FILE, group="auth"
    )
    jwt_jwks_file: str = _setting(
        "",
        "Local JWKS file whose keys (chosen by kid) verify hello tokens; re-read on SIGHUP.",
        _FILE,
        group="auth",
    )
    jwt_jwks_reload_seconds: float = _setting(
        30.0,
        "A token naming an unknown kid re-reads the key file at most this often.",
        _POSITIVE,
        group="auth",
    )
    jwt_algorithms: tuple[str, ...] = _setting(
        (),
        "Accepted JWT algorithms (empty: HS256 for a secret, the key's own for a key).",
        _NO_SPACE,
        group="auth",
    )
    jwt_audience: str = _setting(
        "", "Required aud claim (empty: tokens with aud are refused).", _ANY, group="auth"
    )
    jwt_issuer: str = _setting("", "Required iss claim (empty: not checked).", _ANY, group="auth")
    jwt_rooms_claim: str = _setting(
        "rooms",
        "Claim listing the rooms (globs) a peer may join and publish to.",
        _NOT_EMPTY,
        group="auth",
    )
    jwt_leeway_seconds: float = _setting(
        0.0, "Clock skew allowed when checking exp and nbf.", _NOT_NEGATIVE, group="auth"
    )

    # Server-side HTTP API
    api_keys: tuple[str, ...] = _setting(
        (),
        "Bearer keys of the /v1 HTTP API (empty: the API is disabled).",
        _NO_SPACE,
        group="api",
        secret=True,
    )
    api_max_body_bytes: int = _setting(65536, "Largest HTTP API request body.", _COUNT, group="api")
    api_rate_per_second: float = _setting(
        1000.0,
        "HTTP API requests per second per key (refill; 429 beyond; 0: no limit).",
        _NOT_NEGATIVE,
        group="api",
    )
    api_rate_burst: int = _setting(2000, "Token bucket size for the API rate.", _COUNT, group="api")

    # Admin page (docs/admin.md): off unless a password is configured
    admin_password: str = _setting(
        "",
        "Password of the /admin page (user admin): the plain value, or a bcrypt ($2b$...) or "
        "argon2 ($argon2id$...) hash; empty: /admin is 404.",
        _ANY,
        group="admin",
        secret=True,
    )
    admin_jwt: bool = _setting(
        False,
        "Log in to /admin with a JWT the hello-token keys verify (jwt_*) that carries the "
        "relay_admin claim: operate, or read.",
        _BOOL,
        group="admin",
    )
    admin_session_secret: str = _setting(
        "",
        "Key that signs /admin session cookies, the same on every node, 32 bytes or more "
        "(empty: derived from admin_password, else jwt_secret).",
        _HMAC_KEY,
        group="admin",
        secret=True,
    )
    admin_read_only: bool = _setting(
        False, "The /admin page shows, and refuses every action.", _BOOL, group="admin"
    )
    admin_session_seconds: float = _setting(
        900.0, "How long an /admin login lasts (its cookie's lifetime).", _POSITIVE, group="admin"
    )
    admin_listen: str = _setting(
        "",
        "Serve /admin only on this second listener, host:port such as 127.0.0.1:9090 (404 on "
        "port); empty: on port.",
        Rule("empty, or host:port such as 127.0.0.1:9090 ([::1]:9090)", _is_listen_address),
        group="admin",
    )

    # TLS
    certfile: str = _setting(
        "", "PEM certificate chain: serve wss:// and https://.", _FILE, group="tls"
    )
    keyfile: str = _setting("", "PEM private key of certfile.", _FILE, group="tls")

    # Admission (before the WebSocket upgrade)
    max_connections: int = _setting(
        10000,
        "Sockets this node holds at most (503 / 1013 beyond; 0: no cap).",
        _int_at_least(0),
        group="admission",
    )
    max_connections_per_ip: int = _setting(
        256,
        "Sockets one client address may hold (429 beyond; 0: no cap).",
        _int_at_least(0),
        group="admission",
    )
    handshake_rate_per_second: float = _setting(
        10.0,
        "WebSocket handshakes per second per client address (0: no limit).",
        _NOT_NEGATIVE,
        group="admission",
    )
    handshake_burst: int = _setting(
        30, "Token bucket size for the handshake rate.", _COUNT, group="admission"
    )
    ip_table_size: int = _setting(
        65536,
        "Client addresses whose handshake rate and last refusal log line are remembered (LRU).",
        _COUNT,
        group="admission",
    )
    trusted_proxies: tuple[str, ...] = _setting(
        ("127.0.0.1", "::1"),
        "Proxy addresses/CIDRs whose X-Forwarded-For is believed (right-most untrusted wins).",
        _NETWORK,
        group="admission",
    )
    admission_exempt: tuple[str, ...] = _setting(
        ("127.0.0.0/8", "::1"),
        "Client addresses/CIDRs the per-address caps and rate skip (empty: none).",
        _NETWORK,
        group="admission",
    )
    head_timeout_seconds: float = _setting(
        10.0,
        "Close a connection whose next request (head and body) is not in this soon after it "
        "opened or got its last response (408).",
        _POSITIVE,
        group="admission",
    )
    max_pending_connections: int = _setting(
        1024,
        "Connections not upgraded to a WebSocket (HTTP, keep-alive, handshakes) this node "
        "holds at most; more wait, unread, for a place (pending_wait_seconds).",
        _COUNT,
        group="admission",
    )
    pending_wait_seconds: float = _setting(
        10.0,
        "How long a connection over max_pending_connections waits, unread, for a place "
        "(503 after; 503 at once when the node has no room for more sockets).",
        _POSITIVE,
        group="admission",
    )
    max_pending_per_ip: int = _setting(
        64,
        "Connections not upgraded yet that one client address may hold (429 beyond; 0: no cap).",
        _int_at_least(0),
        group="admission",
    )
    max_header_count: int = _setting(
        100, "Header fields one request may have (431 beyond).", _COUNT, group="admission"
    )
    max_header_bytes: int = _setting(
        16384,
        "Largest request head: request line, header fields and blank line (431 beyond).",
        Rule(
            "an integer 1024-16384 (the WebSocket handshake's own limit)",
            lambda value: 1024 <= value <= MAX_REQUEST_HEAD,
        ),
        group="admission",
    )

    # Cluster (the redis broker; see docs/scaling.md)
    workers: int = _setting(
        1,
        "Worker processes on this machine (more than 1 needs a shared broker).",
        _COUNT,
        group="cluster",
    )
    redis_prefix: str = _setting(
        "relay",
        "Prefix of every Redis key and channel, so relays can share a Redis.",
        _NO_SPACE,
        group="cluster",
    )
    node_lease_seconds: float = _setting(
        5.0,
        "A node silent this long is dead: its peers and rooms are dropped.",
        _POSITIVE,
        group="cluster",
    )
    heartbeat_seconds: float = _setting(
        1.0,
        "How often a node renews its lease (less than node_lease_seconds).",
        _POSITIVE,
        group="cluster",
    )
    probe_seconds: float = _setting(
        2.0, "How often a node checks its own subscription end to end.", _POSITIVE, group="cluster"
    )
    broker_timeout_seconds: float = _setting(
        1.0,
        "Longest wait for any backplane operation before err overloaded.",
        _POSITIVE,
        group="cluster",
    )
    inflight_per_session: int = _setting(
        256,
        "Cross-node sends one session may have awaiting their answer; reading pauses beyond.",
        _COUNT,
        group="cluster",
    )
    broker_queue: int = _setting(
        10000, "Frames waiting to be published to the backplane, at most.", _COUNT, group="cluster"
    )

    # WebRTC: what GET /v1/ice-servers hands browsers (docs/webrtc.md)
    stun_urls: tuple[str, ...] = _setting(
        (),
        "STUN URLs listed by /v1/ice-servers, e.g. stun:turn.example.com:3478.",
        _ice_url("stun"),
        group="webrtc",
    )
    turn_urls: tuple[str, ...] = _setting(
        (),
        "TURN URLs listed by /v1/ice-servers with time-limited credentials (needs turn_secret).",
        _ice_url("turn"),
        group="webrtc",
    )
    turn_secret: str = _setting(
        "",
        "coturn static-auth-secret (use-auth-secret) signing TURN credentials.",
        _ANY,
        group="webrtc",
        secret=True,
    )
    turn_ttl_seconds: float = _setting(
        14400.0, "Lifetime of the TURN credentials /v1/ice-servers issues.", _POSITIVE,
        group="webrtc",
    )  # fmt: skip

    # PeerJS-compatible endpoint (docs/peerjs.md)
    peerjs_path: str = _setting(
        "/peerjs",
        "Path of the PeerJS server protocol (empty: turned off).",
        Rule(
            "empty, or a path such as /peerjs (no trailing slash, no braces)",
            lambda value: value == "" or re.fullmatch(r"(/[^/{}\s]+)+", value) is not None,
        ),
        group="peerjs",
    )
    peerjs_key: str = _setting(
        "peerjs",
        "The key PeerJS clients must give.",
        Rule(
            "a non-empty string without spaces, /, ? or #",
            lambda value: re.fullmatch(r"[^/?#\s]+", value) is not None,
        ),
        group="peerjs",
    )
    peerjs_discovery: bool = _setting(
        False,
        "Serve GET {peerjs_path}/{key}/peers: every PeerJS id, to anyone.",
        _BOOL,
        group="peerjs",
    )
    peerjs_expire_seconds: float = _setting(
        5.0,
        "How long messages to a PeerJS id nobody holds wait before EXPIRE.",
        _POSITIVE,
        group="peerjs",
    )
    peerjs_queue_messages: int = _setting(
        32, "Messages one PeerJS peer may have waiting for absent peers.", _COUNT, group="peerjs"
    )
    peerjs_queue_bytes: int = _setting(
        65536, "Bytes one PeerJS peer may have waiting for absent peers.", _COUNT, group="peerjs"
    )
    peerjs_heartbeat_timeout_seconds: float = _setting(
        90.0,
        "Close a PeerJS socket silent this long (clients send HEARTBEAT every 5 s).",
        _POSITIVE,
        group="peerjs",
    )

    # The HTTP fallback transport (docs/protocol-http.md)
    http_path: str = _setting(
        "/v1/http",
        "Path of the HTTP fallback transport, for clients whose WebSockets are blocked "
        "(empty: turned off).",
        Rule(
            "empty, or a path such as /v1/http (no trailing slash, no braces)",
            lambda value: value == "" or re.fullmatch(r"(/[^/{}\s]+)+", value) is not None,
        ),
        group="http",
    )
    http_body_bytes: int = _setting(
        1048576,
        "Largest body of an HTTP-transport send, and most bytes one poll answers with (413 "
        "beyond; at least max_frame_bytes).",
        _COUNT,
        group="http",
    )
    http_buffer_bytes: int = _setting(
        262144,
        "Envelopes an HTTP-transport client has not reported received, kept per session, in "
        "bytes; past it, frames wait in the peer's queue as behind a full socket.",
        _COUNT,
        group="http",
    )
    http_keepalive_seconds: float = _setting(
        15.0,
        "Send a keepalive record on an idle HTTP stream this often (under proxies' idle "
        "timeouts; clients answer each).",
        _POSITIVE,
        group="http",
    )
    http_poll_seconds: float = _setting(
        20.0,
        "How long an HTTP long-poll is held when nothing waits (under proxies' timeouts).",
        _POSITIVE,
        group="http",
    )
    http_idle_seconds: float = _setting(
        45.0,
        "End an HTTP session (as a dropped socket: resumable) after this long without a request "
        "of its client (more than http_keepalive_seconds and http_poll_seconds).",
        _POSITIVE,
        group="http",
    )
    http_forward_seconds: float = _setting(
        5.0,
        "How long a node waits for the node holding an HTTP session to take a forwarded send "
        "(503 after; the client sends it again).",
        _POSITIVE,
        group="http",
    )

    # Webhooks: session events POSTed to a backend (docs/hooks.md)
    webhook_urls: tuple[str, ...] = _setting(
        (),
        "URLs each session event is POSTed to, signed, in batches (needs webhook_secret).",
        Rule("an http:// or https:// URL", _is_http_url),
        group="webhooks",
    )
    webhook_secret: str = _setting(
        "",
        "Key of the Relay-Signature HMAC-SHA256 that signs every webhook request.",
        _HMAC_KEY,
        group="webhooks",
        secret=True,
    )
    webhook_previous_secret: str = _setting(
        "",
        "While rotating webhook_secret: the old key, which signs every request as well.",
        _HMAC_KEY,
        group="webhooks",
        secret=True,
    )
    webhook_events: tuple[str, ...] = _setting(
        WEBHOOK_EVENTS,
        "Event types sent to the webhook URLs.",
        _one_of(*WEBHOOK_EVENTS),
        group="webhooks",
    )
    webhook_retry_seconds: float = _setting(
        300.0,
        "How long an event is retried after it happened; older ones are dropped (counted).",
        _POSITIVE,
        group="webhooks",
    )
    webhook_backoff_base_seconds: float = _setting(
        0.5,
        "First wait before retrying a failed webhook request; it doubles at each failure.",
        _POSITIVE,
        group="webhooks",
    )
    webhook_backoff_cap_seconds: float = _setting(
        30.0,
        "Longest wait between two tries of a webhook request.",
        _POSITIVE,
        group="webhooks",
    )
    webhook_batch_seconds: float = _setting(
        0.25,
        "How long an event waits for others to share its webhook request (0: no wait).",
        _NOT_NEGATIVE,
        group="webhooks",
    )
    webhook_batch_events: int = _setting(
        20, "Most events in one webhook request; a full batch goes at once.", _COUNT,
        group="webhooks",
    )  # fmt: skip
    webhook_buffer_events: int = _setting(
        10000,
        "Events waiting per webhook URL, besides the request in flight; more are dropped "
        "(counted).",
        _COUNT,
        group="webhooks",
    )
    webhook_timeout_seconds: float = _setting(
        10.0,
        "Longest a webhook request may take, connecting included (then it is retried).",
        _POSITIVE,
        group="webhooks",
    )
    webhook_drain_seconds: float = _setting(
        5.0,
        "On shutdown, time allowed to deliver the events still held (0: drop them).",
        _NOT_NEGATIVE,
        group="webhooks",
    )

    # Proxies: the backend admits hellos and joins and answers RPC (docs/hooks.md)
    connect_proxy_url: str = _setting(
        "",
        "URL asked, signed, to admit each fresh hello (needs webhook_secret).",
        _OPTIONAL_HTTP_URL,
        group="proxy",
    )
    join_proxy_url: str = _setting(
        "",
        "URL asked, signed, to admit each join (and pub) no rooms claim or grant lists "
        "(needs webhook_secret).",
        _OPTIONAL_HTTP_URL,
        group="proxy",
    )
    rpc_proxy_url: str = _setting(
        "",
        "URL each send to @backend is POSTed to, signed; its answer is the reply "
        "(needs webhook_secret).",
        _OPTIONAL_HTTP_URL,
        group="proxy",
    )
    rpc_format: str = _setting(
        "msgpack",
        "Body of RPC requests and answers: msgpack (payloads exact) or json.",
        _one_of("msgpack", "json"),
        group="proxy",
    )
    proxy_timeout_seconds: float = _setting(
        1.0,
        "Longest a proxy or RPC request may take, connecting included (then: overloaded).",
        _POSITIVE,
        group="proxy",
    )
    proxy_headers: tuple[str, ...] = _setting(
        (),
        "Request headers of the WebSocket upgrade passed to the connect proxy, e.g. Cookie.",
        Rule(
            "an HTTP header name",
            lambda value: re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value) is not None,
        ),
        group="proxy",
    )
    proxy_inflight: int = _setting(
        256,
        "Proxy and RPC requests one node may have in flight; more are refused overloaded.",
        _COUNT,
        group="proxy",
    )
    proxy_inflight_per_session: int = _setting(
        4,
        "RPC requests one session may have in flight; more are refused overloaded.",
        _COUNT,
        group="proxy",
    )
    proxy_meta_bytes: int = _setting(
        4096,
        "Largest meta (as JSON) a connect proxy may return for a session.",
        _COUNT,
        group="proxy",
    )

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            _check(item.name, getattr(self, item.name))
        if bool(self.certfile) != bool(self.keyfile):
            given, missing = ("certfile", "keyfile") if self.certfile else ("keyfile", "certfile")
            raise SettingError(given, getattr(self, given), f"TLS needs {missing} as well")
        if self.queue_bytes < self.max_frame_bytes:
            raise SettingError(
                "queue_bytes",
                self.queue_bytes,
                f"expected at least max_frame_bytes ({self.max_frame_bytes})",
            )
        if self.http_body_bytes < self.max_frame_bytes:
            raise SettingError(
                "http_body_bytes",
                self.http_body_bytes,
                f"expected at least max_frame_bytes ({self.max_frame_bytes})",
            )
        longest_wait = max(self.http_keepalive_seconds, self.http_poll_seconds)
        if self.http_idle_seconds <= longest_wait:
            raise SettingError(
                "http_idle_seconds",
                self.http_idle_seconds,
                f"expected more than http_keepalive_seconds and http_poll_seconds "
                f"({longest_wait:g})",
            )
        if self.heartbeat_seconds >= self.node_lease_seconds:
            raise SettingError(
                "heartbeat_seconds",
                self.heartbeat_seconds,
                f"expected less than node_lease_seconds ({self.node_lease_seconds:g})",
            )
        if self.turn_urls and not self.turn_secret:
            raise SettingError(
                "turn_urls",
                self.turn_urls[0],
                "TURN URLs need turn_secret (coturn's static-auth-secret)",
            )
        if self.webhook_urls and not self.webhook_secret:
            raise SettingError(
                "webhook_urls",
                self.webhook_urls[0],
                "webhook URLs need webhook_secret (it signs every request)",
            )
        for name in ("connect_proxy_url", "join_proxy_url", "rpc_proxy_url"):
            if getattr(self, name) and not self.webhook_secret:
                raise SettingError(
                    name,
                    getattr(self, name),
                    "proxy URLs need webhook_secret (it signs every request)",
                )
        if self.webhook_urls and not self.webhook_events:
            raise SettingError("webhook_events", "", "webhook URLs need at least one event type")
        if self.webhook_backoff_cap_seconds < self.webhook_backoff_base_seconds:
            raise SettingError(
                "webhook_backoff_cap_seconds",
                self.webhook_backoff_cap_seconds,
                f"expected at least webhook_backoff_base_seconds "
                f"({self.webhook_backoff_base_seconds:g})",
            )
        if self.admin_jwt and not (
            self.jwt_secret or self.jwt_public_key_file or self.jwt_jwks_file
        ):
            raise SettingError(
                "admin_jwt", True, "admin JWTs need a JWT key (jwt_secret, jwt_public_key_file "
                "or jwt_jwks_file)",
            )  # fmt: skip
        if self.admin_jwt and not (
            self.admin_session_secret or self.admin_password or self.jwt_secret
        ):
            raise SettingError(
                "admin_jwt", True, "with a public JWT key, admin JWTs need admin_session_secret "
                "(or admin_password) to sign the session cookies",
            )  # fmt: skip
        if self.admin_listen and not (self.admin_password or self.admin_jwt):
            raise SettingError(
                "admin_listen", self.admin_listen,
                "an admin listener needs the page on (admin_password or admin_jwt)",
            )  # fmt: skip
        if self.admin_listen and 0 < self.port == split_host_port(self.admin_listen)[1]:
            raise SettingError(
                "admin_listen", self.admin_listen, f"expected a port other than port ({self.port})"
            )
        if self.workers > 1 and self.broker == "memory":
            raise SettingError(
                "workers",
                self.workers,
                "more than 1 needs a shared broker such as redis://host:6379/0 "
                "(with the memory broker each worker would be a separate relay)",
            )

    def check_files(self) -> None:
        """Check what needs the filesystem: the TLS files readable and matching.

        Raises ``SettingError``. The CLI calls this once, before serving.
        """
        for name in ("certfile", "keyfile"):
            path = getattr(self, name)
            if path:
                _check_readable(name, path)
        if self.certfile:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                context.load_verify_locations(cafile=self.certfile)
            except (ssl.SSLError, ValueError) as exc:
                raise SettingError(
                    "certfile", self.certfile, f"expected a PEM certificate chain ({exc})"
                ) from None
            try:
                # An encrypted key would make OpenSSL prompt on the terminal.
                context.load_cert_chain(self.certfile, self.keyfile, password=lambda: b"")
            except (ssl.SSLError, ValueError) as exc:
                raise SettingError(
                    "keyfile",
                    self.keyfile,
                    f"expected the unencrypted PEM private key of certfile {self.certfile} ({exc})",
                ) from None

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
            "max_fragments": self.max_fragments,
            "message_timeout_seconds": self.message_timeout_seconds,
            "max_depth": self.max_depth,
            "max_targets": self.max_targets,
            "rate_per_second": self.rate_per_second,
            "rate_burst": self.rate_burst,
            "rooms_per_peer": self.rooms_per_peer,
            "peers_per_room": self.peers_per_room,
            "queue_messages": self.queue_messages,
            "queue_bytes": self.queue_bytes,
            "resume_seconds": self.resume_seconds,
            "replay_bytes": self.replay_bytes,
            "hello_timeout_seconds": self.hello_timeout_seconds,
        }

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


class SettingInfo(NamedTuple):
    """One setting as ``relay serve --help`` and ``relay config`` show it."""

    name: str
    group: str
    default: Any
    help: str
    accepts: str
    secret: bool


_FIELDS = {item.name: item for item in dataclasses.fields(Settings)}


def describe() -> list[SettingInfo]:
    """Every setting, in declaration order."""
    return [
        SettingInfo(
            item.name,
            item.metadata["group"],
            item.default,
            item.metadata["help"],
            item.metadata["rule"].expected,
            item.metadata["secret"],
        )
        for item in _FIELDS.values()
    ]


def is_secret(name: str) -> bool:
    """Whether setting ``name`` holds a secret, never to be printed."""
    item = _FIELDS.get(name)
    return item is not None and bool(item.metadata["secret"])


def parse(name: str, value: object) -> Any:
    """``value`` as setting ``name``'s type, or ``SettingError``.

    ``value`` is text (a flag or an environment variable; for a list setting,
    one item) or a TOML value (for a list setting, an array). Only the type is
    checked here; ``Settings`` checks the rule.
    """
    item = _FIELDS[name]
    kind = type(item.default)
    expected = f"expected {item.metadata['rule'].expected or 'a string'}"
    if kind is tuple:
        if isinstance(value, str):
            return value
        if isinstance(value, list | tuple) and all(isinstance(entry, str) for entry in value):
            return tuple(value)
        raise SettingError(name, value, "expected an array of strings")
    if isinstance(value, str) and kind is bool:
        flag = _BOOLEANS.get(value.strip().lower())
        if flag is None:
            raise SettingError(name, value, expected)
        return flag
    if isinstance(value, str) and kind is not str:
        try:
            number: int | float = int(value) if kind is int else float(value)
        except ValueError:
            raise SettingError(name, value, expected) from None
        value = number
    if not _has_kind(kind, value):
        raise SettingError(name, value, expected)
    return float(value) if kind is float else value  # type: ignore[arg-type]


_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True,
             "false": False, "0": False, "no": False, "off": False}  # fmt: skip


def _check_readable(name: str, path: str) -> None:
    """``SettingError`` unless setting ``name``'s file ``path`` can be read."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise SettingError(name, path, f"expected a readable file ({exc.strerror})") from None


def _has_kind(kind: type, value: object) -> bool:
    if isinstance(value, bool) or kind is bool:
        return isinstance(value, bool) and kind is bool
    if kind is float:
        return isinstance(value, int | float) and math.isfinite(value)
    if kind is tuple:
        return isinstance(value, tuple) and all(isinstance(entry, str) for entry in value)
    return isinstance(value, kind)


def _check(name: str, value: object) -> None:
    item = _FIELDS[name]
    kind = type(item.default)
    rule: Rule = item.metadata["rule"]
    if not _has_kind(kind, value):
        problem = (
            "expected a tuple of strings"
            if kind is tuple
            else f"expected {rule.expected or 'a string'}"
        )
        raise SettingError(name, value, problem)
    for entry in value if isinstance(value, tuple) else (value,):
        if not rule.test(entry):
            raise SettingError(name, entry, f"expected {rule.expected}")
