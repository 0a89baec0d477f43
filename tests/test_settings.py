"""``Settings`` refuses every value outside its rule, naming the setting; defaults pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relay.settings import SettingError, Settings, describe, is_secret, parse
from tests.test_tls import make_certificate


def test_every_default_passes_its_own_rule() -> None:
    Settings()
    for info in describe():
        Settings(**{info.name: info.default})


@pytest.mark.parametrize(
    ("changes", "name", "expected"),
    [
        ({"port": 70000}, "port", "an integer 0-65535"),
        ({"port": -1}, "port", "an integer 0-65535"),
        ({"host": " "}, "host", "a non-empty string"),
        ({"path": "v1/ws"}, "path", "a path starting with /"),
        ({"node_id": "a b"}, "node_id", "at most 64 letters"),
        ({"origins": ("example.com",)}, "origins", "scheme://host[:port]"),
        ({"origins": ("https://a.example/path",)}, "origins", "scheme://host[:port]"),
        ({"origins": ("https://a.example:99999",)}, "origins", "scheme://host[:port]"),
        ({"origins": ("https://user@a.example",)}, "origins", "scheme://host[:port]"),
        ({"ws_impl": "bad"}, "ws_impl", "one of relay, websockets-sansio"),
        ({"log_level": "loud"}, "log_level", "one of debug, info"),
        ({"log_level": "INFO"}, "log_level", "one of debug, info"),
        ({"broker": "redis:/x"}, "broker", "memory, or a redis://"),
        ({"broker": "postgres://db"}, "broker", "memory, or a redis://"),
        ({"ping_interval_seconds": 0}, "ping_interval_seconds", "a number > 0"),
        ({"drain_seconds": -1}, "drain_seconds", "a number >= 0"),
        ({"max_frame_bytes": 0}, "max_frame_bytes", "an integer >= 1024"),
        ({"max_depth": 0}, "max_depth", "an integer >= 1"),
        ({"rate_per_second": -5}, "rate_per_second", "a number > 0"),
        ({"rate_per_second": float("nan")}, "rate_per_second", "a number > 0"),
        ({"rate_per_second": float("inf")}, "rate_per_second", "a number > 0"),
        ({"rate_burst": 0}, "rate_burst", "an integer >= 1"),
        ({"rate_strikes": -1}, "rate_strikes", "an integer >= 0"),
        ({"id_pattern": "["}, "id_pattern", "a regular expression"),
        ({"id_pattern": "@?[a-z]+"}, "id_pattern", "does not match @server"),
        ({"room_pattern": "(("}, "room_pattern", "a regular expression"),
        ({"queue_bytes": 1000}, "queue_bytes", "at least max_frame_bytes"),
        ({"resume_seconds": -3}, "resume_seconds", "a number >= 0"),
        ({"jwt_rooms_claim": ""}, "jwt_rooms_claim", "a non-empty string"),
        ({"jwt_jwks_reload_seconds": 0}, "jwt_jwks_reload_seconds", "a number > 0"),
        ({"api_keys": ("two words",)}, "api_keys", "without spaces"),
        ({"api_rate_per_second": -1}, "api_rate_per_second", "a number >= 0"),
        ({"certfile": "cert.pem"}, "certfile", "TLS needs keyfile"),
        ({"keyfile": "key.pem"}, "keyfile", "TLS needs certfile"),
        ({"trusted_proxies": ("10.0.0.0/33",)}, "trusted_proxies", "an IP address or CIDR"),
        ({"admission_exempt": ("localhost",)}, "admission_exempt", "an IP address or CIDR"),
        ({"max_connections": -1}, "max_connections", "an integer >= 0"),
        ({"handshake_burst": 0}, "handshake_burst", "an integer >= 1"),
        ({"head_timeout_seconds": 0}, "head_timeout_seconds", "a number > 0"),
        ({"max_pending_connections": 0}, "max_pending_connections", "an integer >= 1"),
        ({"max_pending_per_ip": -1}, "max_pending_per_ip", "an integer >= 0"),
        ({"max_header_count": 0}, "max_header_count", "an integer >= 1"),
        ({"max_header_bytes": 1023}, "max_header_bytes", "an integer 1024-16384"),
        ({"max_header_bytes": 16385}, "max_header_bytes", "an integer 1024-16384"),
        ({"workers": 0}, "workers", "an integer >= 1"),
        ({"workers": 2}, "workers", "needs a shared broker"),
        ({"redis_prefix": ""}, "redis_prefix", "without spaces"),
        ({"heartbeat_seconds": 5.0}, "heartbeat_seconds", "less than node_lease_seconds"),
        ({"port": "80"}, "port", "an integer 0-65535"),  # wrong type in code
        ({"port": True}, "port", "an integer 0-65535"),
        ({"origins": "https://a.example"}, "origins", "a tuple of strings"),
        ({"stun_urls": ("turn:a.example",)}, "stun_urls", "a stun: or stuns: URL"),
        ({"turn_urls": ("https://a.example",)}, "turn_urls", "a turn: or turns: URL"),
        ({"turn_urls": ("turn:a.example?transport=sctp",)}, "turn_urls", "a turn: or turns: URL"),
        ({"turn_urls": ("turn:a.example",)}, "turn_urls", "need turn_secret"),
        ({"turn_ttl_seconds": 0}, "turn_ttl_seconds", "a number > 0"),
        ({"peerjs_path": "/"}, "peerjs_path", "empty, or a path such as /peerjs"),
        ({"peerjs_path": "/peerjs/"}, "peerjs_path", "no trailing slash"),
        ({"peerjs_path": "/{key}"}, "peerjs_path", "no braces"),
        ({"peerjs_key": "a/b"}, "peerjs_key", "without spaces, /, ? or #"),
        ({"peerjs_discovery": 1}, "peerjs_discovery", "true or false"),
        ({"peerjs_expire_seconds": 0}, "peerjs_expire_seconds", "a number > 0"),
        ({"peerjs_queue_messages": 0}, "peerjs_queue_messages", "an integer >= 1"),
        ({"peerjs_heartbeat_timeout_seconds": -1}, "peerjs_heartbeat_timeout_seconds", "> 0"),
    ],
)
def test_a_value_outside_its_rule_is_refused(
    changes: dict[str, Any], name: str, expected: str
) -> None:
    with pytest.raises(SettingError) as refused:
        Settings(**changes)
    assert refused.value.name == name
    assert expected in refused.value.problem


@pytest.mark.parametrize(
    "changes",
    [
        {"port": 0},
        {"port": 65535},
        {"origins": ("https://app.example.com", "http://localhost:3000", "HTTPS://A.EXAMPLE/")},
        {"origins": ("chrome-extension://abcdef",)},
        {"broker": "redis://:secret@10.0.0.5:6380/2"},
        {"broker": "rediss://redis.internal"},
        {"broker": "unix:///run/redis.sock"},
        {"trusted_proxies": (), "admission_exempt": ()},
        {"trusted_proxies": ("10.0.0.0/8", "fd00::/8", "192.168.1.7")},
        {"drain_seconds": 0, "resume_seconds": 0, "rate_strikes": 0},
        {"max_connections": 0, "max_connections_per_ip": 0, "handshake_rate_per_second": 0},
        {"api_rate_per_second": 0},
        {"rate_per_second": 1},  # an int for a float setting
        {"workers": 4, "broker": "redis://127.0.0.1:6379/0"},
        {"stun_urls": ("stun:127.0.0.1:3478", "stuns:turn.example.com")},
        {
            "turn_urls": ("turn:[::1]:3478?transport=tcp", "turns:t.example:5349"),
            "turn_secret": "s",
        },
        {"peerjs_path": "", "peerjs_key": "app-key.1", "peerjs_discovery": True},
        {"peerjs_path": "/apps/signal"},
    ],
)
def test_values_inside_their_rules_are_accepted(changes: dict[str, Any]) -> None:
    Settings(**changes)


def test_secrets_never_appear_in_the_error() -> None:
    with pytest.raises(SettingError) as refused:
        Settings(api_keys=("sekrit with-space",))
    assert "sekrit" not in str(refused.value)
    assert "(hidden)" in str(refused.value)
    assert is_secret("turn_secret")


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("port", "8080", 8080),
        ("port", " 9000 ", 9000),
        ("rate_per_second", "2.5", 2.5),
        ("rate_per_second", 5, 5.0),  # a TOML integer for a number
        ("origins", "https://a.example", "https://a.example"),  # one item of a list
        ("origins", ["https://a.example"], ("https://a.example",)),  # a TOML array
        ("host", "0.0.0.0", "0.0.0.0"),
        ("peerjs_discovery", "true", True),
        ("peerjs_discovery", "Off", False),
        ("peerjs_discovery", False, False),  # a TOML boolean
    ],
)
def test_parse_converts_text_and_toml_values(name: str, text: object, value: object) -> None:
    assert parse(name, text) == value


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("port", "8113x"),
        ("port", "80.0"),
        ("port", 80.5),  # a TOML float for an integer
        ("port", True),
        ("rate_per_second", "fast"),
        ("rate_per_second", "nan"),
        ("host", 5),
        ("origins", [1]),
        ("origins", {"a": 1}),
        ("peerjs_discovery", "maybe"),
        ("peerjs_discovery", 1),
    ],
)
def test_parse_refuses_the_wrong_type(name: str, value: object) -> None:
    with pytest.raises(SettingError) as refused:
        parse(name, value)
    assert refused.value.name == name
    assert refused.value.problem.startswith("expected ")


def test_check_files_wants_readable_matching_tls_files(tmp_path: Path) -> None:
    certfile, keyfile = make_certificate(tmp_path)
    Settings(certfile=certfile, keyfile=keyfile).check_files()
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = make_certificate(other)
    with pytest.raises(SettingError, match="private key of certfile") as refused:
        Settings(certfile=certfile, keyfile=other_key).check_files()
    assert refused.value.name == "keyfile"
    with pytest.raises(SettingError, match="readable file") as refused:
        Settings(certfile=str(tmp_path / "missing.pem"), keyfile=keyfile).check_files()
    assert refused.value.name == "certfile"
    with pytest.raises(SettingError, match="PEM certificate") as refused:
        Settings(certfile=keyfile, keyfile=keyfile).check_files()
    assert refused.value.name == "certfile"
