"""Client CPU per save, 100 concurrent tasks: pydantic-toast async Redis vs raw redis.asyncio.

    python bench/redis_concurrent_cpu.py [--rounds 6] [--per-task 5] [--workload "10 fields"]
    python bench/redis_concurrent_cpu.py --src /tmp/old/src   # another source tree

Starts its own throwaway redis-server. Per round, in an order that alternates: 100 tasks each
save ``--per-task`` new records, through pydantic-toast (``asave``) and through a raw
redis.asyncio ``SET`` of the plain model's JSON, each on a pool of 50 connections (as in
``bench/run.py``'s concurrent phase). Prints, median [min-max] over rounds (the first is a
warm-up, dropped): the client's CPU µs per save (``time.process_time``: not the wall clock, so
another process on the machine moves it less than it moves throughput), the server's (its main
thread, ``INFO cpu``), the ratio of pydantic-toast's client CPU to the raw client's and the
ratio of its throughput (saves per second of wall clock) to the raw client's, measured in the
same round. To compare two trees, run it once with each ``--src``, alternately.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

TASKS = 100
POOL = 50


async def _server_cpu(client: Any) -> float:
    """The server's main thread CPU seconds so far (user + system)."""
    info = await client.info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


async def _round(
    save: Callable[[Any], Awaitable[Any]], objs: list[list[Any]], stats: Any
) -> tuple[float, float, float]:
    """Client and server CPU µs per save of ``objs`` saved by ``TASKS`` concurrent tasks, and
    the wall clock's µs per save."""

    async def saver(mine: list[Any]) -> None:
        for obj in mine:
            await save(obj)

    gc.collect()
    server, client = await _server_cpu(stats), time.process_time()
    wall = time.perf_counter()
    await asyncio.gather(*(saver(mine) for mine in objs))
    wall = time.perf_counter() - wall
    client, server = time.process_time() - client, await _server_cpu(stats) - server
    saves = sum(len(mine) for mine in objs)
    return client * 1e6 / saves, server * 1e6 / saves, wall * 1e6 / saves


async def run(url: str, workload_name: str, rounds: int, per_task: int) -> None:
    import redis.asyncio as aioredis
    from workloads import WORKLOADS

    import pydantic_toast

    workload = next(w for w in WORKLOADS if w.name == workload_name)
    model = workload.external_model("Concurrent", url, f"conc_{uuid.uuid4().hex[:8]}")
    plain = workload.plain_model()
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=POOL)
    raw, stats = aioredis.Redis(connection_pool=pool), aioredis.Redis.from_url(url)

    async def raw_save(obj: Any) -> None:
        await raw.set(f"raw:{uuid.uuid4()}", obj.__pydantic_serializer__.to_json(obj))

    async def toast_save(obj: Any) -> None:
        await obj.asave()

    systems: dict[str, tuple[Callable[[Any], Awaitable[Any]], Callable[[int], Any]]] = {
        "raw": (raw_save, lambda i: plain(**workload.values(i))),
        "toast": (toast_save, lambda i: model(**workload.values(i))),
    }
    figures: dict[str, list[float]] = {
        "toast client": [],
        "raw client": [],
        "toast server": [],
        "raw server": [],
    }
    ratios: list[float] = []
    throughputs: list[float] = []
    for number in range(rounds + 1):
        measured: dict[str, float] = {}
        for name in list(systems)[:: 1 if number % 2 else -1]:
            save, make = systems[name]
            objs = [[make(i) for _ in range(per_task)] for i in range(TASKS)]
            client, server, wall = await _round(save, objs, stats)
            measured[f"{name} client"], measured[f"{name} server"] = client, server
            measured[f"{name} wall"] = wall
        if number:  # the first round opens the pools' connections
            for key, value in measured.items():
                if key in figures:
                    figures[key].append(value)
            ratios.append(measured["toast client"] / measured["raw client"])
            throughputs.append(measured["raw wall"] / measured["toast wall"])
    print(f"{workload_name}, {TASKS} tasks x {per_task} saves, pools of {POOL}, {rounds} rounds")
    for key, values in figures.items():
        print(f"  {key:13} µs CPU/save {_spread(values)}")
    print(f"  toast / raw client CPU  {_spread(ratios, '.2f')}")
    print(f"  toast / raw throughput  {_spread(throughputs, '.2f')}")
    await pydantic_toast.aclose_storage()
    await raw.aclose()
    await stats.aclose()


def _spread(values: list[float], spec: str = ".1f") -> str:
    return f"{statistics.median(values):{spec}} [{min(values):{spec}}–{max(values):{spec}}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-task", type=int, default=5)
    parser.add_argument("--workload", default="10 fields")
    parser.add_argument("--src", type=Path, help="the source tree to measure (default: ../src)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.src or HERE.parent / "src"))
    from tests.servers import TempRedis

    server = TempRedis()
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        asyncio.run(run(url, args.workload, args.rounds, args.per_task))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
