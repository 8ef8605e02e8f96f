"""count() and page() at 10k, 100k and 1M records of one class: PostgreSQL, Redis, SQLite.

Usage: ``python bench/scale_count.py [postgres_admin_url]`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``; ``--only postgresql,redis,sqlite``).

Each store is a throwaway one: a PostgreSQL database (migrated, dropped afterwards), a
redis-server of its own on a free port (stopped afterwards), a SQLite file in a temporary
folder. Records are written in bulk, not one save per row: PostgreSQL ``INSERT ... SELECT
generate_series`` (the count triggers fire once per statement), SQLite a recursive CTE (its
row triggers fire per row), Redis pipelined ``SET`` + ``ZADD`` of documents in the backend's
format. 10,000 records of another class sit beside them. Timed through the library, per size,
in interleaved rounds (every store in turn, 15 rounds after a warm-up): ``acount``; ``apage``
of 50 records, first page and a page from a cursor in the middle of the class; and, for
reference, the exact ``count(*)`` the SQL stores answered before the counter. Median
[min-max] in milliseconds. Also prints PostgreSQL's ``EXPLAIN (ANALYZE, BUFFERS)`` of the
middle page at the largest size.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import redis.asyncio as aioredis

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, PageCursor
from pydantic_toast.backends.postgresql import _SQL
from pydantic_toast.integrations.cli import main as toast_cli

# SCALE_SIZES=2000 for a quick trial run.
SIZES = tuple(int(n) for n in os.environ.get("SCALE_SIZES", "10000,100000,1000000").split(","))
ROUNDS = 15
PAGE = 50
BASE = datetime(2020, 1, 1, tzinfo=UTC)
TEXT = "x" * 180


def _model(url: str) -> Any:
    class Item(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=url, external_name="BenchItem")

    return Item


def _middle(size: int) -> str:
    """The cursor half-way down the class (records are one second apart, newest first)."""
    return PageCursor(BASE + timedelta(seconds=size // 2), uuid4()).token()


class Postgres:
    name = "postgresql"

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.database = f"toast_bench_scale_{uuid4().hex[:8]}"
        self.url = admin_url.rsplit("/", 1)[0] + f"/{self.database}"

    async def open(self) -> None:
        admin = await asyncpg.connect(self.admin_url)
        await admin.execute(f'CREATE DATABASE "{self.database}"')
        await admin.close()
        assert await asyncio.to_thread(toast_cli, ["migrate", self.url]) == 0
        self.connection = await asyncpg.connect(self.url)
        await self._insert("Other", 0, 10_000)
        self.model = _model(self.url)

    async def grow(self, have: int, size: int) -> None:
        await self._insert("BenchItem", have, size)
        await self.connection.execute("VACUUM ANALYZE external_records")

    async def _insert(self, class_name: str, start: int, stop: int) -> None:
        await self.connection.execute(
            "INSERT INTO external_records (class_name, id, schema_version, data, created_at, "
            "updated_at) SELECT $1, gen_random_uuid(), 1, jsonb_build_object('text', $4::text), "
            "$5::timestamptz + make_interval(secs => n), now() "
            "FROM generate_series($2::int + 1, $3::int) AS n",
            class_name,
            start,
            stop,
            TEXT,
            BASE,
        )

    async def exact(self) -> int:
        return int(
            await self.connection.fetchval(
                "SELECT count(*) FROM external_records WHERE class_name = 'BenchItem'"
            )
        )

    async def explain(self, size: int) -> str:
        cursor = PageCursor.from_token(_middle(size))
        assert cursor is not None
        rows = await self.connection.fetch(
            f"EXPLAIN (ANALYZE, BUFFERS) {_SQL['page_after']}",
            "BenchItem",
            cursor.created_at,
            cursor.id,
            PAGE,
        )
        count = await self.connection.fetch(
            f"EXPLAIN (ANALYZE, BUFFERS) {_SQL['count']}", "BenchItem"
        )
        return "\n".join(row[0] for row in [*rows, *count])

    async def close(self) -> None:
        await self.connection.close()
        admin = await asyncpg.connect(self.admin_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        await admin.close()


class Redis:
    name = "redis"

    async def open(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.process = subprocess.Popen(  # noqa: ASYNC220  (once, before anything is timed)
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0?prefix=bench"
        self.client = aioredis.Redis(port=self.port)
        for _ in range(100):
            try:
                await self.client.ping()
                break
            except aioredis.ConnectionError:
                await asyncio.sleep(0.05)
        await self._insert("Other", 0, 10_000)
        self.model = _model(self.url)

    async def grow(self, have: int, size: int) -> None:
        await self._insert("BenchItem", have, size)

    async def _insert(self, class_name: str, start: int, stop: int) -> None:
        stamp = BASE.isoformat()
        for chunk in range(start, stop, 10_000):
            documents: dict[str, bytes] = {}
            scores: dict[str, float] = {}
            for n in range(chunk + 1, min(chunk + 10_000, stop) + 1):
                created = BASE + timedelta(seconds=n)
                id = str(uuid4())
                documents[f"bench:{class_name}:{id}"] = (
                    f'{{"created_at":"{created.isoformat()}","revision":1,"schema_version":1,'
                    f'"updated_at":"{stamp}","data":{{"text":"{TEXT}"}}}}'
                ).encode()
                scores[id] = created.timestamp()
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.mset(documents)
                pipe.zadd(f"bench:{class_name}:index", scores)
                await pipe.execute()

    async def exact(self) -> int:
        return int(await self.client.zcard("bench:BenchItem:index"))

    async def close(self) -> None:
        await self.client.aclose()
        self.process.terminate()
        self.process.wait(10)


class SQLite:
    name = "sqlite"

    async def open(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="toast_bench_scale_")
        self.path = Path(self.folder) / "scale.db"
        self.url = f"sqlite:///{self.path}"
        assert await asyncio.to_thread(toast_cli, ["migrate", self.url]) == 0
        self._insert("Other", 0, 10_000)
        self.model = _model(self.url)

    async def grow(self, have: int, size: int) -> None:
        await asyncio.to_thread(self._insert, "BenchItem", have, size)

    def _insert(self, class_name: str, start: int, stop: int) -> None:
        with sqlite3.connect(self.path) as connection:
            connection.execute(
                "WITH RECURSIVE n(i) AS (SELECT ? + 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                "INSERT INTO external_records (class_name, id, schema_version, data, created_at, "
                "updated_at, revision) SELECT ?, lower(hex(randomblob(16))), 1, "
                "json_object('text', ?), "
                "strftime('%Y-%m-%d %H:%M:%f000', ?, '+' || i || ' seconds'), "
                "'2020-01-01 00:00:00.000000', 1 FROM n",
                (start, stop, class_name, TEXT, BASE.strftime("%Y-%m-%d %H:%M:%S")),
            )
            connection.execute("ANALYZE")

    async def exact(self) -> int:
        def count() -> int:
            with sqlite3.connect(self.path) as connection:
                row = connection.execute(
                    "SELECT count(*) FROM external_records WHERE class_name = 'BenchItem'"
                ).fetchone()
                return int(row[0])

        return await asyncio.to_thread(count)

    async def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


async def _timed(call: Awaitable[Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = await call
    return (time.perf_counter() - start) * 1000, result


async def main(admin_url: str, only: set[str]) -> None:
    stores: list[Any] = [s for s in (Postgres(admin_url), Redis(), SQLite()) if s.name in only]
    for store in stores:
        await store.open()
    try:
        have = 0
        for size in SIZES:
            for store in stores:
                start = time.perf_counter()
                await store.grow(have, size)
                print(f"{store.name}: {size:,} records in {time.perf_counter() - start:.1f} s")
            have = size
            samples: dict[tuple[str, str], list[float]] = {}
            middle = _middle(size)
            for round_ in range(ROUNDS + 1):
                for store in stores[round_ % len(stores) :] + stores[: round_ % len(stores)]:
                    model = store.model
                    measured = {
                        "count()": await _timed(pydantic_toast.acount(model)),
                        "first page": await _timed(pydantic_toast.apage(model, limit=PAGE)),
                        "middle page": await _timed(
                            pydantic_toast.apage(model, limit=PAGE, after=middle)
                        ),
                        "count(*) / ZCARD": await _timed(store.exact()),
                    }
                    assert measured["count()"][1] == size, (store.name, measured["count()"][1])
                    assert len(measured["first page"][1].items) == PAGE
                    assert len(measured["middle page"][1].items) == PAGE
                    if round_:  # round 0 warms up
                        for what, (ms, _) in measured.items():
                            samples.setdefault((store.name, what), []).append(ms)
            for (name, what), values in samples.items():
                print(
                    f"{size:>9,} {name:<10} {what:<17} {statistics.median(values):8.2f} ms "
                    f"[{min(values):.2f}-{max(values):.2f}]",
                    flush=True,
                )
        for store in stores:
            if store.name == "postgresql":
                print(await store.explain(SIZES[-1]))
    finally:
        await pydantic_toast.aclose_storage()
        for store in stores:
            await store.close()


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if not a.startswith("--only")]
    chosen = {"postgresql", "redis", "sqlite"}
    for a in sys.argv[1:]:
        if a.startswith("--only"):
            chosen = set(a.split("=", 1)[1].split(","))
    asyncio.run(
        main(arguments[0] if arguments else "postgresql://postgres@127.0.0.1:5432/postgres", chosen)
    )
