"""What a PostgreSQL batch save costs the server, pydantic-toast against raw asyncpg, interleaved.

    python bench/pg_batch_server.py --workload "100 KB" --rounds 7 [--sync] [--src PATH]

One throwaway database (created, migrated and dropped by this process) on the server of
``TOAST_BENCH_POSTGRES_URL`` (a local server: its backends' CPU is read from ``/proc``). Each
round runs every system once, in a rotated order: one batch save of ``--count`` new records
(raw asyncpg: ``executemany`` of ``bench/systems.py``'s upsert; pydantic-toast: ``adump``).
Printed per system, median [min-max] over rounds, per record: the CPU the database's server
processes spent (``utime + stime`` of every backend connected to it, from ``/proc``: parsing,
planning, executing, committing) and their minor page faults (fresh memory from the kernel: a
count, unlike CPU time, that does not depend on the machine's load); the WAL written
(``pg_current_wal_lsn()`` before and after: nothing else should write to the server
meanwhile); with ``pg_stat_statements`` installed in the admin database and loaded
(``shared_preload_libraries``), the top-level statements' execution and planning time; the
client's CPU (of which in the kernel), page faults and wall time; and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if "--src" in sys.argv:  # measure another source tree (a worktree of an older commit)
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--src") + 1]).resolve()))

import asyncpg  # noqa: E402
from databases import ADMIN_URL, throwaway_postgres  # noqa: E402
from systems import RawAsyncpg, toast_on  # noqa: E402
from workloads import WORKLOADS, Workload  # noqa: E402

import pydantic_toast  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def _usage(pids: list[int]) -> tuple[float, int]:
    """User and system CPU seconds the processes ``pids`` have run so far, and their minor
    page faults (fresh pages taken from the kernel)."""
    seconds = faults = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:  # a connection closed meanwhile (the pool's, or a raw one)
            continue
        fields = stat.rpartition(")")[2].split()
        seconds += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        faults += int(fields[7])  # minflt (field 10)
    return seconds / _TICK, faults


def _own_usage() -> tuple[float, float, int]:
    """This process's CPU seconds, of which in the kernel, and its minor page faults."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_stime, usage.ru_minflt


class Server:
    """The admin connection: the database's backends, WAL position, statement statistics."""

    def __init__(self, admin: asyncpg.Connection, database: str) -> None:
        self.admin = admin
        self.database = database
        self.statements = False

    async def start(self) -> None:
        self.statements = bool(
            await self.admin.fetchval(
                "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'"
            )
        )

    async def backends(self) -> list[int]:
        rows = await self.admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1", self.database
        )
        return [row[0] for row in rows]

    async def mark(self) -> tuple[list[int], tuple[float, int], int]:
        if self.statements:
            await self.admin.execute("SELECT pg_stat_statements_reset()")
        pids = await self.backends()
        lsn = await self.admin.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        return pids, _usage(pids), int(lsn)

    async def since(self, mark: tuple[list[int], tuple[float, int], int]) -> dict[str, Any]:
        pids, (cpu, faults), lsn = mark
        now_lsn = await self.admin.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        now_cpu, now_faults = _usage(pids)
        figures: dict[str, Any] = {
            "server cpu": now_cpu - cpu,
            "server faults": now_faults - faults,
            "wal": int(now_lsn) - lsn,
        }
        if self.statements:
            rows = await self.admin.fetch(
                "SELECT s.query, s.calls, s.total_exec_time, s.total_plan_time "
                "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                "WHERE d.datname = $1 AND s.toplevel",
                self.database,
            )
            figures["exec ms"] = sum(row[2] + row[3] for row in rows)
            figures["statements"] = sorted(
                ((row[2], row[1], " ".join(row[0].split())[:60]) for row in rows), reverse=True
            )
        return figures


async def _round(system: Any, server: Server, objs: list[Any]) -> dict[str, Any]:
    mark = await server.mark()
    usage0, wall0 = _own_usage(), time.perf_counter()
    if system.sync:
        await asyncio.to_thread(system.save_many_sync, objs)
    else:
        await system.save_many(objs)
    usage1, wall1 = _own_usage(), time.perf_counter()
    figures = await server.since(mark)
    return figures | {
        "client cpu": usage1[0] - usage0[0],
        "client system": usage1[1] - usage0[1],
        "client faults": usage1[2] - usage0[2],
        "wall": wall1 - wall0,
    }


async def measure(args: argparse.Namespace, workload: Workload, url: str) -> None:
    count: int = args.count or workload.batch
    database = url.rsplit("/", 1)[1]
    classes: list[type[Any]] = [RawAsyncpg, toast_on("postgresql", name="toast async")]
    if args.sync:
        classes.append(toast_on("postgresql", sync=True, name="toast sync"))
    systems = [cls(workload, {"postgresql": url}) for cls in classes]
    admin = await asyncpg.connect(ADMIN_URL)
    server = Server(admin, database)
    await server.start()
    results: dict[str, list[dict[str, Any]]] = {s.name: [] for s in systems}
    offset = 0
    try:
        for system in systems:
            await system.setup()
            await _round(system, server, [system.make(i) for i in range(min(count, 200))])
        for r in range(args.rounds):
            for system in systems[r % len(systems) :] + systems[: r % len(systems)]:
                offset += count
                objs = [system.make(offset + i) for i in range(count)]
                results[system.name].append(await _round(system, server, objs))
    finally:
        await systems[0].teardown()
        await pydantic_toast.aclose_storage()
        await admin.close()
    _report(args, workload, count, systems, results)


def _report(
    args: argparse.Namespace,
    workload: Workload,
    count: int,
    systems: list[Any],
    results: dict[str, list[dict[str, Any]]],
) -> None:
    def fmt(values: list[float]) -> str:
        m = statistics.median(values)
        spec = ".2f" if m < 10 else ".1f" if m < 100 else ".0f"
        return f"{m:{spec}} [{min(values):{spec}}–{max(values):{spec}}]"

    load = os.getloadavg()
    print(
        f"\n{workload.name}: {args.rounds} rounds × {count:,} records, "
        f"load average {load[0]:.2f} {load[1]:.2f}; per record"
    )
    columns = {
        "server CPU µs": ("server cpu", 1e6),
        "server page faults": ("server faults", 1),
        "statements' time µs": ("exec ms", 1e3),
        "WAL bytes": ("wal", 1),
        "client CPU µs": ("client cpu", 1e6),
        "of which kernel": ("client system", 1e6),
        "client page faults": ("client faults", 1),
        "wall µs": ("wall", 1e6),
    }
    print("| system | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for system in systems:
        rounds = results[system.name]
        cells = [
            fmt([r[key] * scale / count for r in rounds]) if key in rounds[0] else "–"
            for key, scale in columns.values()
        ]
        print(f"| {system.name} | " + " | ".join(cells) + " |")
    if args.verbose:
        for system in systems:
            print(f"\n{system.name}, statements of the last round (ms, calls, text):")
            for ms, calls, text in results[system.name][-1].get("statements", []):
                print(f"  {ms:9.1f} {calls:6} {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workload", default="100 KB", choices=[w.name for w in WORKLOADS])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, help="records per batch (default: the workload's)")
    parser.add_argument("--sync", action="store_true", help="also the sync API (dump)")
    parser.add_argument("--verbose", action="store_true", help="list the statements run")
    parser.add_argument("--src", type=Path, help="the source tree to measure (default: installed)")
    args = parser.parse_args()
    workload = next(w for w in WORKLOADS if w.name == args.workload)
    with throwaway_postgres("toast_pgbatch") as url:
        asyncio.run(measure(args, workload, url))


if __name__ == "__main__":
    main()
