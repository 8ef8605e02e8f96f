"""A PostgreSQL batch load's server time per chunk as its class grows: the shipped per-key probe
against the plain join of the keys and the table that it replaced.

Usage: ``python bench/pg_load_plan.py [admin_url] [--rows 10000 40000 200000 1000000]``
(default ``postgresql://postgres@127.0.0.1:5432/postgres``). For each class size, a throwaway
database (migrated to head) gets that many 10-field records of one class and twice as many of
another, then ``ANALYZE``. In interleaved rounds (the order rotates), each statement runs on a fresh
connection, as a prepared statement's first runs on a pool's new connection do: PostgreSQL
plans those for the parameters' own values (a custom plan), seeing the array's length. Each
run reads five chunks of 1,000 keys of the big class; reported: milliseconds per chunk,
median [min-max] over the rounds, and the plan's top node. The databases are dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import asyncpg
from databases import ADMIN_URL, throwaway_postgres

from pydantic_toast.backends.postgresql import _SQL

ROUNDS = 7
CHUNK = 1_000
CHUNKS = 5
ISO = 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'


def _iso(column: str) -> str:
    return (
        f"CASE WHEN (external_records.{column} >= '0001-01-01 00:00:00+00') THEN "
        f"to_char(timezone('UTC', external_records.{column}), '{ISO}') END"
    )


# The statement the per-key probe replaced (d273966): the keys joined to the table.
PLAIN_JOIN = (
    "SELECT anon_1.position, external_records.schema_version, convert_to(coalesce("
    "external_records.data_exact, CAST(external_records.data AS TEXT)), 'UTF8'), "
    f"{_iso('created_at')}, {_iso('updated_at')}, external_records.revision "
    "FROM external_records JOIN unnest($1::UUID[]) WITH ORDINALITY AS anon_1(id, position) "
    "ON external_records.class_name = $2::VARCHAR AND external_records.id = anon_1.id "
    "WHERE external_records.expires_at IS NULL OR "
    "external_records.expires_at > to_timestamp($3::FLOAT)"
)
FILL = (
    "INSERT INTO external_records (class_name, id, schema_version, data, created_at, updated_at,"
    " revision) SELECT $1, gen_random_uuid(), 1, jsonb_build_object('name', 'customer ' || n,"
    " 'email', 'c' || n || '@example.com', 'age', n % 90, 'balance', n * 1.5, 'active', true,"
    " 'city', 'Lisbon', 'country', 'PT', 'score', n % 7, 'notes', 'none', 'tier', 'gold'),"
    " now(), now(), 1 FROM generate_series(1, $2) AS n"
)


async def measure(url: str, rows: int) -> dict[str, list[float] | str]:
    setup = await asyncpg.connect(url)
    try:
        await setup.execute(FILL, "Big", rows)
        await setup.execute(FILL, "Other", 2 * rows)
        await setup.execute("ANALYZE external_records")
        ids = [
            row[0]
            for row in await setup.fetch(
                "SELECT id FROM external_records WHERE class_name = 'Big' ORDER BY random() "
                "LIMIT $1",
                CHUNK * CHUNKS,
            )
        ]
    finally:
        await setup.close()
    statements = {"per-key probe (shipped)": _SQL["select_class"], "plain join": PLAIN_JOIN}
    figures: dict[str, list[float] | str] = {}
    names = list(statements)
    for round_ in range(ROUNDS):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            connection = await asyncpg.connect(url)
            try:
                prepared = await connection.prepare(statements[name])
                times = []
                for start in range(0, len(ids), CHUNK):
                    chunk = ids[start : start + CHUNK]
                    began = time.perf_counter()
                    found = await prepared.fetch(chunk, "Big", 0.0)
                    times.append((time.perf_counter() - began) * 1000)
                    assert len(found) == len(chunk), (name, len(found))
                plan = await connection.fetchval(
                    f"EXPLAIN (FORMAT JSON) {statements[name]}", ids[:CHUNK], "Big", 0.0
                )
            finally:
                await connection.close()
            runs = figures.setdefault(name, [])
            assert isinstance(runs, list)
            runs.append(statistics.median(times))
            figures[f"{name} plan"] = json.loads(plan)[0]["Plan"]["Node Type"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("admin_url", nargs="?", default=ADMIN_URL)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 40_000, 200_000])
    args = parser.parse_args()
    print("| rows in the class | statement | ms per 1,000 keys | plan |")
    print("|---|---|---|---|")
    for rows in args.rows:
        with throwaway_postgres("toast_load_plan", args.admin_url) as url:
            figures = asyncio.run(measure(url, rows))
        for name in ("per-key probe (shipped)", "plain join"):
            runs = figures[name]
            assert isinstance(runs, list)
            print(
                f"| {rows:,} | {name} | {statistics.median(runs):.2f} "
                f"[{min(runs):.2f}–{max(runs):.2f}] | {figures[f'{name} plan']} |"
            )


if __name__ == "__main__":
    main()
