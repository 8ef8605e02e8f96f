"""The cost of exact counting on PostgreSQL writers: 20 concurrent writers of one class.

Usage: ``python bench/pg_count_writers.py [admin_url]`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``). Three throwaway databases, all migrated to
head: "no counter" (the count triggers of migration 0004 dropped), "one counter row" (the
trigger functions changed to add to one row per class: the hot row that sharding avoids) and
"counter triggers" as shipped (16 rows per class). In interleaved rounds (the order rotates), 20
tasks each save 100 new single records of one class through the library (``save_records`` of one
record: one INSERT per save, autocommit), then 20 tasks save batches of 100. Reported: total
saves per second and the median save latency, median [min-max] over the rounds. The databases
are dropped afterwards.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from uuid import uuid4

import asyncpg

from pydantic_toast._records import StoredRecord
from pydantic_toast.backends.postgresql import PostgreSQLBackend
from pydantic_toast.integrations.cli import main as toast_cli

ROUNDS = 7
WRITERS = 20
SAVES = 100
DROP_TRIGGERS = [
    "DROP TRIGGER external_records_count_insert ON external_records",
    "DROP TRIGGER external_records_count_delete ON external_records",
]


def _record() -> StoredRecord:
    now = datetime.now(UTC)
    return StoredRecord(
        class_name="Hot",
        id=uuid4(),
        data=json.dumps({"text": "x" * 100, "n": 1}).encode(),
        schema_version=1,
        created_at=now,
        updated_at=now,
        revision=0,
    )


async def _writers(backend: PostgreSQLBackend, batch: int) -> tuple[float, list[float]]:
    latencies: list[float] = []

    async def writer() -> None:
        for _ in range(SAVES // batch):
            records = [_record() for _ in range(batch)]
            start = time.perf_counter()
            await backend.save_records(records)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(WRITERS)))
    return WRITERS * SAVES / (time.perf_counter() - start), latencies


async def main(admin_url: str) -> None:
    admin = await asyncpg.connect(admin_url)
    names = {
        kind: f"toast_bench_writers_{kind}_{uuid4().hex[:6]}" for kind in ("off", "single", "on")
    }
    urls = {kind: admin_url.rsplit("/", 1)[0] + f"/{name}" for kind, name in names.items()}
    backends: dict[str, PostgreSQLBackend] = {}
    try:
        for kind, name in names.items():
            await admin.execute(f'CREATE DATABASE "{name}"')
            assert await asyncio.to_thread(toast_cli, ["migrate", urls[kind]]) == 0
        connection = await asyncpg.connect(urls["off"])
        for statement in DROP_TRIGGERS:
            await connection.execute(statement)
        await connection.close()
        connection = await asyncpg.connect(urls["single"])
        for function in ("external_records_count_added", "external_records_count_removed"):
            source = await connection.fetchval("SELECT pg_get_functiondef($1::regproc)", function)
            await connection.execute(source.replace("pg_backend_pid() % 16", "0"))
        await connection.close()
        for kind, url in urls.items():
            backends[kind] = PostgreSQLBackend(f"{url}?pool_size={WRITERS}&max_overflow=0")
            await backends[kind].connect()
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for kind in backends:  # warm-up: connections opened, statements prepared
            await _writers(backends[kind], 1)
        for round_ in range(ROUNDS):
            kinds = ["off", "single", "on"]
            order = kinds[round_ % 3 :] + kinds[: round_ % 3]
            for batch in (1, 100):
                for kind in order:
                    rate, latencies = await _writers(backends[kind], batch)
                    results.setdefault((kind, batch), []).append(
                        (rate, statistics.median(latencies))
                    )
        for batch in (1, 100):
            for kind in ("off", "single", "on"):
                samples = results[(kind, batch)]
                rates = [s[0] for s in samples]
                p50 = [s[1] * 1000 for s in samples]
                label = {
                    "off": "no counter",
                    "single": "one counter row",
                    "on": "counter triggers",
                }[kind]
                print(
                    f"batch {batch:>3}, {label:<16}: {_spread(rates, '{:,.0f}')} saves/s, "
                    f"median latency {_spread(p50, '{:.2f}')} ms per call"
                )
        count = await backends["on"].count("Hot")
        connection = await asyncpg.connect(urls["on"])
        exact = await connection.fetchval("SELECT count(*) FROM external_records")
        await connection.close()
        print(f"count() {count:,} = count(*) {exact:,}: {count == exact}")
    finally:
        for backend in backends.values():
            await backend.disconnect()
        for name in names.values():
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _spread(samples: list[float], form: str) -> str:
    return (
        f"{form.format(statistics.median(samples))} "
        f"[{form.format(min(samples))}-{form.format(max(samples))}]"
    )


if __name__ == "__main__":
    asyncio.run(
        main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/postgres")
    )
