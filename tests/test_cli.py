"""`relay serve` settings: flags over environment over TOML file over defaults."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from relay.cli import main
from tests.peers import join_as

pytestmark = pytest.mark.anyio


@pytest.fixture
def configured_relay(tmp_path: Path) -> Iterator[str]:
    config = tmp_path / "relay.toml"
    config.write_text("rate_per_second = 5.0\nrate_burst = 6\nmax_depth = 7\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--port", "0", "--config", str(config),
         "--max-depth", "9"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RELAY_RATE_BURST": "77", "RELAY_LOG_LEVEL": "warning"},
    )  # fmt: skip
    assert process.stderr is not None
    try:
        for line in process.stderr:
            found = re.search(r"relay ready on (ws://\S+)", line)
            if found:
                yield found.group(1)
                break
        else:
            pytest.fail("relay did not start")
    finally:
        process.terminate()
        process.wait()
        process.stderr.close()


async def test_flag_beats_env_beats_file_beats_default(configured_relay: str) -> None:
    peer = await join_as(configured_relay, "alice")
    limits = peer.welcome["limits"]
    assert limits["max_depth"] == 9  # flag over file
    assert limits["rate_burst"] == 77  # environment over file
    assert limits["rate_per_second"] == 5.0  # file over default
    assert limits["queue_messages"] == 1024  # default
    await peer.close()


def test_unknown_settings_in_the_file_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text("rate_per_secnod = 5\n")
    result = CliRunner().invoke(main, ["serve", "--config", str(config)])
    assert result.exit_code == 2
    assert "unknown settings: rate_per_secnod" in result.output


def test_a_bad_value_is_a_usage_error_not_a_traceback() -> None:
    result = CliRunner().invoke(main, ["serve", "--port", "eighty"])
    assert result.exit_code == 2
    assert "'eighty' is not a valid integer" in result.output
