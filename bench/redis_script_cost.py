"""Redis server time of pydantic-toast's saves against a plain SET, per payload size.

    python bench/redis_script_cost.py [--ops 300] [--rounds 5] [--batch 1000]

Starts its own throwaway redis-server (so that it serves only this script), then per round:
``--ops`` single saves of new records, as many saves of changed existing records (the path
that must keep created_at and check the revision), and as many plain SETs of the same JSON.
Prints the server's µs per save, median [min-max] over rounds: the CPU time of its main
thread (``INFO cpu``, user + system), so reading requests and writing replies count, and a
command run inside a script or a transaction counts once (``INFO commandstats`` counts it
twice: in its own line and in the ``EVALSHA`` or ``EXEC`` that ran it). It does not depend
on the client machine's load, only on the server's. ``--batch N`` saves the records in
batches of N (``adump(list)``) instead, against a pipeline of N plain SETs, and also prints
the longest single command (``SLOWLOG``, µs; commands under 50 µs are not logged): the
longest the server was blocked by one call.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import redis.asyncio as aioredis  # noqa: E402
from tests.servers import TempRedis  # noqa: E402
from workloads import WORKLOADS  # noqa: E402

import pydantic_toast  # noqa: E402

# SLOWLOG keeps the commands slower than this (µs): every command logged would cost the server
# time in every window, more for the plain SETs (one command per record) than for batches.
_SLOW_US = 50


async def _stats(client: aioredis.Redis) -> float:
    """The server's main thread CPU seconds so far (user + system)."""
    info = await client.info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


def _per_save(before: float, after: float, saves: int) -> float:
    """Server µs of CPU in the window per save."""
    return (after - before) * 1e6 / saves


async def _slowest(client: aioredis.Redis) -> float:
    """The longest command since the last SLOWLOG RESET (µs), and reset it."""
    entries = await client.slowlog_get(128)
    await client.slowlog_reset()
    return max((int(entry["duration"]) for entry in entries), default=0)  # 0: < _SLOW_US


async def _save_all(objs: list[Any], batch: int) -> None:
    if not batch:
        for obj in objs:
            await obj.asave()
        return
    for start in range(0, len(objs), batch):
        await pydantic_toast.adump(objs[start : start + batch])


async def _set_all(client: aioredis.Redis, documents: list[bytes], batch: int) -> None:
    """SET each document under a new key (``batch``: pipelines of that many)."""
    step = max(batch, 1)
    for start in range(0, len(documents), step):
        async with client.pipeline(transaction=False) as pipe:
            for document in documents[start : start + step]:
                pipe.set(f"plain:{uuid.uuid4()}", document)
            await pipe.execute()


async def run(ops: int, rounds: int, batch: int) -> None:
    server = TempRedis("--slowlog-log-slower-than", str(_SLOW_US), "--slowlog-max-len", "128")
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        client = aioredis.Redis.from_url(url)
        saves = f"batches of {batch}" if batch else "single saves"
        print(f"server µs per save, {saves}, {ops} records, {rounds} rounds")
        print("| workload | new record | changed record | plain SET | longest call µs |")
        print("|---|---|---|---|---|")
        for workload in WORKLOADS:
            model = workload.external_model("Cost", url, f"cost_{workload.name[:3].strip()}")
            figures: dict[str, list[float]] = {"new": [], "changed": [], "set": []}
            slowest = 0.0
            first = next(iter(workload.fields))
            plain = workload.plain_model()
            for _ in range(rounds):
                objs = [model(**workload.values(i)) for i in range(ops)]
                # The JSON a raw client would SET: the plain model's (an external model's
                # model_dump_json() is its reference, 64 bytes whatever the document).
                plains = [plain(**workload.values(i)) for i in range(ops)]
                documents = [p.__pydantic_serializer__.to_json(p) for p in plains]
                await client.slowlog_reset()
                before = await _stats(client)
                await _save_all(objs, batch)
                middle = await _stats(client)
                for obj in objs:
                    value = getattr(obj, first)
                    setattr(obj, first, f"{value}!" if isinstance(value, str) else value + 1)
                await _save_all(objs, batch)
                after = await _stats(client)
                slowest = max(slowest, await _slowest(client))
                await _set_all(client, documents, batch)
                last = await _stats(client)
                figures["new"].append(_per_save(before, middle, ops))
                figures["changed"].append(_per_save(middle, after, ops))
                figures["set"].append(_per_save(after, last, ops))
            row = " | ".join(
                f"{statistics.median(v):.1f} [{min(v):.1f}–{max(v):.1f}]" for v in figures.values()
            )
            longest = f"{slowest:,.0f}" if slowest else f"< {_SLOW_US}"
            print(f"| {workload.name} | {row} | {longest} |")
        await pydantic_toast.aclose_storage()
        await client.aclose()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=0, help="records per adump (0: single)")
    args = parser.parse_args()
    asyncio.run(run(args.ops, args.rounds, args.batch))


if __name__ == "__main__":
    main()
