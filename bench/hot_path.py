"""Single save and load against the raw drivers, interleaved: wall p50 and CPU per operation.

    python bench/hot_path.py --rounds 7 [--backend postgresql|redis] [--workload "100 KB"]

One process, one throwaway PostgreSQL database (or Redis key prefix). Each round runs every
system once, in a rotated order: ``--ops`` sequential saves of new records, then as many loads
of them (async ones awaited inside one running loop, as ``bench/run.py`` does). Raw asyncpg
uses one connection and prepared statements; raw redis.asyncio SET/GET; both encode and decode
with the plain Pydantic model. pydantic-toast runs its async API on the same event loop and its
sync API from the main thread. Printed per system: median [min-max] over rounds of the p50
latency, of the CPU time per operation (this process, all threads), and of the ratio to the
raw driver measured in the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from databases import throwaway_postgres  # noqa: E402
from stores import REDIS_URL, delete_redis_prefix  # noqa: E402
from systems import RawAsyncpg, RawRedis, Toast, toast_on  # noqa: E402
from workloads import WORKLOADS, Workload  # noqa: E402

import pydantic_toast  # noqa: E402


def _systems(backend: str) -> list[type[Any]]:
    label = "PostgreSQL" if backend == "postgresql" else "Redis"
    raw = RawAsyncpg if backend == "postgresql" else RawRedis
    made: list[type[Any]] = [raw]
    for api in ("async", "sync"):
        made.append(toast_on(backend, sync=api == "sync", name=f"toast {api} ({label})"))
    return made


def _timed(op: Callable[[], Any], count: int) -> tuple[float, float]:
    """p50 wall µs and mean CPU µs of ``count`` calls of ``op``."""
    walls = []
    cpu0 = time.process_time()
    for _ in range(count):
        start = time.perf_counter()
        op()
        walls.append(time.perf_counter() - start)
    cpu = time.process_time() - cpu0
    return statistics.median(walls) * 1e6, cpu / count * 1e6


async def _atimed(op: Callable[[], Awaitable[Any]], count: int) -> tuple[float, float]:
    """:func:`_timed` for an async ``op``, awaited inside one running loop.

    (Each operation used to be its own ``run_until_complete``: the loop's start and stop,
    tens of microseconds, were added to the library and the raw driver alike, which pulled
    every ratio towards 1.)
    """
    walls = []
    cpu0 = time.process_time()
    for _ in range(count):
        start = time.perf_counter()
        await op()
        walls.append(time.perf_counter() - start)
    cpu = time.process_time() - cpu0
    return statistics.median(walls) * 1e6, cpu / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="postgresql", choices=("postgresql", "redis"))
    parser.add_argument("--workload", default="10 fields")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--ops", type=int, default=200)
    args = parser.parse_args()
    workload: Workload = next(w for w in WORKLOADS if w.name == args.workload)
    loop = asyncio.new_event_loop()
    toast_prefix = f"hot{uuid.uuid4().hex[:6]}"
    with throwaway_postgres("toast_hot") as pg_url:
        urls = {
            "postgresql": pg_url,
            "redis": f"{REDIS_URL}?prefix={toast_prefix}",
            "redis_prefix": f"hot{uuid.uuid4().hex[:6]}",
        }
        raw_urls = urls | {"redis": REDIS_URL}  # the raw client takes no library options
        systems = [
            cls(workload, raw_urls if i == 0 else urls)
            for i, cls in enumerate(_systems(args.backend))
        ]
        for system in systems:
            loop.run_until_complete(system.setup())
        results: dict[str, dict[str, list[float]]] = {s.name: {} for s in systems}

        def measure(system: Any, count: int) -> dict[str, float]:
            objs = [system.make(i) for i in range(count)]
            keys: list[Any] = []
            it = iter(objs)
            if system.sync:
                save_p50, save_cpu = _timed(lambda: keys.append(system.save_sync(next(it))), count)
                kt = iter(list(keys))
                load_p50, load_cpu = _timed(lambda: system.load_sync(next(kt)), count)
            else:

                async def save() -> None:
                    keys.append(await system.save(next(it)))

                save_p50, save_cpu = loop.run_until_complete(_atimed(save, count))
                kt = iter(list(keys))
                load_p50, load_cpu = loop.run_until_complete(
                    _atimed(lambda: system.load(next(kt)), count)
                )
            return {"save": save_p50, "save cpu": save_cpu, "load": load_p50, "load cpu": load_cpu}

        for system in systems:  # warm-up (connections, prepared statements), discarded
            measure(system, 20)
        for r in range(args.rounds):
            order = systems[r % len(systems) :] + systems[: r % len(systems)]
            round_figures = {s.name: measure(s, args.ops) for s in order}
            raw = round_figures[systems[0].name]
            for name, figures in round_figures.items():
                for key, value in figures.items():
                    results[name].setdefault(key, []).append(value)
                    results[name].setdefault(f"{key} ratio", []).append(value / raw[key])
        for system in reversed(systems):
            if not isinstance(system, Toast):
                loop.run_until_complete(system.teardown())
        loop.run_until_complete(pydantic_toast.aclose_storage())
        pydantic_toast.close_storage()
        if args.backend == "redis":  # the throwaway key prefix
            delete_redis_prefix(REDIS_URL, f"{toast_prefix}:")
    loop.close()

    def fmt(values: list[float]) -> str:
        m = statistics.median(values)
        spec = ".2f" if m < 10 else ".0f"
        return f"{m:{spec}} [{min(values):{spec}}–{max(values):{spec}}]"

    load = os.getloadavg()[0]
    print(
        f"\n{args.workload}, {args.backend}, {args.rounds} rounds x {args.ops} ops; load {load:.2f}"
    )
    cols = ["save", "save ratio", "save cpu", "save cpu ratio"]
    cols += ["load", "load ratio", "load cpu", "load cpu ratio"]
    print(
        "| system | " + " | ".join(f"{c} p50" if c in ("save", "load") else c for c in cols) + " |"
    )
    print("|---" * (len(cols) + 1) + "|")
    for system in systems:
        row = results[system.name]
        print(f"| {system.name} | " + " | ".join(fmt(row[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
