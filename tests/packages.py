"""The three packages, built and installed as docs/install.md says: once per test session.

``installed()`` follows docs/install.md with the docs test's reader (every
block, in a scratch copy of the repository root, the scratch ``../relay-try``
beside it) and returns where the results are. The commands run as written;
only the registries are kept out, as the tests must not need them:

- pip runs with ``PIP_NO_INDEX``, and finds each wheel's dependencies already
  installed on ``PYTHONPATH``: a directory of links to the distributions of
  the project's ``.venv`` that ``relay`` and ``relay-client`` require, and
  only those (their requirements followed, extras included), so a dependency
  missing from a ``pyproject.toml`` fails the install or the quick start;
- ``python3`` is the interpreter ``.venv`` was made from, so the linked
  compiled modules fit it;
- npm prefers its cache (``make install`` filled it) to the registry.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from importlib.metadata import Distribution, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.terminal import ROOT, terminal_env

INSTALL_DOC = ROOT / "docs" / "install.md"
ROOTS = ("relay", "relay-client")  # the two wheels: their own files are not linked


@dataclass(frozen=True)
class Installed:
    """Where docs/install.md left what it built and installed."""

    repo: Path  # the repository root the doc ran from
    scratch: Path  # ../relay-try
    env: dict[str, str]  # the offline settings it ran with (see the module docstring)

    @property
    def dist(self) -> Path:
        return self.repo / "dist"

    @property
    def relay_env(self) -> Path:
        return self.scratch / "relay-env"

    @property
    def peer_env(self) -> Path:
        return self.scratch / "peer-env"

    @property
    def js_project(self) -> Path:
        return self.scratch / "my-app"


_outcome: Installed | BaseException | None = None


def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """docs/install.md followed, on the first call of the session; what it left."""
    global _outcome
    if _outcome is None:
        try:
            _outcome = _follow(tmp_path_factory.mktemp("install"))
        except BaseException as exc:  # a failed run is not repeated by the next test
            _outcome = exc
            raise
    if isinstance(_outcome, BaseException):
        pytest.fail(f"docs/install.md failed earlier in this session: {_outcome}", pytrace=False)
    return _outcome


def _follow(base: Path) -> Installed:
    from tests.test_docs_examples import Reader  # that module imports this one

    env = offline_env(base)
    reader = Reader(base, relay_port=0, redis_port=_no_redis, env=env)
    reader.follow(INSTALL_DOC)
    return Installed(repo=reader.root, scratch=base / "relay-try", env=env)


def _no_redis() -> int:
    raise AssertionError("docs/install.md needs no Redis")


def offline_env(base: Path) -> dict[str, str]:
    """The variables that keep pip and npm off their registries (see the module docstring)."""
    tools = base / "bin"
    tools.mkdir()
    (tools / "python3").symlink_to(getattr(sys, "_base_executable", sys.executable))
    return {
        "PATH": f"{tools}{os.pathsep}{terminal_env()['PATH']}",
        "PYTHONPATH": str(seed(base / "seed")),
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "npm_config_prefer_offline": "true",
        "npm_config_audit": "false",
        "npm_config_fund": "false",
        "npm_config_update_notifier": "false",
    }


def seed(target: Path) -> Path:
    """A directory of links to the installed distributions ``ROOTS`` require, and theirs."""
    target.mkdir()
    for dist in requirements_of(ROOTS):
        for top in {Path(str(file)).parts[0] for file in dist.files or ()}:
            source = Path(str(dist.locate_file(top)))
            link = target / top
            if top != ".." and source.exists() and not link.exists():
                link.symlink_to(source)
    return target


def requirements_of(roots: tuple[str, ...]) -> list[Distribution]:
    """The distributions ``roots`` require, directly or not, with the extras they ask for."""
    found: dict[str, Distribution] = {}
    pending = [(name, frozenset[str]()) for name in roots]
    done: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, extras = pending.pop()
        key = canonicalize_name(name)
        if (key, extras) in done:
            continue
        done.add((key, extras))
        dist = distribution(key)
        if key not in ROOTS:
            found[key] = dist
        for text in dist.requires or ():
            requirement = Requirement(text)
            marker = requirement.marker
            wanted = marker is None or any(
                marker.evaluate({"extra": extra}) for extra in (extras or {""})
            )
            if wanted:
                pending.append((requirement.name, frozenset(requirement.extras)))
    return list(found.values())
