"""Whether a node's connections fit under the process's open-file limit.

Every socket is a file descriptor. A node that runs out of them cannot accept
anything, ``/healthz`` included, and says nothing. So ``relay serve`` checks
at start-up that ``max_connections`` (upgraded sockets), ``max_pending_connections``
(connections not upgraded yet) and ``RESERVED_FILES`` fit under ``RLIMIT_NOFILE``,
raising the soft limit toward the hard one when it is lower, and refuses to
start otherwise (docs/security.md says why).
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from typing import Final

from relay.settings import Settings

RESERVED_FILES: Final = 64
"""Descriptors a node needs besides its connections.

Listening sockets, the event loop's, standard streams, log files, Redis
connections and static files being served: a few each.
"""

GetLimit = Callable[[int], tuple[int, int]]
SetLimit = Callable[[int, tuple[int, int]], None]


def open_files_needed(settings: Settings) -> int | None:
    """Descriptors the node may hold at once; None when ``max_connections`` is 0 (no cap)."""
    if settings.max_connections == 0:
        return None
    return settings.max_connections + settings.max_pending_connections + RESERVED_FILES


def fit_open_files(
    settings: Settings,
    *,
    getrlimit: GetLimit = resource.getrlimit,
    setrlimit: SetLimit = resource.setrlimit,
) -> str | None:
    """Raise the soft open-file limit to what ``settings`` need, if the hard limit allows.

    None when they fit (now), else the one line saying why not and what to
    change. With no ``max_connections`` cap the soft limit is raised to the
    hard one and nothing is refused: the operator chose no bound.
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    needed = open_files_needed(settings)
    wanted = hard if needed is None else needed
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # some sandboxes refuse even this: judge by the limit as it is
    if needed is None or soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    shown_hard = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    return (
        f"max_connections {settings.max_connections} + max_pending_connections "
        f"{settings.max_pending_connections} + {RESERVED_FILES} reserved need {needed} open "
        f"files, but this process may open {soft} (ulimit -n; hard limit {shown_hard}): lower "
        "max_connections or max_pending_connections, or raise the limit (ulimit -n, "
        "systemd LimitNOFILE=)"
    )
