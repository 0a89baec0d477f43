"""The docs say what the code does: the settings table and the README example."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from relay.cli import main
from relay.settings import describe
from tests.conftest import RunningRelay

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_doc_holds_the_generated_table() -> None:
    table = CliRunner().invoke(main, ["config", "--markdown"]).output
    assert table.strip() in (ROOT / "docs" / "configuration.md").read_text()
    for name, *_ in describe():
        assert f"| {name} |" in table


def test_serve_help_lists_every_setting() -> None:
    text = CliRunner().invoke(main, ["serve", "--help"], terminal_width=200).output
    for name, *_ in describe():
        assert "--" + name.replace("_", "-") in text


@pytest.mark.anyio
async def test_the_readme_python_example_runs(relay: RunningRelay) -> None:
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S)
    assert example is not None
    code = example.group(1).replace("ws://127.0.0.1:8080/v1/ws", relay.url)
    import anyio

    result = await anyio.run_process(
        [sys.executable, "-c", code], check=False, stderr=subprocess.STDOUT
    )
    assert result.stdout.decode().strip() == "alice chat {'text': 'hi'}"
