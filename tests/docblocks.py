"""The fenced code blocks of a Markdown file, with their ``docs-test`` markers.

The marker vocabulary and what the test does with each block are described in
tests/test_docs_examples.py; this module only reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# What the test runs each fence language as.
RUNNERS = {
    "sh": "sh",
    "bash": "sh",
    "shell": "sh",
    "console": "console",
    "python": "python",
    "py": "python",
    "js": "js",
    "javascript": "js",
    "mjs": "js",
    "toml": "toml",
}
KINDS = ("server", "output", "browser", "not-run")
RELAY_READY = "relay ready on"

# A bare `python` command: Debian has only python3 (and the venv's .venv/bin/python).
_BARE_PYTHON = re.compile(r"(?<![\w./-])python(?![\w.-])")
_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[^`\s]*)")
_MARKER = re.compile(r"<!--\s*docs-test:\s*(?P<kind>[\w-]+)\s*:?\s*(?P<note>.*?)\s*-->")


@dataclass(frozen=True)
class Block:
    """One fenced code block and the marker on the line before it (if any)."""

    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    kind: str  # the marker's kind, "" without a marker
    note: str  # the rest of the marker

    @property
    def runner(self) -> str | None:
        return RUNNERS.get(self.lang)

    @property
    def runs(self) -> bool:
        return self.runner is not None and self.kind in ("", "server")

    @property
    def ready_text(self) -> str:
        """What a server block prints once it is ready (its marker's quoted text)."""
        return self.note.strip('"') or RELAY_READY

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """Every fenced code block of the Markdown file at ``path``, in order."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    previous = ""  # the last non-blank line before the current one
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            if lines[index].strip():
                previous = lines[index].strip()
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        body: list[str] = []
        end = index + 1
        while end < len(lines) and not _closes(lines[end], fence):
            text = lines[end]
            body.append(text[len(indent) :] if text.startswith(indent) else text.lstrip())
            end += 1
        marker = _MARKER.fullmatch(previous)
        found.append(
            Block(
                path=path,
                line=index + 1,
                lang=opening["lang"].lower(),
                text="\n".join(body) + "\n",
                kind=marker["kind"] if marker else "",
                note=marker["note"] if marker else "",
            )
        )
        previous = ""
        index = end + 1
    return found


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= len(fence) and stripped == fence[0] * len(stripped)


def problem(block: Block) -> str | None:
    """Why ``block`` breaks the rules of tests/test_docs_examples.py, or None."""
    if block.kind and block.kind not in KINDS:
        return f"unknown marker {block.kind!r}; the markers are {', '.join(KINDS)}"
    if block.kind == "not-run" and not block.note:
        return "a not-run marker must say why: <!-- docs-test: not-run: REASON -->"
    if block.kind == "server" and block.runner not in ("sh", "console", "python", "js"):
        return f"a {block.lang or 'plain'} block cannot be a server"
    if block.runner == "console" and not block.text.startswith("$ "):
        return "a console block starts with a `$ command` line"
    if (
        block.kind == "server"
        and block.runner == "console"
        and not console_commands(block.text)[-1][1]
    ):
        return "a console server shows its ready line under its command"
    if block.runner in ("sh", "console") and _BARE_PYTHON.search(block.text):
        return "Debian has no `python` command: write python3, or .venv/bin/python"
    if not block.kind and block.runner is None:
        return (
            f"the test cannot run a `{block.lang or '(no language)'}` block: mark it "
            "<!-- docs-test: output -->, <!-- docs-test: browser --> or "
            "<!-- docs-test: not-run: REASON --> (see tests/test_docs_examples.py)"
        )
    return None


def console_commands(text: str) -> list[tuple[str, list[str]]]:
    """A console transcript as ``(command, the lines it prints)`` pairs."""
    commands: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line.rstrip())
    return commands
