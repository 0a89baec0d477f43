"""docs/security.md's table of a connection's buffers states the bounds the code has.

Every "`setting` (value)" of the section must be that setting's default, and
the fixed bounds it names must be the code's constants.
"""

from __future__ import annotations

import re
from pathlib import Path

from relay import session, ws, wsserver
from relay.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
UNITS = {"KiB": 1024, "MiB": 1024 * 1024, "s": 1}


def section() -> str:
    text = (ROOT / "docs" / "security.md").read_text()
    return text.split("## After the upgrade: every buffer of a connection", 1)[1].split("\n## ")[0]


def value(text: str) -> float:
    """``64 KiB``, ``5 s``, ``256`` (what precedes a ``;`` only) as a number."""
    number, _, unit = text.split(";")[0].strip().partition(" ")
    return float(number) * UNITS.get(unit, 1)


def test_every_setting_named_with_a_value_has_that_default() -> None:
    stated = re.findall(r"`([a-z_]+)` \(([^)]*)\)", section())
    assert len(stated) >= 20
    defaults = Settings()
    for name, shown in stated:
        assert getattr(defaults, name) == value(shown), (name, shown)
    for name in (
        "max_frame_bytes", "max_fragments", "message_timeout_seconds", "asgi_queue_messages",
        "hello_timeout_seconds", "send_buffer_bytes", "queue_bytes", "queue_messages",
        "slow_consumer_seconds", "resume_seconds", "replay_bytes", "inflight_per_session",
        "peerjs_queue_bytes", "peerjs_queue_messages", "peerjs_expire_seconds",
        "close_timeout_seconds", "rooms_per_peer", "max_connections", "broker_queue",
    ):  # fmt: skip
        assert f"`{name}`" in section(), name


def test_the_fixed_bounds_are_the_codes() -> None:
    text = section()
    assert wsserver.WRITE_HIGH_WATER == ws._HIGH_WATER == 64 * 1024
    assert text.count("64 KiB, fixed") == 2
    assert session.REPLAY_OVERHEAD == 64 and "counted with 64 bytes more" in text
    assert session.EXPLAIN_SECONDS == 1.0
    assert "at most 1 s spent delivering" in text
