"""How long an orphan scan takes on PostgreSQL: 100,000 tags, 50,000 posts referencing half.

Usage: ``python bench/orphan_scan.py [postgres_admin_url] [--rounds N]`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``, 3 rounds).

A throwaway database (migrated, dropped afterwards) gets 100,000 ``BenchTag`` records and
50,000 ``BenchPost`` records, each post referencing one tag, written in bulk with
``INSERT ... SELECT generate_series``. ``find_orphans(BenchTag)`` (report only) then runs with
page sizes 100, 500 and 1000, interleaved (every size in turn, each round), and prints the
median [min-max] seconds per page size; each scan must find exactly 50,000 orphans.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from uuid import uuid4

import asyncpg

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from pydantic_toast.integrations.cli import main as toast_cli

TAGS = 100_000
SIZES = (100, 500, 1000)


def _with_database(url: str, database: str) -> str:
    return url.rsplit("/", 1)[0] + f"/{database}"


async def _admin(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _fill(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            "INSERT INTO external_records (class_name, id, schema_version, data, created_at, "
            "updated_at) SELECT 'BenchTag', gen_random_uuid(), 1, "
            "jsonb_build_object('label', 't' || g), now() - g * interval '1 ms', now() "
            f"FROM generate_series(1, {TAGS}) AS g"
        )
        await connection.execute(
            "INSERT INTO external_records (class_name, id, schema_version, data, created_at, "
            "updated_at) SELECT 'BenchPost', gen_random_uuid(), 1, jsonb_build_object('title', "
            "'p', 'tags', jsonb_build_array(jsonb_build_object('class_name', 'BenchTag', 'id', "
            "id::text))), now(), now() FROM (SELECT id, row_number() OVER (ORDER BY id) AS n "
            "FROM external_records WHERE class_name = 'BenchTag') AS t WHERE n % 2 = 0"
        )
        await connection.execute("VACUUM ANALYZE external_records")
    finally:
        await connection.close()


def main() -> None:
    args = [a for a in sys.argv[1:] if a.startswith("postgres")]
    admin = args[0] if args else "postgresql://postgres@127.0.0.1:5432/postgres"
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 3
    database = f"toast_orphans_{uuid4().hex[:10]}"
    asyncio.run(_admin(admin, f'CREATE DATABASE "{database}"'))
    url = _with_database(admin, database)
    try:
        assert toast_cli(["migrate", url]) == 0
        asyncio.run(_fill(url))

        class BenchTag(ExternalBaseModel):
            label: str
            model_config = ExternalConfigDict(storage=url)

        class BenchPost(ExternalBaseModel):
            title: str
            tags: list[BenchTag] = []
            model_config = ExternalConfigDict(storage=url)

        times: dict[int, list[float]] = {size: [] for size in SIZES}
        pydantic_toast.find_orphans(BenchTag, batch_size=1000)  # warm-up
        for _ in range(rounds):
            for size in SIZES:
                start = time.perf_counter()
                report = pydantic_toast.find_orphans(BenchTag, batch_size=size)
                times[size].append(time.perf_counter() - start)
                assert len(report.orphans) == TAGS // 2, len(report.orphans)
                assert report.checked == TAGS
        for size, values in times.items():
            print(
                f"batch_size={size}: {statistics.median(values):.2f} s "
                f"[{min(values):.2f}-{max(values):.2f}] ({rounds} rounds; scans {TAGS} tags and "
                f"{TAGS // 2} posts)"
            )
    finally:
        pydantic_toast.close_storage()
        asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
