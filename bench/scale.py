"""Scale figures (issue 15, item 6): PostgreSQL at 10k-10M records; Redis Cluster throughput.

Usage::

    python bench/scale.py postgresql [admin_url]   # SCALE_SIZES=10000,100000 for a trial
    python bench/scale.py cluster                  # 1 vs 3 primaries, 100 concurrent clients
    python bench/scale.py wait                     # the cost of wait_replicas=1

``postgresql``: one throwaway database (dropped afterwards) grown to 10k, 100k, 1M and 10M
records of one class (plus 10,000 of another) by ``INSERT ... SELECT generate_series``, one
million rows per statement, on a connection whose server process is reniced to 19 (the fill
runs in PostgreSQL, so ``nice`` on this script would not reach it). At each size, 60 rounds
(after a warm-up round) of, in turn: ``aload`` of one record by id (a different id each time,
drawn at random), ``apage`` of 50 records (first page, and from a cursor half-way down the
class), and ``acount``. Median [min-max] in milliseconds, with the load average.

``cluster``: a Redis Cluster of 1 primary and one of 3 primaries (no replicas), side by side;
for each, 100 concurrent clients (asyncio tasks over 2 processes) save new records through
the library for 8 s; the two clusters alternate, 3 runs each. Prints saves/s and, per primary,
the server CPU time (``INFO cpu``, user + sys, less what it spent idle just before) per save
it served: a Redis primary runs the
commands on one core, so ``1 / (CPU per save)`` is its capacity, and the cluster's is that of
its busiest primary divided by its share of the saves. On a 2-core machine shared by every
process of the run (clients and servers alike) the measured throughput is a correctness run,
not a scaling figure: the projection is printed beside it.

``wait``: a 3-primary, 3-replica cluster; single saves one after another, with and without
``wait_replicas=1``, alternating save by save (5 runs of 300 each): median [min-max] latency.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import redis  # noqa: E402
from scale_count import BASE, PAGE, Postgres, _middle  # noqa: E402
from tests import servers  # noqa: E402

import pydantic_toast  # noqa: E402
from pydantic_toast import ExternalBaseModel, ExternalConfigDict  # noqa: E402

SIZES = tuple(
    int(n) for n in os.environ.get("SCALE_SIZES", "10000,100000,1000000,10000000").split(",")
)
ROUNDS = 60
FILL_CHUNK = 1_000_000


def _load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def _figure(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f} ms [{min(values):.2f}-{max(values):.2f}]"


async def _timed(call: Awaitable[Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = await call
    return (time.perf_counter() - start) * 1000, result


class NicePostgres(Postgres):
    """scale_count's throwaway database, filled by a reniced server process in chunks."""

    async def open(self) -> None:
        await super().open()
        pid = await self.connection.fetchval("SELECT pg_backend_pid()")
        renice = ["renice", "-n", "19", "-p", str(pid)]
        await asyncio.to_thread(subprocess.run, renice, check=True, capture_output=True)

    async def grow(self, have: int, size: int) -> None:
        for start in range(have, size, FILL_CHUNK):
            await self._insert("BenchItem", start, min(start + FILL_CHUNK, size))
        await self.connection.execute("VACUUM ANALYZE external_records")

    async def ids(self, size: int, count: int) -> list[Any]:
        """Ids of ``count`` records drawn at random (record n was created n s after BASE)."""
        offsets = random.sample(range(1, size + 1), count)
        rows = await self.connection.fetch(
            "SELECT id FROM external_records WHERE class_name = 'BenchItem' AND created_at = "
            "ANY($1::timestamptz[])",
            [BASE + timedelta(seconds=n) for n in offsets],
        )
        return [row["id"] for row in rows]

    async def size_on_disk(self) -> str:
        return str(
            await self.connection.fetchval(
                "SELECT pg_size_pretty(pg_total_relation_size('external_records'))"
            )
        )


async def postgresql(admin_url: str) -> None:
    store = NicePostgres(admin_url)
    await store.open()
    try:
        have = 0
        for size in SIZES:
            started = time.perf_counter()
            await store.grow(have, size)
            have = size
            print(
                f"{size:,} records in {time.perf_counter() - started:.0f} s "
                f"(table + indexes {await store.size_on_disk()}; {_load()})",
                flush=True,
            )
            ids = await store.ids(size, ROUNDS + 1)
            middle = _middle(size)
            model = store.model
            samples: dict[str, list[float]] = {}
            for round_, id in enumerate(ids):
                measured = {
                    "load by id": await _timed(model.aload(id)),
                    "first page": await _timed(pydantic_toast.apage(model, limit=PAGE)),
                    "middle page": await _timed(
                        pydantic_toast.apage(model, limit=PAGE, after=middle)
                    ),
                    "count()": await _timed(pydantic_toast.acount(model)),
                }
                assert measured["count()"][1] == size
                assert len(measured["middle page"][1].items) == PAGE
                assert measured["load by id"][1].external_id == id
                if round_:
                    for what, (ms, _) in measured.items():
                        samples.setdefault(what, []).append(ms)
            for what, values in samples.items():
                print(f"{size:>11,} {what:<12} {_figure(values)}", flush=True)
            print(f"            ({len(ids) - 1} rounds; {_load()})", flush=True)
    finally:
        await pydantic_toast.aclose_storage()
        await store.close()


# -- Redis Cluster throughput --------------------------------------------------------------

CLIENTS = 100
PROCESSES = 2
SECONDS = 8.0
IDLE_SECONDS = 3.0


def _writer_process(url: str, tasks: int, seconds: float) -> int:
    """``tasks`` concurrent writers saving new records for ``seconds``: how many saved."""

    class Event(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=url, external_name="Event")
        n: int

    async def main() -> int:
        saved = 0
        deadline = time.monotonic() + seconds

        async def writer() -> None:
            nonlocal saved
            while time.monotonic() < deadline:
                await Event(n=saved).asave()
                saved += 1

        await Event(n=-1).asave()  # connect before the clock starts for every task
        await asyncio.gather(*(writer() for _ in range(tasks)))
        await pydantic_toast.aclose_storage()
        return saved

    return asyncio.run(main())


def _cpu(port: int) -> float:
    info = redis.Redis(port=port).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _evalsha_calls(port: int) -> int:
    stats = redis.Redis(port=port).info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def _run(cluster: servers.TempRedisCluster, pool: Any) -> dict[str, Any]:
    url = cluster.url(f"scale{uuid4().hex[:8]}")
    ports = [int(p["port"]) for p in cluster.primaries()]
    # An idle primary spends CPU too (cron, cluster bus): measured first, then subtracted.
    idle = {p: _cpu(p) for p in ports}
    time.sleep(IDLE_SECONDS)
    cpu = {p: _cpu(p) for p in ports}
    idle_rate = {p: (cpu[p] - idle[p]) / IDLE_SECONDS for p in ports}
    calls = {p: _evalsha_calls(p) for p in ports}
    started = time.perf_counter()
    share = CLIENTS // PROCESSES
    saved = sum(pool.starmap(_writer_process, [(url, share, SECONDS)] * PROCESSES))
    elapsed = time.perf_counter() - started
    served = {p: _evalsha_calls(p) - calls[p] for p in ports}
    per_save = {
        p: (_cpu(p) - cpu[p] - idle_rate[p] * elapsed) / max(served[p], 1) * 1e6 for p in ports
    }
    return {
        "saves/s": saved / SECONDS,
        "elapsed": elapsed,
        "share": {p: served[p] / max(sum(served.values()), 1) for p in ports},
        "cpu_us_per_save": per_save,
        "load": _load(),
    }


def cluster_throughput() -> None:
    clusters = {1: servers.TempRedisCluster(1, 0), 3: servers.TempRedisCluster(3, 0)}
    results: dict[int, list[dict[str, Any]]] = {1: [], 3: []}
    try:
        with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
            for primaries in (1, 3, 3, 1, 1, 3):
                figures = _run(clusters[primaries], pool)
                results[primaries].append(figures)
                print(f"{primaries} primaries: {figures}", flush=True)
    finally:
        for each in clusters.values():
            each.destroy()
    capacity: dict[int, float] = {}
    for primaries, runs in results.items():
        rates = [r["saves/s"] for r in runs]
        per_save = [us for r in runs for us in r["cpu_us_per_save"].values()]
        busiest = statistics.median(max(r["share"].values()) for r in runs)
        capacity[primaries] = 1e6 / statistics.median(per_save) / busiest
        print(
            f"{primaries} primaries, {CLIENTS} clients: {statistics.median(rates):,.0f} saves/s "
            f"[{min(rates):,.0f}-{max(rates):,.0f}] measured; server CPU per save "
            f"{statistics.median(per_save):.0f} us [{min(per_save):.0f}-{max(per_save):.0f}], "
            f"busiest primary's share {busiest:.0%}: capacity ~{capacity[primaries]:,.0f} "
            "saves/s with a core per primary and enough clients"
        )
    print(f"projected scaling 1 -> 3 primaries: x{capacity[3] / capacity[1]:.2f}")


# -- the cost of waiting for a replica -----------------------------------------------------


def wait_cost() -> None:
    from tests.integration.test_redis_cluster import _records

    from pydantic_toast.backends.redis_cluster import RedisClusterBackend

    cluster = servers.TempRedisCluster()

    async def main() -> None:
        plain = RedisClusterBackend(cluster.url(f"plain{uuid4().hex[:6]}"))
        waiting = RedisClusterBackend(
            cluster.url(f"wait{uuid4().hex[:6]}", wait_replicas=1, wait_timeout=1000)
        )
        await plain.connect()
        await waiting.connect()
        medians: dict[str, list[float]] = {"plain": [], "wait_replicas=1": []}
        try:
            for run in range(6):
                samples: dict[str, list[float]] = {name: [] for name in medians}
                for i in range(301):
                    order = [("plain", plain), ("wait_replicas=1", waiting)]
                    for name, backend in order if (i + run) % 2 else order[::-1]:
                        ms, _ = await _timed(backend.save_records(_records(1)))
                        if i:
                            samples[name].append(ms * 1000)
                if run:
                    for name, values in samples.items():
                        medians[name].append(statistics.median(values))
                    print(
                        f"run {run}: "
                        + ", ".join(
                            f"{n} p50 {statistics.median(v):.0f} us" for n, v in samples.items()
                        )
                        + f" ({_load()})",
                        flush=True,
                    )
        finally:
            await plain.disconnect()
            await waiting.disconnect()
        for name, values in medians.items():
            print(
                f"{name}: save p50 {statistics.median(values):.0f} us "
                f"[{min(values):.0f}-{max(values):.0f}] (median of 5 runs' medians, 300 saves each)"
            )

    try:
        asyncio.run(main())
    finally:
        cluster.destroy()


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "postgresql"
    if what == "postgresql":
        asyncio.run(
            postgresql(
                sys.argv[2]
                if len(sys.argv) > 2
                else os.environ.get(
                    "TOAST_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
                )
            )
        )
    elif what == "cluster":
        cluster_throughput()
    elif what == "wait":
        wait_cost()
    else:
        raise SystemExit(f"unknown part {what!r}: postgresql, cluster or wait")
