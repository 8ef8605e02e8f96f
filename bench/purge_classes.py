"""How the purge finds its classes, before and after the skip-scan: the "nothing expired"
statement that ends every purge run, and a chunk of 1,000 rows, on PostgreSQL and SQLite.

Usage: ``python bench/purge_classes.py OLD_SRC NEW_SRC [admin_url] [--rounds 7]``: two
``src`` folders (e.g. main's, from ``git archive main src``, and this tree's ``src``).

Data sets (built once, shared by both trees: the schema is the same; ``VACUUM ANALYZE``):

* ``3 classes``: PostgreSQL 500,000 live expiring rows (ttl of an hour) in three classes,
  SQLite 200,000; and 50,000 (SQLite 20,000) permanent rows of a fourth class;
* ``1,000 classes``: the same number of live expiring rows spread over 1,000 classes, and the
  permanent rows.

In each round the two trees run in turn (the order alternates), each in a process of its own
that imports that tree (``PYTHONPATH``) and runs its own purge loop (``sql.purge_classes``)
with its own statements, on a fresh connection:

* ``nothing expired``: the purge with the real ``now`` (nothing to delete: the statement that
  ends every purge run), 25 times; the median of runs 6-25 (PostgreSQL keeps a generic plan
  from the sixth run of a prepared statement);
* ``chunk of 1,000``: the purge of 1,000 rows with ``now`` two hours ahead (every expiring row
  counts as expired), in a transaction rolled back (the rows stay), 11 times; the median of
  runs 2-11.

Reported: milliseconds, median over the rounds of the per-round medians [min-max]. With
``--callgrind`` (SQLite only): instructions of ten "nothing expired" runs and of one chunk,
per tree (they repeat exactly).

Measured 2026-12-05 (11 rounds, load average 4-6 on 2 cores), main -> skip-scan:
PostgreSQL 3 classes, nothing expired 0.221 [0.163-0.828] -> 0.049 [0.045-0.683], chunk
3.49 [2.94-7.81] -> 4.78 [3.05-7.73] (one more round trip: the list); 1,000 classes, nothing
expired 7.26 [3.24-8.13] -> 8.24 [4.57-12.25], chunk 5.28 [2.89-7.09] -> 6.63 [4.04-12.16].
SQLite 3 classes, nothing expired 0.011 -> 0.012, chunk 23.3 -> 22.1; 1,000 classes,
nothing expired 1.55 [1.43-4.15] -> 3.20 [1.96-8.34], chunk 15.2 -> 11.5. Callgrind (SQLite,
instructions): nothing expired x10, 3 classes 1,277,721 -> 1,350,318, 1,000 classes
69,117,397 -> 121,498,473; chunk, 3 classes 43,841,041 -> 44,082,783, 1,000 classes
37,164,129 -> 38,722,629. The reverted fallback (37385e1) took 11.5-17 ms (PostgreSQL) and
19-25 ms (SQLite) for "nothing expired" with 3 classes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HOUR = timedelta(hours=1)
CHUNK = 1_000
SIZES = {"postgresql": (500_000, 50_000), "sqlite": (200_000, 20_000)}
SHAPES = {"3 classes": 3, "1,000 classes": 1_000}
PG_FILL = (
    "INSERT INTO external_records (class_name, id, data, expires_at) "
    "SELECT $1 || lpad((g % $2)::text, 4, '0'), gen_random_uuid(), '{}', "
    "now() + $3::interval FROM generate_series(1, $4) g"
)


def fill_postgresql(url: str, classes: int) -> None:
    import asyncpg

    expiring, permanent = SIZES["postgresql"]

    async def run() -> None:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(PG_FILL, "K", classes, HOUR, expiring)
            await connection.execute(PG_FILL, "P", 1, None, permanent)
            await connection.execute("VACUUM ANALYZE external_records")
        finally:
            await connection.close()

    asyncio.run(run())


def fill_sqlite(path: str, classes: int) -> None:
    expiring, permanent = SIZES["sqlite"]
    later = (datetime.now(UTC) + HOUR).strftime("%Y-%m-%d %H:%M:%S.%f")
    connection = sqlite3.connect(path)
    try:
        rows = ((f"K{i % classes:04d}", uuid.uuid4().hex, "{}", later) for i in range(expiring))
        connection.executemany(
            "INSERT INTO external_records (class_name, id, data, expires_at) VALUES (?, ?, ?, ?)",
            rows,
        )
        connection.executemany(
            "INSERT INTO external_records (class_name, id, data) VALUES ('P0000', ?, '{}')",
            ((uuid.uuid4().hex,) for _ in range(permanent)),
        )
        connection.commit()
        connection.execute("ANALYZE")
    finally:
        connection.close()


# ---------------------------------------------------------------- worker (one tree)


def _median_after(times: list[float], skip: int) -> float:
    return statistics.median(times[skip:])


async def _purge_loop(
    new: bool,
    listing: Callable[..., Awaitable[list[str]]],
    deleting: Callable[..., Awaitable[int]],
    limit: int,
) -> int:
    from pydantic_toast.backends.sql import purge_classes

    if new:
        return await purge_classes(listing, deleting, limit)
    return await purge_classes(deleting, limit)  # type: ignore[call-arg,arg-type]


async def work_postgresql(url: str) -> dict[str, float]:
    import asyncpg

    from pydantic_toast.backends.postgresql import _SQL

    new = "expired_classes" in _SQL
    connection = await asyncpg.connect(url)
    now = datetime.now(UTC)

    async def listing(from_class: str, limit: int) -> list[str]:
        rows = await connection.fetch(_SQL["expired_classes"], from_class, now, limit)
        return [row[0] for row in rows]

    async def deleting(*args: Any) -> int:
        status: str = await connection.execute(_SQL["purge"], *args[:-1], now, args[-1])
        return int(status.rpartition(" ")[2])

    try:
        empty = []
        for _ in range(25):
            began = time.perf_counter()
            assert await _purge_loop(new, listing, deleting, CHUNK) == 0
            empty.append((time.perf_counter() - began) * 1000)
        now += 2 * HOUR
        chunks = []
        for _ in range(11):
            transaction = connection.transaction()
            await transaction.start()
            began = time.perf_counter()
            assert await _purge_loop(new, listing, deleting, CHUNK) == CHUNK
            chunks.append((time.perf_counter() - began) * 1000)
            await transaction.rollback()
        return {
            "nothing expired": _median_after(empty, 5),
            "chunk of 1,000": _median_after(chunks, 1),
        }
    finally:
        await connection.close()


def work_sqlite(path: str, *, segments: bool = False) -> dict[str, float]:
    """The SQLite timings; with ``segments``, under callgrind: after the same warm-up, ten
    "nothing expired" runs and one chunk, each a segment (``bench/callgrind.py``)."""
    from sqlalchemy.dialects import sqlite

    from pydantic_toast.backends import sql

    new = hasattr(sql, "EXPIRED_CLASSES")
    connection = sqlite3.connect(path, isolation_level=None)
    now = datetime.now(UTC)

    def compiled(statement: Any) -> Callable[[dict[str, Any]], Any]:
        query = statement.compile(dialect=sqlite.dialect())
        text, order = str(query), list(query.positiontup)
        defaults = {k: v for k, v in query.construct_params(_check=False).items() if v is not None}

        def run(values: dict[str, Any]) -> Any:
            stamp = now.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
            params = {**defaults, **values, "now": stamp}
            return connection.execute(text, [params[k] for k in order])

        return run

    purge = compiled(sql.PURGE)
    listed = compiled(sql.EXPIRED_CLASSES) if new else None

    async def listing(from_class: str, limit: int) -> list[str]:
        assert listed is not None
        return [row[0] for row in listed({"from_class": from_class, "limit": limit})]

    async def deleting(*args: Any) -> int:
        values = {"limit": args[-1]}
        if len(args) == 2:
            values["class_name"] = args[0]
        return int(purge(values).rowcount)

    async def counted() -> dict[str, float]:
        nonlocal now
        for _ in range(3):
            assert await _purge_loop(new, listing, deleting, CHUNK) == 0
        os.getppid()  # callgrind: zero the counters
        for _ in range(10):
            await _purge_loop(new, listing, deleting, CHUNK)
        os.getpgrp()  # callgrind: dump
        now += 2 * HOUR
        connection.execute("BEGIN")
        assert await _purge_loop(new, listing, deleting, CHUNK) == CHUNK
        connection.execute("ROLLBACK")
        connection.execute("BEGIN")
        os.getppid()
        await _purge_loop(new, listing, deleting, CHUNK)
        os.getpgrp()
        connection.execute("ROLLBACK")
        return {}

    async def run() -> dict[str, float]:
        nonlocal now
        empty = []
        for _ in range(25):
            began = time.perf_counter()
            assert await _purge_loop(new, listing, deleting, CHUNK) == 0
            empty.append((time.perf_counter() - began) * 1000)
        now += 2 * HOUR
        chunks = []
        for _ in range(11):
            connection.execute("BEGIN")
            began = time.perf_counter()
            assert await _purge_loop(new, listing, deleting, CHUNK) == CHUNK
            chunks.append((time.perf_counter() - began) * 1000)
            connection.execute("ROLLBACK")
        return {
            "nothing expired": _median_after(empty, 5),
            "chunk of 1,000": _median_after(chunks, 1),
        }

    try:
        return asyncio.run(counted() if segments else run())
    finally:
        connection.close()


# ---------------------------------------------------------------- driver


def _figure(runs: list[float]) -> str:
    return f"{statistics.median(runs):.3f} [{min(runs):.3f}-{max(runs):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("old_src")
    parser.add_argument("new_src")
    parser.add_argument("admin_url", nargs="?", default=None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="SQLite only: instructions (callgrind) instead of times, one run per tree",
    )
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        store, target = args.worker
        if store == "sqlite-segments":
            work_sqlite(target, segments=True)
            print(json.dumps(["nothing expired x10", "chunk of 1,000"]))
            return
        work = work_sqlite(target) if store == "sqlite" else asyncio.run(work_postgresql(target))
        print(json.dumps(work))
        return

    sys.path.insert(0, str(Path(__file__).parent))
    sys.path.insert(0, args.new_src)
    from databases import ADMIN_URL, throwaway_postgres

    from pydantic_toast.integrations.cli import main as toast_cli

    trees = {"main": args.old_src, "skip-scan": args.new_src}
    if args.callgrind:
        _instructions(trees)
        return
    print("| store | classes | statement | tree | ms, median [min-max] |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for shape, classes in SHAPES.items():
            for store in ("postgresql", "sqlite"):
                if store == "sqlite":
                    path = os.path.join(folder, f"{classes}.db")
                    assert toast_cli(["migrate", f"sqlite:///{path}"]) == 0
                    fill_sqlite(path, classes)
                    _measure(store, shape, path, trees, args.rounds)
                else:
                    with throwaway_postgres(
                        "toast_purge_classes", args.admin_url or ADMIN_URL
                    ) as url:
                        fill_postgresql(url, classes)
                        _measure(store, shape, url, trees, args.rounds)


def _instructions(trees: dict[str, str]) -> None:
    """SQLite's purge under callgrind, per tree: instructions, which repeat exactly."""
    import callgrind

    from pydantic_toast.integrations.cli import main as toast_cli

    print("| store | classes | statement | tree | instructions |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for shape, classes in SHAPES.items():
            path = os.path.join(folder, f"{classes}.db")
            assert toast_cli(["migrate", f"sqlite:///{path}"]) == 0
            fill_sqlite(path, classes)
            for tree, source in trees.items():
                os.environ["PYTHONPATH"] = source
                counts = callgrind.run_worker(
                    [__file__, "-", "-", "--worker", "sqlite-segments", path]
                )
                for label, count in counts.items():
                    print(f"| sqlite | {shape} | {label} | {tree} | {count:,} |", flush=True)


def _measure(store: str, shape: str, target: str, trees: dict[str, str], rounds: int) -> None:
    figures: dict[str, dict[str, list[float]]] = {tree: {} for tree in trees}
    names = list(trees)
    for round_ in range(rounds):
        shift = round_ % len(names)
        for tree in names[shift:] + names[:shift]:
            environment = {**os.environ, "PYTHONPATH": trees[tree]}
            output = subprocess.run(
                [sys.executable, __file__, "-", "-", "--worker", store, target],
                env=environment,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for statement, took in json.loads(output).items():
                figures[tree].setdefault(statement, []).append(took)
    for statement in ("nothing expired", "chunk of 1,000"):
        for tree in names:
            runs = figures[tree][statement]
            print(f"| {store} | {shape} | {statement} | {tree} | {_figure(runs)} |", flush=True)


if __name__ == "__main__":
    main()
