"""PostgreSQL expiry statements before and after migration 0007: count() beside another class's
expired rows, and the purge's time per chunk.

Usage: ``python bench/pg_expiry_plans.py [admin_url] [--rows 100000 1000000]``
(default ``postgresql://postgres@127.0.0.1:5432/postgres``). For each size, two throwaway
databases: one at head ("after": the index on ``(class_name, expires_at)``, the per-class purge
through the primary key), one downgraded to ``0006_sqlite_data_last`` ("before": the index on
``expires_at``, the purge's ``IN (SELECT ... LIMIT n)``, as main had them). Each gets ``rows``
rows of class ``Other`` that expired an hour ago, ``--mine`` (100,000) permanent and 100
expired rows of class ``Mine``, then ``ANALYZE`` (no VACUUM: as after a bulk write). In
interleaved rounds (the order rotates), on a fresh connection each:

* count: the shipped count statement for ``Mine``, ``PREPARE``d and run 10 times (from the
  sixth run PostgreSQL may keep a generic plan, as a pool's long-lived connection does): the
  median of runs 6-10, and the index its cached plan reads;
* purge (at the first size only): ten times a chunk of 1,000 rows in a transaction rolled
  back (the rows stay, and no chunk skips rows another one deleted), after one more that
  warms the connection up (catalog caches, hint bits): the median per chunk.
  A chunk is what ``purge_expired(limit=1000)`` runs: after 0007, one statement per class it
  reaches (``Mine``'s 100 rows, then 900 of ``Other``'s), after the list of the classes with
  expired rows (``bench/purge_classes.py`` compares that list with main's way of finding them).

Reported: milliseconds, median [min-max] over the rounds. The databases are dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from databases import ADMIN_URL, throwaway_postgres

from pydantic_toast.backends.postgresql import _SQL
from pydantic_toast.backends.sql import purge_classes
from pydantic_toast.integrations.cli import main as toast_cli

ROUNDS = 7
CHUNK = 1_000
CHUNKS = 10
HOUR = timedelta(hours=1)
BEFORE_0007 = "0006_sqlite_data_last"
FILL = (
    "INSERT INTO external_records (class_name, id, data, expires_at) "
    "SELECT $1, gen_random_uuid(), '{}', now() + $2::interval FROM generate_series(1, $3)"
)
# The purge statement main shipped before 0007 (compiled from sql.PURGE then).
OLD_PURGE = (
    "DELETE FROM external_records WHERE (external_records.class_name, external_records.id) IN "
    "(SELECT external_records.class_name, external_records.id FROM external_records "
    "WHERE external_records.expires_at <= $1::TIMESTAMP WITH TIME ZONE LIMIT $2) "
    "AND external_records.expires_at <= $1::TIMESTAMP WITH TIME ZONE"
)
PURGES = {"before": OLD_PURGE, "after": _SQL["purge"]}


async def fill(url: str, rows: int, mine: int) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(FILL, "Other", -HOUR, rows)
        await connection.execute(FILL, "Mine", None, mine)
        await connection.execute(FILL, "Mine", -HOUR, 100)
        await connection.execute("ANALYZE external_records")
    finally:
        await connection.close()


def _indexes(plan: dict[str, Any]) -> set[str]:
    found = {plan["Index Name"]} if "Index Name" in plan else set()
    if plan.get("Relation Name") == "external_records" and "Seq Scan" in plan["Node Type"]:
        found.add("Seq Scan")
    for child in plan.get("Plans", []):
        found |= _indexes(child)
    return found - {"pk_external_record_counts"}


async def time_count(url: str, mine: int) -> tuple[float, str]:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f"PREPARE shipped AS {_SQL['count']}")
        execute = f"EXECUTE shipped('Mine', '{datetime.now(UTC).isoformat()}')"
        times = []
        for _ in range(10):
            began = time.perf_counter()
            counted = await connection.fetchval(execute)
            times.append((time.perf_counter() - began) * 1000)
            assert counted == mine, counted
        plan = json.loads(await connection.fetchval(f"EXPLAIN (FORMAT JSON) {execute}"))
        return statistics.median(times[5:]), ", ".join(sorted(_indexes(plan[0]["Plan"])))
    finally:
        await connection.close()


async def time_purge(url: str, statement: str) -> float:
    connection = await asyncpg.connect(url)
    times = []
    now = datetime.now(UTC)

    async def purge(*arguments: Any) -> int:  # ([class_name,] limit)
        status: str = await connection.execute(statement, *arguments[:-1], now, arguments[-1])
        return int(status.rpartition(" ")[2])

    async def expired_classes(from_class: str, limit: int) -> list[str]:
        rows = await connection.fetch(_SQL["expired_classes"], from_class, now, limit)
        return [row[0] for row in rows]

    try:
        for _ in range(CHUNKS + 1):  # the first warms the new connection up: not counted
            try:
                async with connection.transaction():
                    began = time.perf_counter()
                    if statement == OLD_PURGE:
                        deleted = await purge(CHUNK)
                    else:
                        deleted = await purge_classes(expired_classes, purge, CHUNK)
                    times.append((time.perf_counter() - began) * 1000)
                    assert deleted == CHUNK, deleted
                    raise _Rollback
            except _Rollback:
                pass
        return statistics.median(times[1:])
    finally:
        await connection.close()


class _Rollback(Exception):
    """Leaves the transaction rolled back: the purged rows stay for the next round."""


def _figure(runs: list[float]) -> str:
    return f"{statistics.median(runs):.2f} [{min(runs):.2f}–{max(runs):.2f}]"


def measure(admin_url: str, rows: int, mine: int, purge: bool) -> None:
    with (
        throwaway_postgres("toast_expiry_after", admin_url) as after,
        throwaway_postgres("toast_expiry_before", admin_url) as before,
    ):
        assert toast_cli(["downgrade", before, "--revision", BEFORE_0007]) == 0
        urls = {"before": before, "after": after}
        for url in urls.values():
            asyncio.run(fill(url, rows, mine))
        counts: dict[str, list[float]] = {name: [] for name in urls}
        chunks: dict[str, list[float]] = {name: [] for name in urls}
        plans: dict[str, str] = {}
        names = list(urls)
        for round_ in range(ROUNDS):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                took, plans[name] = asyncio.run(time_count(urls[name], mine))
                counts[name].append(took)
                if purge:
                    chunks[name].append(asyncio.run(time_purge(urls[name], PURGES[name])))
        for name in names:
            print(f"| {rows:,} | count, {name} | {_figure(counts[name])} | {plans[name]} |")
        if purge:
            for name in names:
                print(
                    f"| {rows:,} | purge chunk of {CHUNK:,}, {name} | {_figure(chunks[name])} | |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("admin_url", nargs="?", default=ADMIN_URL)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--mine", type=int, default=100_000)
    args = parser.parse_args()
    print("| expired rows of another class | statement | ms, median [min-max] | count's index |")
    print("|---|---|---|---|")
    for position, rows in enumerate(args.rows):
        measure(args.admin_url, rows, args.mine, purge=position == 0)


if __name__ == "__main__":
    main()
