"""What a node's webhooks owe, kept in Redis: a killed node's next start counts what it lost.

Each ``Sender`` counts the events it was given (``made``) and those it settled
(delivered, or dropped and counted). A node with a fixed ``node_id`` and a
Redis broker keeps both figures per URL in Redis, written at most once a
second while they change and once more after the drain. A node killed with
events unsent leaves ``made`` above ``settled``; when it starts again under
the same name it takes the note, and the difference is counted as dropped
(``reason="killed"``), logged, and told in the next batch's ``dropped``. The
count is a floor: events made in the last second before the kill were never
noted. Without Redis, or with a random node id, nothing survives a restart
to count with.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from relay.settings import Settings

log = logging.getLogger("relay.webhooks")

KEEP_SECONDS = 7 * 24 * 3600  # a note no start of the node took is forgotten after this
WRITE_EVERY_SECONDS = 1.0


class Ledger:
    """The Redis notes of one node's webhook URLs: taken at start, written as they move."""

    def __init__(self, redis_url: str, prefix: str, node_id: str, timeout_seconds: float) -> None:
        # Imported here, as the Redis broker is: a node without Redis starts
        # without loading redis-py (7 MiB of RSS, and time the clients of a
        # restarted node wait for).
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        self._errors = (RedisError, OSError, TimeoutError)
        self._client: Any = aioredis.Redis.from_url(
            redis_url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
        )
        self._prefix = f"{prefix}:webhooks:{node_id}:"

    def _key(self, url: str) -> str:
        # Hashed: a URL may carry credentials, and Redis keys are easy to list.
        return self._prefix + hashlib.sha256(url.encode()).hexdigest()[:32]

    async def take(self, url: str) -> int:
        """What the last run of this node left unsettled for ``url`` (0 if nothing), forgotten."""
        try:
            note = await self._client.getdel(self._key(url))
        except self._errors as exc:
            log.warning("webhooks: could not read what the last run left unsent: %s", exc)
            return 0
        if note is None:
            return 0
        made, _, settled = note.decode().partition(",")
        try:
            return max(0, int(made) - int(settled))
        except ValueError:
            return 0

    async def write(self, url: str, made: int, settled: int) -> None:
        """Note ``made`` and ``settled`` for ``url``; a failure is only logged (at debug)."""
        try:
            await self._client.set(self._key(url), f"{made},{settled}", ex=KEEP_SECONDS)
        except self._errors as exc:
            log.debug("webhooks: could not note the progress of %s: %s", url, exc)

    async def close(self) -> None:
        await self._client.aclose()


def ledger_for(settings: Settings) -> Ledger | None:
    """The ledger ``settings`` allow: a Redis broker and a fixed ``node_id``, else None."""
    broker = settings.broker
    if not settings.node_id or not broker.startswith(("redis://", "rediss://", "unix://")):
        return None
    return Ledger(broker, settings.redis_prefix, settings.node_id, settings.broker_timeout_seconds)
