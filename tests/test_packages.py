"""The wheels and the tarball docs/install.md builds hold what they should, and work installed.

docs/install.md is followed once per session (tests/packages.py): the files
built in a scratch copy of the repository, installed in ``../relay-try`` with
pip and npm as it says, and each quick start run against the installed relay.
These tests look at what that left.
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import RunningRelay
from tests.docblocks import RELAY_READY
from tests.packages import Installed, installed
from tests.terminal import ROOT, Command, terminal_env

STATIC = ROOT / "relay" / "static"
JS = ROOT / "clients" / "js"


@pytest.fixture
def packages(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return installed(tmp_path_factory)


def wheel_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as wheel:
        return wheel.namelist()


def test_the_server_wheel_holds_the_package_with_every_static_file(packages: Installed) -> None:
    names = wheel_names(packages.dist / "relay-0.1.0-py3-none-any.whl")
    static = [f"relay/{p.relative_to(ROOT / 'relay')}" for p in STATIC.rglob("*") if p.is_file()]
    assert static and set(static) <= set(names), set(static) - set(names)
    modules = {f"relay/{p.relative_to(ROOT / 'relay')}" for p in (ROOT / "relay").rglob("*.py")}
    assert modules <= set(names)
    outside = [n for n in names if not n.startswith(("relay/", "relay-0.1.0.dist-info/"))]
    assert outside == []
    assert "relay-0.1.0.dist-info/licenses/LICENSE" in names
    assert not [n for n in names if "__pycache__" in n]


def test_the_client_wheel_holds_the_typed_package(packages: Installed) -> None:
    names = wheel_names(packages.dist / "relay_client-0.1.0-py3-none-any.whl")
    assert "relay_client/py.typed" in names
    assert "relay_client-0.1.0.dist-info/licenses/LICENSE" in names
    outside = [n for n in names if not n.startswith(("relay_client/", "relay_client-0.1.0."))]
    assert outside == []
    assert not [n for n in names if "__pycache__" in n]


def test_the_installed_relay_serves_its_files_with_no_repository_around(
    packages: Installed,
) -> None:
    python = packages.relay_env / "bin" / "python"
    env = terminal_env(**packages.env)
    where = subprocess.run(
        [python, "-c", "import relay; print(relay.__file__)"],
        cwd=packages.scratch, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(packages.relay_env), where.stdout
    # with the admin page on, as its files (relay/static/admin) are served only then
    relay = Command(
        [str(packages.relay_env / "bin" / "relay"), "serve", "--port", "0"],
        packages.scratch,
        {**env, "RELAY_ADMIN_PASSWORD": "an admin password"},
    )
    try:
        ready = relay.wait_for(RELAY_READY)
        found = re.search(r"ws://127\.0\.0\.1:(\d+)/", ready)
        assert found, ready
        with httpx.Client(base_url=f"http://127.0.0.1:{found[1]}") as http:
            assert http.get("/").content == (STATIC / "index.html").read_bytes()
            for path in STATIC.rglob("*"):
                if path.is_file():
                    served = http.get(f"/{path.relative_to(STATIC)}")
                    assert served.status_code == 200, path
                    assert served.content == path.read_bytes(), path
    finally:
        relay.interrupt()


def test_the_installed_python_client_is_the_wheels(packages: Installed) -> None:
    where = subprocess.run(
        [packages.peer_env / "bin" / "python", "-c", "import relay_client as m; print(m.__file__)"],
        cwd=packages.scratch, env=terminal_env(**packages.env),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(packages.peer_env), where.stdout


def test_the_js_tarball_holds_the_sources_the_exports_name_and_the_quick_start(
    packages: Installed,
) -> None:
    with tarfile.open(packages.dist / "relay-client-0.1.0.tgz") as tarball:
        names = {name.removeprefix("package/") for name in tarball.getnames()}
    sources = {f"src/{p.name}" for p in (JS / "src").iterdir()}
    expected = {"package.json", "README.md", "LICENSE", "examples/quickstart.js", *sources}
    assert names == expected
    manifest = json.loads((JS / "package.json").read_text())
    targets = {
        target
        for entry in manifest["exports"].values()
        for target in ([entry] if isinstance(entry, str) else entry.values())
    }
    assert {t.removeprefix("./") for t in targets} <= names
    assert manifest["types"].removeprefix("./") in names
    assert manifest["private"] is True  # never published by name: the name is not ours
    assert (manifest["license"], manifest["engines"]) == ("MIT", {"node": ">=20"})


def test_the_license_files_are_one_text() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert (JS / "LICENSE").read_text() == text
    assert (ROOT / "clients" / "python" / "LICENSE").read_text() == text
    assert "MIT License" in text


@pytest.mark.anyio
async def test_the_js_quick_start_runs_from_the_installed_package(
    packages: Installed, relay: RunningRelay
) -> None:
    script = packages.js_project / "quickstart.js"
    assert script.read_text() == (JS / "examples" / "quickstart.js").read_text()
    installed_client = packages.js_project / "node_modules" / "relay-client"
    assert installed_client.is_dir() and not installed_client.is_symlink()  # unpacked, not linked
    with anyio.fail_after(30):
        ran = await anyio.run_process(
            ["node", script.name, relay.url], cwd=packages.js_project, env=terminal_env(),
            check=False,
        )  # fmt: skip
    out = ran.stdout.decode()
    assert (ran.returncode, ran.stderr) == (0, b"")
    alice = re.fullmatch(r"alice is (\S+), bob is \S+", out.splitlines()[0])
    assert alice, out
    assert out.splitlines()[1:] == [
        f'bob got {{"text":"hi"}} from {alice[1]} (direct, ev chat)',
        f'bob got "hello room" from {alice[1]} (room lobby, ev chat)',
        "alice asked bob to add 1 and 2: 3",
    ]
