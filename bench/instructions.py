"""Instructions per operation of the library's own CPU work, counted by callgrind (noise-free).

    python bench/instructions.py            # a markdown table
    python bench/instructions.py --json     # JSON (bench/run.py includes it in the report)

A worker process runs under ``valgrind --tool=callgrind --zero-before=getppid
--dump-before=getpgrp``: for each measured operation it warms up, calls ``os.getppid()`` (the
counters are zeroed), runs the operation N times, and calls ``os.getpgrp()`` (the counters since
the zero are dumped to a file). Instructions per operation = the dump's total / N, minus the
same loop around a no-op. Counts include every thread (the sync API's loop thread too). They
repeat to within a fraction of a percent, however busy the machine is.

Operations, for each workload, on ``memory://``:

* plain Pydantic: ``model_dump_json()``, ``model_validate_json()`` and both, on a ``BaseModel``
  with the same fields: the floor for any library that stores JSON;
* the library's encode (the stored JSON of a model, without writing it) and decode
  (``model_validate_json`` of the full stored data, through the wrap validator);
* ``await obj.asave()``, ``await Model.aload(ref)`` and the sync ``model_dump()`` /
  ``model_validate(ref)``, each a whole single save or load on ``memory://``;
* the same saves again on the unchanged instances (re-dumps: no write since change tracking).

With ``--redis URL`` (a throwaway key prefix is used and deleted), per workload also the client
side of a round trip to Redis (the server's work is another process, not counted): raw
redis.asyncio ``SET``/``GET`` of the plain model's JSON against the library's async and sync
single save and load, and a batch of ``BATCH`` records (10 of 100 KB: a 10 MB reply takes
valgrind longer than the socket timeout) (raw: a pipeline of ``SET`` and one
``MGET``; the library: ``adump``/``avalidate``), per record.

Warm-ups run on instances of their own, so a measured save is always a first save.
``--src PATH`` counts another source tree (e.g. a worktree of an older commit) with this script.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if "--src" not in sys.argv:
    sys.path.insert(0, str(HERE.parent / "src"))
else:
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--src") + 1]).resolve()))

import callgrind  # noqa: E402
from workloads import WORKLOADS, Workload  # noqa: E402

WARMUP = 20
BATCH = 100


# Each segment starts right after a full collection: which of the collector's runs land inside
# it then depends on its own allocations only. Without it, a full collection made due by the
# segments before could land in one tree's segment and not another's (seen: a 10 fields sync
# save counted 186,631 instructions at 256 operations and 171,585 at 400, against 171,520 for
# the tree before, whose code path was the same).


def _segment(label: str, count: int, operation: Callable[[int], Any], log: list[str]) -> None:
    # Warm-up (caches, lazy imports, first connections) on indices count.. : instances of its
    # own, so that the measured operations never repeat one already done.
    for i in range(count, count + WARMUP):
        operation(i)
    gc.collect()  # (see above)
    os.getppid()  # callgrind: zero the counters
    for i in range(count):
        operation(i)
    os.getpgrp()  # callgrind: dump the counters since the zero
    log.append(label)


async def _asegment(
    label: str, count: int, operation: Callable[[int], Awaitable[Any]], log: list[str]
) -> None:
    for i in range(count, count + WARMUP):
        await operation(i)
    gc.collect()
    os.getppid()
    for i in range(count):
        await operation(i)
    os.getpgrp()
    log.append(label)


def _nothing(i: int) -> None:
    return None


async def _anothing(i: int) -> None:
    return None


def _loop_segments(name: str, count: int, loop: asyncio.AbstractEventLoop, log: list[str]) -> None:
    """The measuring loops around a no-op: subtracted from the other segments of ``name``."""
    _segment(f"{name}|loop", count, _nothing, log)
    loop.run_until_complete(_asegment(f"{name}|async loop", count, _anothing, log))


def worker(count: int, workloads: list[Workload], redis_url: str | None = None) -> list[str]:
    """Run every measured segment; return their labels in dump order."""
    log: list[str] = []
    loop = asyncio.new_event_loop()
    for workload in workloads:
        if redis_url is None:
            _count_workload(workload, count, loop, log)
        else:
            _count_redis(workload, count, loop, log, redis_url)
    loop.close()
    return log


def _count_redis(
    workload: Workload, count: int, loop: asyncio.AbstractEventLoop, log: list[str], url: str
) -> None:
    """Client-side instructions of single and batch saves and loads on Redis, raw and ours."""
    import redis.asyncio as aioredis

    import pydantic_toast

    prefix = f"cg{uuid.uuid4().hex[:8]}"
    plain = workload.plain_model()
    model = workload.external_model("Counted", f"{url}?prefix={prefix}", "counted")
    total = count + WARMUP
    name = workload.name
    client = aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(url, max_connections=50)
    )
    plains = [plain(**workload.values(i)) for i in range(total)]
    raw_keys = [f"{prefix}:raw:{uuid.uuid4()}" for _ in range(total)]
    try:
        _loop_segments(name, count, loop, log)

        async def raw_save(i: int) -> None:
            await client.set(f"{prefix}:raw:{uuid.uuid4()}", plains[i].model_dump_json())

        async def raw_set(i: int) -> None:  # the keys raw_load reads
            await client.set(raw_keys[i], plains[i].model_dump_json())

        async def raw_load(i: int) -> None:
            plain.model_validate_json(await client.get(raw_keys[i]))

        loop.run_until_complete(_asegment(f"{name}|async save (raw SET)", count, raw_save, log))
        for i in range(total):
            loop.run_until_complete(raw_set(i))
        loop.run_until_complete(_asegment(f"{name}|async load (raw GET)", count, raw_load, log))

        ours = [model(**workload.values(i)) for i in range(total)]
        references: dict[int, Any] = {}

        async def asave(i: int) -> None:
            references[i] = await ours[i].asave()

        async def aload(i: int) -> None:
            await model.aload(references[i])

        loop.run_until_complete(_asegment(f"{name}|async save (Redis)", count, asave, log))
        loop.run_until_complete(_asegment(f"{name}|async load (Redis)", count, aload, log))
        fresh = [model(**workload.values(i)) for i in range(total)]
        dumped: dict[int, Any] = {}

        def save(i: int) -> None:
            dumped[i] = fresh[i].model_dump()

        _segment(f"{name}|sync save (Redis)", count, save, log)
        _segment(f"{name}|sync load (Redis)", count, lambda i: model.model_validate(dumped[i]), log)

        # Batches: size records per operation, reported per record.
        size = BATCH if workload.batch >= 10_000 else 10
        batches = max(1, count // 10)
        rounds = batches + WARMUP // 10
        plain_batches = [
            [plain(**workload.values(i * size + j)) for j in range(size)] for i in range(rounds)
        ]
        raw_batch_keys: dict[int, list[str]] = {}

        async def raw_batch_save(i: int) -> None:
            keys = [f"{prefix}:raw:{uuid.uuid4()}" for _ in range(size)]
            async with client.pipeline(transaction=False) as pipe:
                for key, obj in zip(keys, plain_batches[i], strict=True):
                    pipe.set(key, obj.model_dump_json())
                await pipe.execute()
            raw_batch_keys[i] = keys

        async def raw_batch_load(i: int) -> None:
            [plain.model_validate_json(v) for v in await client.mget(raw_batch_keys[i])]

        our_batches = [
            [model(**workload.values(i * size + j)) for j in range(size)] for i in range(rounds)
        ]
        our_batch_refs: dict[int, Any] = {}
        adapter: Any = list[model]  # type: ignore[valid-type]

        async def batch_save(i: int) -> None:
            our_batch_refs[i] = list(await pydantic_toast.adump(our_batches[i]))

        async def batch_load(i: int) -> None:
            await pydantic_toast.avalidate(adapter, our_batch_refs[i])

        for label, operation in (
            ("async batch save (raw pipeline SET)", raw_batch_save),
            ("async batch load (raw MGET)", raw_batch_load),
            ("async batch save (Redis)", batch_save),
            ("async batch load (Redis)", batch_load),
        ):
            _batch_segment(f"{name}|{label}", batches, size, operation, loop, log)
    finally:
        loop.run_until_complete(pydantic_toast.aclose_storage())
        pydantic_toast.close_storage()
        loop.run_until_complete(client.aclose())
        from stores import delete_redis_prefix

        delete_redis_prefix(url, f"{prefix}:")


def _batch_segment(
    label: str,
    batches: int,
    size: int,
    operation: Callable[[int], Awaitable[Any]],
    loop: asyncio.AbstractEventLoop,
    log: list[str],
) -> None:
    """Warm up on the batches past ``batches``, then measure the first ``batches``; the
    dump is divided by ``count``, so its label carries the records per operation."""

    async def run() -> None:
        for i in range(batches, batches + WARMUP // 10):
            await operation(i)
        gc.collect()
        os.getppid()
        for i in range(batches):
            await operation(i)
        os.getpgrp()

    loop.run_until_complete(run())
    log.append(f"{label}#{batches * size}")


def _count_workload(
    workload: Workload, count: int, loop: asyncio.AbstractEventLoop, log: list[str]
) -> None:
    plain = workload.plain_model()
    model = workload.external_model(
        "Counted",
        f"memory://counted-{uuid.uuid4().hex[:8]}",
        f"counted_{uuid.uuid4().hex[:8]}",
    )
    total = count + WARMUP
    plains = [plain(**workload.values(i)) for i in range(total)]
    plain_json = [p.model_dump_json() for p in plains]
    ours = [model(**workload.values(i)) for i in range(total)]
    name = workload.name
    _loop_segments(name, count, loop, log)
    _segment(f"{name}|plain encode", count, lambda i: plains[i].model_dump_json(), log)
    _segment(f"{name}|plain decode", count, lambda i: plain.model_validate_json(plain_json[i]), log)
    _segment(
        f"{name}|plain encode+decode",
        count,
        lambda i: plain.model_validate_json(plains[i].model_dump_json()),
        log,
    )
    try:  # internal API: the restructure may move it
        from pydantic_toast._saving import collecting, store

        encodes = [model(**workload.values(i)) for i in range(total)]
        _segment(
            f"{name}|library encode (no write)",
            count,
            lambda i: collecting(lambda: store(encodes[i])),
            log,
        )
    except ImportError:
        pass
    _segment(
        f"{name}|library decode (model_validate_json of full data)",
        count,
        lambda i: model.model_validate_json(plain_json[i]),
        log,
    )
    references: dict[int, Any] = {}

    async def asave(i: int) -> None:
        references[i] = await ours[i].asave()

    loop.run_until_complete(_asegment(f"{name}|async save (memory://)", count, asave, log))

    async def aload(i: int) -> None:
        await model.aload(references[i])

    loop.run_until_complete(_asegment(f"{name}|async load (memory://)", count, aload, log))

    async def aredump(i: int) -> None:
        await ours[i].asave()

    loop.run_until_complete(
        _asegment(f"{name}|async re-dump, unchanged (memory://)", count, aredump, log)
    )
    fresh = [model(**workload.values(i)) for i in range(total)]
    dumped: dict[int, Any] = {}

    def save(i: int) -> None:
        dumped[i] = fresh[i].model_dump()

    _segment(f"{name}|sync save (memory://)", count, save, log)
    _segment(f"{name}|sync load (memory://)", count, lambda i: model.model_validate(dumped[i]), log)
    _segment(
        f"{name}|sync re-dump, unchanged (memory://)", count, lambda i: fresh[i].model_dump(), log
    )


def count_instructions(
    count: int,
    quick: bool,
    src: Path | None = None,
    workload: str | None = None,
    redis_url: str | None = None,
) -> list[dict[str, Any]]:
    totals = callgrind.run_worker(
        [__file__, "--worker", str(count)]
        + (["--quick"] if quick else [])
        + (["--src", str(src)] if src is not None else [])
        + (["--workload", workload] if workload else [])
        + (["--redis", redis_url] if redis_url else []),
        timeout=1800,
    )
    labels = list(totals)
    batched: set[str] = set()
    per_op = {}
    for label, instructions in totals.items():
        name, _, records = label.partition("#")  # a batch: per record, loop included
        per_op[name] = instructions / (int(records) if records else count)
        if records:
            batched.add(name)
    results = []
    for workload in dict.fromkeys(label.split("|")[0] for label in labels):
        ops = {
            label.split("|")[1]: value
            for label, value in per_op.items()
            if label.startswith(workload + "|")
        }
        sync_loop, async_loop = ops.pop("loop"), ops.pop("async loop")
        for operation in ops:
            if f"{workload}|{operation}" not in batched:
                ops[operation] -= async_loop if operation.startswith("async") else sync_loop
        if redis_url:
            results.append({"workload": workload, "count": count, "ops": _redis_ratios(ops)})
            continue
        plain = ops["plain encode+decode"]
        library = ops["async save (memory://)"] + ops["async load (memory://)"]
        results.append(
            {
                "workload": workload,
                "count": count,
                "ops": {k: round(v) for k, v in ops.items()},
                "library_vs_plain": round(library / plain, 3),
            }
        )
    return results


def _redis_ratios(ops: dict[str, float]) -> dict[str, float]:
    """The counts, and each of the library's against the raw operation it matches."""
    raw = {
        "save": ops["async save (raw SET)"],
        "load": ops["async load (raw GET)"],
        "batch save": ops["async batch save (raw pipeline SET)"],
        "batch load": ops["async batch load (raw MGET)"],
    }
    rounded: dict[str, float] = {k: round(v) for k, v in ops.items()}
    for operation, value in ops.items():
        if "(Redis)" in operation:
            kind = operation.removeprefix("async ").removeprefix("sync ").split(" (")[0]
            rounded[f"{operation} / raw"] = round(value / raw[kind], 3)
    return rounded


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--worker", type=int, metavar="N", help=argparse.SUPPRESS)
    # 256: a multiple of the 128 ids the library makes per read of the random source
    # (pydantic_toast._ids), so that a segment of first saves pays for exactly its own ids.
    parser.add_argument("--count", type=int, default=256, help="operations per segment")
    parser.add_argument(
        "--quick", action="store_true", help="20 operations per segment (saves: ± 1 id batch)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--src", type=Path, help="the source tree to count (default: ../src)")
    parser.add_argument("--workload", help="only workloads whose name contains this")
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="count Redis round trips instead (client side), e.g. "
        "redis://127.0.0.1:6379/0 (a throwaway key prefix, deleted afterwards)",
    )
    args = parser.parse_args()
    if args.worker:
        chosen = [w for w in WORKLOADS if not args.workload or args.workload in w.name]
        print(json.dumps(worker(args.worker, chosen, args.redis)))
        return
    count = 20 if args.quick else args.count
    results = count_instructions(count, args.quick, args.src, args.workload, args.redis)
    if args.json:
        print(json.dumps(results, indent=1))
        return
    if args.redis:
        print("| workload | operation | instructions/op (batches: per record) |")
        print("|---|---|---|")
        for result in results:
            for operation, value in result["ops"].items():
                shown = f"{value:.2f}×" if operation.endswith("/ raw") else f"{value:,}"
                print(f"| {result['workload']} | {operation} | {shown} |")
        return
    print("| workload | operation | instructions/op | vs plain encode+decode |")
    print("|---|---|---|---|")
    for result in results:
        plain = result["ops"]["plain encode+decode"]
        for operation, value in result["ops"].items():
            print(f"| {result['workload']} | {operation} | {value:,} | {value / plain:.2f}× |")
        print(
            f"| {result['workload']} | library save+load / plain | | "
            f"{result['library_vs_plain']:.2f}× |"
        )


if __name__ == "__main__":
    main()
