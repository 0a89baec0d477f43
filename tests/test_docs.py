"""The docs say what the code does: the settings table, the README example, metric names."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import relay_client
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


# Names in the docs that start like a metric and are something else.
NOT_METRICS = {
    "relay_client": "the Python client's import name",
    "relay_factory": "a pytest fixture",
    "relay_nodes": "the nginx upstream in deploy/",
    "relay_admin": "the admin page's session cookie (docs/admin.md)",
}
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def exposed_names(text: str) -> set[str]:
    """Every metric name a /metrics page shows: families (# TYPE) and samples."""
    names = set(re.findall(r"^# TYPE (\w+) ", text, re.M))
    names |= set(re.findall(r"^(\w+)[{ ]", text, re.M))
    return names


@pytest.mark.anyio
async def test_every_metric_the_docs_name_is_on_the_metrics_page(relay: RunningRelay) -> None:
    async with httpx.AsyncClient(base_url=relay.http_url) as http:
        exposed = exposed_names((await http.get("/metrics")).text)
    assert "relay_errors_total" in exposed  # a labelled counter shows before its first count
    named = {
        (doc.name, name)
        for doc in DOCUMENTS
        for name in re.findall(r"\brelay_[a-z_]+\b", doc.read_text())
        if name not in NOT_METRICS
    }
    assert named, "the docs name metrics"
    missing = sorted(f"{doc}: {name}" for doc, name in named if name not in exposed)
    assert not missing, "named in the docs, not on /metrics:\n" + "\n".join(missing)


def test_the_connect_options_table_lists_every_option() -> None:
    text = (ROOT / "docs" / "python-client.md").read_text()
    section = text.partition("## `connect(url, **options)`")[2].partition("\n## ")[0]
    documented = set(re.findall(r"^\| `(\w+)`(?:, `(\w+)`)? \|", section, re.M))
    names = {name for pair in documented for name in pair if name}
    options = set(inspect.signature(relay_client.connect).parameters) - {"url"}
    assert names == options
