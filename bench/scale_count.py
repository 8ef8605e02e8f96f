"""count() on PostgreSQL at 10k, 100k and 1M rows of one class, in a throwaway database.

Usage: ``python bench/scale_count.py [admin_url]`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``). Rows are inserted with ``generate_series``
(about 200 bytes of data each) beside 10,000 rows of another class, then ``VACUUM ANALYZE``
(so the (class_name, created_at, id) index allows an index-only scan). Each size is timed
with the library's ``acount`` and with the planner's estimate (``EXPLAIN``), interleaved,
15 repetitions, median and spread (min-max). The database is dropped afterwards.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from uuid import uuid4

import asyncpg

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from pydantic_toast.integrations.cli import main as toast_cli

SIZES = (10_000, 100_000, 1_000_000)
REPETITIONS = 15


async def main(admin_url: str) -> None:
    database = f"toast_bench_count_{uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{database}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{database}"
    try:
        assert await asyncio.to_thread(toast_cli, ["migrate", url]) == 0

        class Item(ExternalBaseModel):
            text: str
            model_config = ExternalConfigDict(storage=url, external_name="BenchItem")

        connection = await asyncpg.connect(url)
        try:
            await _insert(connection, "Other", 10_000)
            have = 0
            results = {}
            for size in SIZES:
                await _insert(connection, "BenchItem", size - have)
                have = size
                await connection.execute("VACUUM ANALYZE external_records")
                exact: list[float] = []
                estimate: list[float] = []
                for _ in range(REPETITIONS):
                    start = time.perf_counter()
                    counted = await pydantic_toast.acount(Item)
                    exact.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    plan = await connection.fetchval(
                        "EXPLAIN (FORMAT JSON) SELECT 1 FROM external_records "
                        "WHERE class_name = $1",
                        "BenchItem",
                    )
                    estimated = json.loads(plan)[0]["Plan"]["Plan Rows"]
                    estimate.append(time.perf_counter() - start)
                assert counted == size
                results[size] = (exact, estimate, estimated)
                print(
                    f"{size:>9,} rows: count() {_ms(exact)}; EXPLAIN estimate {_ms(estimate)} "
                    f"(estimated {estimated:,})",
                    flush=True,
                )
        finally:
            await connection.close()
    finally:
        await pydantic_toast.aclose_storage()
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


async def _insert(connection: asyncpg.Connection, class_name: str, rows: int) -> None:
    await connection.execute(
        """
        INSERT INTO external_records (class_name, id, schema_version, data, created_at, updated_at)
        SELECT $1, gen_random_uuid(), 1,
               jsonb_build_object('text', repeat(md5(n::text), 6)),
               now() - make_interval(secs => n), now()
        FROM generate_series(1, $2) AS n
        """,
        class_name,
        rows,
    )


def _ms(samples: list[float]) -> str:
    median = statistics.median(samples) * 1000
    return f"median {median:.2f} ms (min {min(samples) * 1000:.2f}, max {max(samples) * 1000:.2f})"


if __name__ == "__main__":
    asyncio.run(
        main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/postgres")
    )
