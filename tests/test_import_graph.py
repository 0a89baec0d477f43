"""The modules of ``relay/`` depend on each other in one direction: no import cycle.

Every import counts, those under ``if TYPE_CHECKING:`` and inside functions
included: a cycle hidden from the interpreter is still two modules that
cannot be read, tested or replaced one without the other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "relay"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """The relay modules ``path`` imports, wherever in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from relay import api`` imports the module relay.api; a name
            # that is not a module comes from the module itself.
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in known else node.module)
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    names = set(known)
    return {name: imports(path, names) - {name} for name, path in known.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, as the list of modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_relay_has_no_import_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_check_finds_a_cycle_when_there_is_one() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_type_checking_and_function_imports() -> None:
    edges = graph()
    assert "relay.peer" in edges["relay.rooms"]
    assert "relay.broker.redis" in edges["relay.broker"]  # imported inside create_broker
    assert "relay.hub" not in edges["relay.session"]  # the session talks to Routing


def test_design_md_names_every_module() -> None:
    text = (ROOT / "docs" / "design.md").read_text()
    table = text[text.index("### Every module") :]
    table = table[: table.index("\n## ")]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    named: set[str] = set()
    for row in rows:
        cells = row.split("|")[1].split("`")[1::2]
        folder = cells[0] if cells[0].endswith("/") else ""
        named.update(f"{folder}{name}" for name in cells if not name.endswith("/"))
    present = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py"
    }
    assert sorted(present - named) == [], "modules docs/design.md does not name"
    assert sorted(named - present) == [], "names in docs/design.md that are no module"


def loaded_after(*settings: str, packages: tuple[str, ...]) -> list[list[str]]:
    """Which of ``packages`` a fresh process has loaded once the CLI is imported and an app
    made with each of ``settings`` (``Settings(...)``'s arguments, as source), one list each."""
    code = "import sys\nimport relay.cli\nfrom relay.app import create_app\n"
    code += "from relay.settings import Settings\n"
    for arguments in settings:
        code += f"create_app(Settings({arguments}))\n"
        code += f"print(sorted({{n.split('.')[0] for n in sys.modules}} & {set(packages)!r}))\n"
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return [ast.literal_eval(line) for line in run.stdout.splitlines()]


def test_a_node_without_redis_does_not_load_redis_py() -> None:
    # Start-up is what a restarted node's clients wait for, and redis-py
    # costs time and 7 MiB: it is loaded only by what needs Redis.
    webhooks = "webhook_urls=('http://127.0.0.1:9/hook',), webhook_secret='s' * 32"
    assert loaded_after(webhooks, packages=("redis",)) == [[]]


def test_an_open_node_without_backend_urls_does_not_load_pyjwt_or_httpx() -> None:
    # PyJWT with cryptography, and httpx, cost a restarted node's clients
    # time: they are loaded only where a key or a backend URL is configured.
    packages = ("jwt", "cryptography", "httpx")
    open_node, with_a_key = loaded_after("", "jwt_secret='s' * 32", packages=packages)
    assert open_node == []
    assert with_a_key == ["cryptography", "jwt"]  # the verifier loads PyJWT, and cryptography
