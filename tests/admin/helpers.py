"""Logging in to a relay's /admin page over httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

PASSWORD = "correct horse battery staple"


@asynccontextmanager
async def admin_client(http_url: str, password: str = PASSWORD) -> AsyncIterator[httpx.AsyncClient]:
    """A client logged in to /admin, with its CSRF token in ``client.headers``."""
    async with httpx.AsyncClient(base_url=http_url) as client:
        response = await client.post("/admin/login", json={"password": password})
        assert response.status_code == 200, response.text
        client.headers["X-CSRF-Token"] = response.json()["csrf"]
        yield client
