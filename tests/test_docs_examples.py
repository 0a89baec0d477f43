"""Every fenced code block of README.md and docs/*.md works as written, or says why not.

A document's blocks run in order, as a reader would run them in a new
terminal (no venv activated) from the repository root, against real relays:

- ``sh`` (``bash``, ``shell``): a bash script; a line that fails fails the test.
- ``console``: a terminal transcript. Each ``$ `` line is a command, the lines
  under it what it prints (stdout and stderr), compared exactly. One bash runs
  the commands in turn.
- ``python``: saved as a file and run with ``.venv/bin/python``, as the docs
  say to run them (unbuffered, so its output comes line by line as on a
  terminal).
- ``js``: saved as an ES module and run with ``node`` in the project
  docs/install.md sets up (``relay-client`` installed from the tarball
  ``npm pack`` makes, and ``ws``), as docs/js-client.md says to set one up.
- ``toml``: a settings file: every key must be a setting, every value pass
  its rule (as ``relay serve --config`` checks them).

An HTML comment on the line before the fence, ``<!-- docs-test: KIND ... -->``,
changes that:

- ``server ["TEXT"]``: the block's last command keeps running, as in a
  terminal of its own. The test waits until it prints TEXT (by default
  ``relay ready on``, the relay's ready line; in a ``console`` block, the
  first line shown under that command), runs the next block meanwhile (when
  that is a server too, the one after it as well), then stops it with Ctrl-C
  (SIGINT) and, in a ``console`` block, compares what it printed.
- ``output``: sample output, a listing or a diagram: nothing to run.
- ``browser``: JavaScript for a web page, which Node cannot run; the browser
  tests (clients/js/test/browser) run the client in Chromium.
- ``not-run: REASON``: commands the test does not run (they need root,
  Docker or other machines, take minutes, or are ``make test`` itself); the
  reason is required.

A block with no marker that the test cannot run fails it, so a new document
cannot slip through.

Addresses: the docs assume a relay at 127.0.0.1:8080 (``make run``). The
test starts one (``relay serve``, default settings) on a free port for the
module and rewrites ``127.0.0.1:8080`` and ``localhost:8080`` in every block
(its expected output included) to that port; blocks also get ``RELAY_URL``
pointing there, as relay-peer's default. A server block that starts a relay
(it waits for ``relay ready on``) gets a fresh free port for each port it
names (``--port N``, else 8080, given as ``RELAY_PORT``) while it runs, and
``127.0.0.1:6379`` is a redis-server the test starts.

docs/install.md builds the packages and installs them with pip and npm: its
blocks run offline, as tests/packages.py explains, once per session (the
package tests look at what they left).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from relay.settings import SettingError, Settings, describe, parse
from tests import packages
from tests.docblocks import RELAY_READY, Block, blocks, console_commands, problem
from tests.redis_server import free_port
from tests.terminal import ROOT, Command, terminal_env

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
IDS = [str(doc.relative_to(ROOT)) for doc in DOCS]

_ADDRESS = re.compile(r"\b(127\.0\.0\.1|localhost):(\d+)\b")
_PORT_FLAG = re.compile(r"--port([ =])(\d+)\b")
_REDIS = re.compile(r"\b(127\.0\.0\.1|localhost):6379\b")
# bash prints this line before each command of a console block, to split their output.
_SEPARATOR = "\x1e\n"
_SH_PRELUDE = "set -e\ntrap 'echo \"docs-test: this line failed: $BASH_COMMAND\" >&2' ERR\n"


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_every_block_is_run_or_says_why_not(doc: Path) -> None:
    found = [f"{b.where(ROOT)}: {why}" for b in blocks(doc) if (why := problem(b))]
    if found:
        pytest.fail("\n".join(found), pytrace=False)


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_docs_name_nothing_outside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    assert "shared/" not in text, "the founding notes are not in this repository"
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        path = (doc.parent / target.partition("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{target} is outside the repository"
        assert path.exists(), f"{target} does not exist"


@pytest.fixture(scope="module")
def relay_port() -> Iterator[int]:
    """The relay the docs call 127.0.0.1:8080: ``relay serve`` with default settings."""
    relay = Command([".venv/bin/relay", "serve", "--port", "0"], ROOT, terminal_env())
    try:
        ready = relay.wait_for(RELAY_READY)
        found = re.search(r"ws://127\.0\.0\.1:(\d+)/", ready)
        assert found, ready
        yield int(found[1])
    finally:
        relay.interrupt()


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_the_blocks_work_as_written(
    doc: Path,
    relay_port: int,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> None:
    if doc == packages.INSTALL_DOC:  # followed once for the session, offline
        packages.installed(tmp_path_factory)
        return

    def redis_port() -> int:
        url: str = request.getfixturevalue("redis_url")
        found = re.search(r":(\d+)(/|$)", url.partition("://")[2])
        assert found, url
        return int(found[1])

    def js_project() -> Path:
        return packages.installed(tmp_path_factory).js_project

    Reader(tmp_path, relay_port, redis_port, js_project=js_project).follow(doc)


def test_make_run_says_where_the_demo_is_and_what_to_try(tmp_path: Path) -> None:
    root = repository_view(tmp_path / "repo")
    port = free_port()
    make = Command(["make", "run"], root, terminal_env(RELAY_PORT=str(port)))
    listen: Command | None = None
    try:
        make.wait_for(RELAY_READY)
        banner = make.output.partition(".venv/bin/relay serve")[0]  # before the relay starts
        assert f"http://127.0.0.1:{port}/" in banner, banner
        page = httpx.get(f"http://127.0.0.1:{port}/")
        assert page.status_code == 200 and "<html" in page.text, page.text[:200]
        tries = [line.strip() for line in banner.splitlines() if line.startswith("  .venv/bin/")]
        assert len(tries) == 2, banner
        listen = Command(["bash", "-c", tries[0]], root, terminal_env())
        listen.wait_for("relay-peer: listening as bob")
        send = Command(["bash", "-c", tries[1]], root, terminal_env())
        assert send.finish() == 0, send.output
        listen.interrupt()
        assert "from=alice: hello bob" in listen.output, listen.output
    finally:
        for command in (listen, make):
            if command is not None:
                command.interrupt()


def test_the_readme_browser_snippet_is_the_one_the_browser_test_runs() -> None:
    # clients/js/test/browser/demo.test.js runs docs/js-client.md's snippet in a page.
    guide = [b.text for b in blocks(ROOT / "docs" / "js-client.md") if b.kind == "browser"]
    readme = [b.text for b in blocks(ROOT / "README.md") if b.kind == "browser"]
    assert readme and guide
    assert all(text == guide[0] for text in readme)


def test_the_js_quick_start_block_is_the_example_file() -> None:
    (code,) = [b.text for b in blocks(ROOT / "docs" / "js-client.md") if b.lang == "js"]
    assert code in (ROOT / "clients" / "js" / "examples" / "quickstart.js").read_text()


def test_the_python_quick_start_block_is_the_example_file() -> None:
    guide = blocks(ROOT / "docs" / "python-client.md")
    (code,) = [b.text for b in guide if b.lang == "python" and "sys.argv" in b.text]
    assert code in (ROOT / "clients" / "python" / "examples" / "quickstart.py").read_text()


def repository_view(target: Path) -> Path:
    """A directory that looks like the repository root, where a block's new files stay."""
    target.mkdir()
    for entry in ROOT.iterdir():
        if entry.name != ".git":
            (target / entry.name).symlink_to(entry)
    return target


class Reader:
    """Follows one document: runs its blocks in order, from a view of the repository root."""

    def __init__(
        self,
        tmp_path: Path,
        relay_port: int,
        redis_port: Callable[[], int],
        *,
        env: Mapping[str, str] | None = None,
        js_project: Callable[[], Path] | None = None,
    ) -> None:
        self.root = repository_view(tmp_path / "repo")
        self.scratch = tmp_path
        self.redis_port = redis_port
        self.extra_env = dict(env or {})
        self.js_project = js_project
        self.base_ports = {8080: relay_port}
        self.ports = dict(self.base_ports)
        self.servers: list[tuple[Block, str, Command]] = []

    def follow(self, doc: Path) -> None:
        marked = [f"{b.where(ROOT)}: {why}" for b in blocks(doc) if (why := problem(b))]
        if marked:  # a long-running command without its marker would block the test
            pytest.fail("not run, its markers first:\n" + "\n".join(marked), pytrace=False)
        try:
            for block in blocks(doc):
                if block.runs and block.kind == "server":
                    self.start(block)
                    continue
                if block.runs:
                    self.run(block)
                self.stop_servers()
            self.stop_servers()
        finally:
            for _, _, command in self.servers:
                command.kill()

    def run(self, block: Block) -> None:
        if block.runner == "toml":
            self.check_settings(block)
            return
        text = self.rewrite(block.text)
        command = self.command(block, text, self.env())
        status = command.finish()
        if block.runner == "console":
            self.compare(block, text, command.output)
        else:
            assert status == 0, f"{block.where(ROOT)} exited {status}:\n{command.output}"

    def start(self, block: Block) -> None:
        ready = block.ready_text
        env = self.env()
        text = block.text
        if block.runner == "console":
            ready = console_commands(self.rewrite(text))[-1][1][0]
        elif ready == RELAY_READY:  # a relay: a fresh port for each one it names
            named = [int(port) for _, port in _PORT_FLAG.findall(text)]
            self.ports.update({port: free_port() for port in named or [8080]})
            if not named:
                env["RELAY_PORT"] = str(self.ports[8080])
            text = _PORT_FLAG.sub(lambda m: f"--port{m[1]}{self.ports[int(m[2])]}", text)
        text = self.rewrite(text)
        command = self.command(block, text, env)
        self.servers.append((block, text, command))
        command.wait_for(ready)

    def stop_servers(self) -> None:
        while self.servers:
            block, text, command = self.servers.pop()
            command.interrupt()
            if block.runner == "console":
                self.compare(block, text, command.output)
        self.ports = dict(self.base_ports)

    def env(self) -> dict[str, str]:
        return terminal_env(RELAY_URL=f"ws://127.0.0.1:{self.ports[8080]}/v1/ws", **self.extra_env)

    def rewrite(self, text: str) -> str:
        if _REDIS.search(text) and 6379 not in self.base_ports:
            self.base_ports[6379] = self.ports[6379] = self.redis_port()
        return _ADDRESS.sub(lambda m: f"{m[1]}:{self.ports.get(int(m[2]), m[2])}", text)

    def command(self, block: Block, text: str, env: dict[str, str]) -> Command:
        if block.runner == "sh":
            return Command(["bash", "-c", _SH_PRELUDE + text], self.root, env)
        if block.runner == "console":
            script = "".join(f"printf '\\036\\n'\n{c}\n" for c, _ in console_commands(text))
            return Command(["bash", "-c", script], self.root, env)
        name = f"{block.path.stem}-{block.line}"
        if block.runner == "python":
            file = self.scratch / f"{name}.py"
            file.write_text(text)
            python = str(self.root / ".venv" / "bin" / "python")
            return Command([python, "-u", str(file)], self.root, env)  # -u: as on a terminal
        assert block.runner == "js", block
        assert self.js_project is not None, f"{block.where(ROOT)}: no JS project here"
        file = self.js_project() / f"{name}.mjs"
        file.write_text(text)
        return Command(["node", str(file)], self.root, env)

    def compare(self, block: Block, text: str, output: str) -> None:
        commands = console_commands(text)
        printed = output.split(_SEPARATOR)[1:]
        assert len(printed) == len(commands), f"{block.where(ROOT)}: bash stopped:\n{output}"
        for (command, shown), got in zip(commands, printed, strict=True):
            lines = [line.rstrip() for line in got.splitlines()]
            assert lines == shown, (
                f"{block.where(ROOT)}: $ {command}\nprinted:\n{got}\nthe doc shows:\n"
                + "\n".join(shown)
            )

    def check_settings(self, block: Block) -> None:
        """A settings file: known names, and values the relay's own rules accept."""
        data = tomllib.loads(block.text)
        unknown = set(data) - {info.name for info in describe()}
        assert not unknown, f"{block.where(ROOT)}: not settings: {sorted(unknown)}"
        try:
            Settings(**{name: parse(name, value) for name, value in data.items()})
        except SettingError as exc:
            pytest.fail(f"{block.where(ROOT)}: {exc}")
