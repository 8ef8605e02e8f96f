"""A throwaway PostgreSQL database for one benchmark run, migrated and dropped afterwards."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

ADMIN_URL = os.environ.get(
    "TOAST_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def admin_execute(sql: str, admin_url: str = ADMIN_URL) -> None:
    """Run ``sql`` (e.g. ``CREATE DATABASE``) on its own connection to ``admin_url``."""
    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(admin_url)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


@contextmanager
def throwaway_postgres(prefix: str, admin_url: str = ADMIN_URL) -> Iterator[str]:
    """Create a database named ``<prefix>_<hex>``, migrate it, yield its URL, drop it."""
    # Imported here: scripts that migrate with another tree's code import this module too.
    from pydantic_toast.integrations.cli import main as toast_cli

    database = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin_execute(f'CREATE DATABASE "{database}"', admin_url)
    try:
        url = f"{admin_url.rsplit('/', 1)[0]}/{database}"
        assert toast_cli(["migrate", url]) == 0
        yield url
    finally:
        admin_execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)', admin_url)
