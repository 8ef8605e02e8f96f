"""Redis count() for 20,000 records of 2 KB: the index lookup against the old full scan.

Usage: ``python bench/redis_count.py [redis_url]`` (default ``redis://127.0.0.1:6379/0``).
Writes 20,000 records under a key prefix of its own (deleted afterwards), then times, in
interleaved rounds (11 repetitions, median and spread), ``count()`` as it is now (one script:
ZCARD of the class index less ZCOUNT of its expired entries) and the previous implementation
(pages of 1,000 records through ``list_records``, each page one script that reads the
documents, as the old listing's MGET did).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from uuid import uuid4

import redis.asyncio as aioredis

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, PageCursor
from pydantic_toast._url import StorageURL

RECORDS = 20_000
REPETITIONS = 11


async def main(base_url: str) -> None:
    prefix = f"toast_bench_{uuid4().hex[:8]}"
    url = f"{base_url}?prefix={prefix}"

    class Doc(ExternalBaseModel):
        body: str
        model_config = ExternalConfigDict(storage=url, external_name="BenchDoc")

    try:
        for _ in range(0, RECORDS, 1000):
            await pydantic_toast.adump([Doc(body="x" * 2000) for _ in range(1000)])
        backend = (await pydantic_toast.current_storage().connected(StorageURL.parse(url))).backend

        async def index() -> int:
            return int(await backend.count("BenchDoc"))

        async def scan() -> int:  # count() before: every id checked against its record
            total, after = 0, None
            while True:
                page = await backend.list_records("BenchDoc", limit=1000, after=after)
                total += len(page)
                if len(page) < 1000:
                    return total
                after = PageCursor.of(page[-1])

        lookup: list[float] = []
        scanned: list[float] = []
        for _ in range(REPETITIONS):
            for samples, call in ((lookup, index), (scanned, scan)):
                start = time.perf_counter()
                counted = await call()
                samples.append(time.perf_counter() - start)
                assert counted == RECORDS
        print(f"count() index lookup: {_ms(lookup)}")
        print(f"count() by scan (before): {_ms(scanned)}")
    finally:
        await pydantic_toast.aclose_storage()
        client = aioredis.Redis.from_url(base_url)
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for chunk in range(0, len(keys), 1000):
            await client.delete(*keys[chunk : chunk + 1000])
        await client.aclose()


def _ms(samples: list[float]) -> str:
    median = statistics.median(samples) * 1000
    return f"median {median:.2f} ms (min {min(samples) * 1000:.2f}, max {max(samples) * 1000:.2f})"


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"))
