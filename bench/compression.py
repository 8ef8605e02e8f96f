"""compression="zstd" against plain JSON: bytes stored, save and load time, on every backend.

A compressible document (order lines: repeated keys, similar values) of ~1 MB or ~10 MB is saved
(a new record each time) and loaded back with ``asave``/``aload``, on memory, SQLite, PostgreSQL
(a throwaway database on the server of ``TOAST_TEST_POSTGRES_URL``), Redis (a throwaway key
prefix on ``TOAST_TEST_REDIS_URL``) and S3 (a throwaway SeaweedFS). Interleaved: each round runs
every (backend, mode) pair in turn, the order rotating per round. Modes: plain JSON, zstd, and
offload (plain JSON in S3, the record keeping a pointer). Reported: the median [min-max] over
the rounds, and the bytes each store holds for the record (PostgreSQL: ``pg_column_size`` of
the row's ``data``, after the server's own TOAST compression; offload: the pointer record)::

    .venv/bin/python bench/compression.py --rounds 5 --size 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydantic_core
from pydantic import BaseModel
from tests import servers

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from pydantic_toast._url import StorageURL
from pydantic_toast.integrations.cli import main as toast_cli


class Line(BaseModel):
    sku: str
    name: str
    quantity: int
    price: float
    tags: list[str]
    note: str


def lines(megabytes: float) -> list[Line]:
    count = int(megabytes * 1_000_000 / 140)
    return [
        Line(
            sku=f"SKU-{i:07d}",
            name=f"Product {i % 500} deluxe edition",
            quantity=i % 13,
            price=round(1 + (i % 997) * 0.37, 2),
            tags=["red", "large"] if i % 2 else ["blue"],
            note="handle with care" if i % 3 else "",
        )
        for i in range(count)
    ]


def model(url: str, mode: str, offload: str) -> type[ExternalBaseModel]:
    config = ExternalConfigDict(
        storage=url,
        external_name=f"Order{uuid4().hex[:8]}",
        concurrency="last-write-wins",
        max_decompressed_size=256 * 1024 * 1024,
    )
    if mode == "zstd":
        config["compression"] = "zstd"
    if mode == "offload":  # plain JSON, the payload in S3, the record keeping a pointer
        config["offload"] = offload
    return type(
        f"Order_{mode}",
        (ExternalBaseModel,),
        {"__annotations__": {"lines": list[Line]}, "model_config": config},
    )


async def stored_bytes(url: str, class_name: str, id: Any, kind: str) -> int:
    if kind == "postgresql":
        import asyncpg

        connection = await asyncpg.connect(url.split("?")[0])
        try:
            size: int = await connection.fetchval(
                "SELECT pg_column_size(data) FROM external_records WHERE class_name=$1 AND id=$2",
                class_name,
                id,
            )
            return size
        finally:
            await connection.close()
    backend = await pydantic_toast.current_storage().connected(StorageURL.parse(url))
    (record,) = await backend.load_records([(class_name, id)])
    assert record is not None
    return len(record.data)


async def run(rounds: int, megabytes: float) -> None:
    document = lines(megabytes)
    tmp = Path(tempfile.mkdtemp(prefix="toast-bench-"))
    weed = servers.TempSeaweedFS()
    admin = os.environ["TOAST_TEST_POSTGRES_URL"]
    database = f"toast_bench_{uuid4().hex[:8]}"
    redis_prefix = f"toast_bench_{uuid4().hex[:8]}"
    import asyncpg
    import redis.asyncio as aioredis

    connection = await asyncpg.connect(admin)
    await connection.execute(f'CREATE DATABASE "{database}"')
    await connection.close()
    pg_url = f"{admin.rpartition('/')[0]}/{database}"
    sqlite_path = tmp / "bench.db"
    try:
        assert await asyncio.to_thread(toast_cli, ["migrate", pg_url]) == 0
        assert await asyncio.to_thread(toast_cli, ["migrate", f"sqlite:///{sqlite_path}"]) == 0
        async with weed.admin_client() as client:
            await client.create_bucket(Bucket="bench")
        urls = {
            "memory": "memory://bench",
            "sqlite": f"sqlite:///{sqlite_path}",
            "postgresql": pg_url,
            "redis": f"{os.environ['TOAST_TEST_REDIS_URL']}?prefix={redis_prefix}",
            "s3": weed.url("bench", "c"),
        }
        pairs = [
            (kind, mode)
            for kind in urls
            for mode in ("plain", "zstd", "offload")
            if not (kind == "s3" and mode == "offload")
        ]
        offload = weed.url("bench", "offload")
        classes = {(kind, mode): model(urls[kind], mode, offload) for kind, mode in pairs}
        saves: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
        loads: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
        sizes: dict[tuple[str, str], int] = {}
        for round_ in range(rounds + 1):  # round 0 warms up (connections, caches)
            shift = round_ % len(pairs)
            for pair in pairs[shift:] + pairs[:shift]:
                cls = classes[pair]
                instance = cls(lines=document)
                start = time.perf_counter()
                reference = await instance.asave()
                saved = time.perf_counter() - start
                start = time.perf_counter()
                loaded = await cls.aload(reference)
                took = time.perf_counter() - start
                assert len(loaded.lines) == len(document)  # type: ignore[attr-defined]
                if round_:
                    saves[pair].append(saved)
                    loads[pair].append(took)
                else:
                    sizes[pair] = await stored_bytes(
                        urls[pair[0]], reference["class_name"], UUID(str(reference["id"])), pair[0]
                    )
        plain_json = len(pydantic_core.to_json({"lines": document}))
        print(
            f"document: {plain_json:,} bytes of JSON ({len(document):,} lines); {rounds} rounds; "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        print("| backend | mode | bytes stored | save ms | load ms |")
        print("|---|---|---|---|---|")
        for pair in pairs:
            print(
                f"| {pair[0]} | {pair[1]} | {sizes[pair]:,} | {summary(saves[pair])} | "
                f"{summary(loads[pair])} |"
            )
    finally:
        await pydantic_toast.aclose_storage()
        weed.stop()
        connection = await asyncpg.connect(admin)
        await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await connection.close()
        client_redis = aioredis.Redis.from_url(os.environ["TOAST_TEST_REDIS_URL"])
        keys = [key async for key in client_redis.scan_iter(match=f"{redis_prefix}:*")]
        if keys:
            await client_redis.delete(*keys)
        await client_redis.aclose()
        shutil.rmtree(tmp, ignore_errors=True)


def summary(seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return f"{statistics.median(ms):.1f} [{min(ms):.1f}-{max(ms):.1f}]"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=float, default=1.0, help="megabytes of JSON")
    arguments = parser.parse_args()
    asyncio.run(run(arguments.rounds, arguments.size))
