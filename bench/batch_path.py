"""Batch save and load against the raw drivers, interleaved: wall and CPU per record.

    python bench/batch_path.py --backend postgresql --workload "10 fields" --rounds 5
    python bench/batch_path.py --backend redis --workload "100 KB" --count 500 --sync

One process, one throwaway PostgreSQL database (or Redis key prefix; a memory:// store).
Each round runs every system once, in a rotated order: one batch save of ``--count`` new
records, then one batch load of them. The raw drivers: asyncpg ``executemany`` of an upsert
and ``SELECT ... = ANY($1)`` on one connection (prepared statements); redis.asyncio a pipeline
of SETs and ``MGET``; on memory://, plain Pydantic JSON into a dict (the floor of any store).
All encode and decode with a plain Pydantic model of the same fields. pydantic-toast runs
``adump(list)`` / ``avalidate(list[Model], references)`` on the same event loop (``--sync``
adds ``dump`` / ``validate`` from the main thread). Printed per system: median [min-max] over
rounds of wall µs per record, of CPU µs per record (this process, all threads), of the part
of it the garbage collector took (``gc.callbacks``: a batch that keeps many container objects
alive triggers a full collection, which walks every object of the process) and of the ratio
to the raw driver measured in the same round, with the load average.

``--instructions`` counts instead, with ``valgrind --tool=callgrind``, the instructions per
record this process runs for one batch save and one batch load of each system (after a
warm-up batch): noise-free, repeatable on a busy machine; a server's own work is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if "--src" in sys.argv:  # count another source tree (a worktree of an older commit)
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--src") + 1]).resolve()))

from collections.abc import Iterator  # noqa: E402
from contextlib import ExitStack, contextmanager  # noqa: E402

import callgrind  # noqa: E402
from databases import throwaway_postgres  # noqa: E402
from stores import REDIS_URL, delete_redis_prefix  # noqa: E402
from systems import RawAsyncpg, RawRedis, System, toast_on  # noqa: E402
from workloads import WORKLOADS, Workload  # noqa: E402

import pydantic_toast  # noqa: E402


class PlainJSON(System):
    """The floor on memory://: plain Pydantic JSON into a dict and back, no store at all."""

    name = "plain Pydantic JSON"
    backend = "memory"

    async def setup(self) -> None:
        self.stored: dict[uuid.UUID, bytes] = {}

    async def save_many(self, objs: Sequence[Any]) -> list[Any]:
        keys = [uuid.uuid4() for _ in objs]
        for key, obj in zip(keys, objs, strict=True):
            self.stored[key] = obj.__pydantic_serializer__.to_json(obj)
        return keys

    async def load_many(self, keys: Sequence[Any]) -> list[Any]:
        stored = self.stored
        return [self.plain.model_validate_json(stored[key]) for key in keys]


def _systems(backend: str, sync: bool) -> list[type[Any]]:
    raw = {"postgresql": RawAsyncpg, "redis": RawRedis, "memory": PlainJSON}[backend]
    made: list[type[Any]] = [raw]
    for api in ("async", "sync") if sync else ("async",):
        made.append(toast_on(backend, sync=api == "sync", name=f"toast {api} ({backend})"))
    return made


class _GCTime:
    """CPU seconds the garbage collector has run so far (a ``gc.callbacks`` entry). A full
    collection walks every object of the process, the other systems' too: its cost lands on
    whichever system's allocations trigger it."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.total += time.process_time() - self._started


_gc_time = _GCTime()
gc.callbacks.append(_gc_time)


def _measure(
    system: Any, count: int, loop: asyncio.AbstractEventLoop, offset: int
) -> dict[str, float]:
    """One batch save and one batch load of ``count`` records: µs per record, wall, CPU and
    the garbage collector's share."""
    objs = [system.make(offset + i) for i in range(count)]
    gc.collect()
    gc0, cpu0, wall0 = _gc_time.total, time.process_time(), time.perf_counter()
    keys = _save(system, objs, loop)
    gc1, cpu1, wall1 = _gc_time.total, time.process_time(), time.perf_counter()
    loaded = _load(system, keys, loop)
    gc2, cpu2, wall2 = _gc_time.total, time.process_time(), time.perf_counter()
    assert len(loaded) == count, f"{system.name}: loaded {len(loaded)} of {count}"
    per = 1e6 / count
    return {
        "save": (wall1 - wall0) * per,
        "save cpu": (cpu1 - cpu0) * per,
        "save gc": (gc1 - gc0) * per,
        "load": (wall2 - wall1) * per,
        "load cpu": (cpu2 - cpu1) * per,
        "load gc": (gc2 - gc1) * per,
    }


def _save(system: Any, objs: list[Any], loop: asyncio.AbstractEventLoop) -> Any:
    if system.sync:
        return system.save_many_sync(objs)
    return loop.run_until_complete(system.save_many(objs))


def _load(system: Any, keys: Any, loop: asyncio.AbstractEventLoop) -> Any:
    if system.sync:
        return system.load_many_sync(keys)
    return loop.run_until_complete(system.load_many(keys))


@contextmanager
def _running(
    backend: str,
    workload: Workload,
    sync: bool,
    loop: asyncio.AbstractEventLoop,
    pg_url: str | None = None,
) -> Iterator[list[Any]]:
    """The systems of ``backend``, set up on a throwaway store; torn down afterwards."""
    toast_prefix = f"batch{uuid.uuid4().hex[:6]}"
    with ExitStack() as stack:
        if pg_url is None and backend == "postgresql":
            pg_url = stack.enter_context(throwaway_postgres("toast_batch"))
        urls = {
            "postgresql": pg_url or "",
            "redis": f"{REDIS_URL}?prefix={toast_prefix}",
            "redis_prefix": f"batch{uuid.uuid4().hex[:6]}",
            "memory": f"memory://batch-{uuid.uuid4().hex[:8]}",
        }
        raw_urls = urls | {"redis": REDIS_URL}  # the raw client takes no library options
        systems = [
            cls(workload, raw_urls if i == 0 else urls)
            for i, cls in enumerate(_systems(backend, sync))
        ]
        for system in systems:
            loop.run_until_complete(system.setup())
        try:
            yield systems
        finally:
            loop.run_until_complete(systems[0].teardown())
            loop.run_until_complete(pydantic_toast.aclose_storage())
            pydantic_toast.close_storage()
            if backend == "redis":  # the throwaway key prefix
                delete_redis_prefix(REDIS_URL, f"{toast_prefix}:")


def interleaved(args: argparse.Namespace, workload: Workload, count: int) -> None:
    """Wall and CPU per record, systems round-robin: print the table."""
    loop = asyncio.new_event_loop()
    with _running(args.backend, workload, args.sync, loop) as systems:
        results: dict[str, dict[str, list[float]]] = {s.name: {} for s in systems}
        offset = 0
        for system in systems:  # warm-up (connections, prepared statements, caches), discarded
            _measure(system, min(count, 200), loop, offset)
        for r in range(args.rounds):
            order = systems[r % len(systems) :] + systems[: r % len(systems)]
            offset += count
            figures = {s.name: _measure(s, count, loop, offset) for s in order}
            raw = figures[systems[0].name]
            for name, values in figures.items():
                for key, value in values.items():
                    results[name].setdefault(key, []).append(value)
                    if key in ("save", "load"):  # the ratios printed (a raw GC time can be 0)
                        results[name].setdefault(f"{key} ratio", []).append(value / raw[key])
    loop.close()

    def fmt(values: list[float]) -> str:
        m = statistics.median(values)
        spec = ".2f" if m < 10 else ".1f" if m < 100 else ".0f"
        return f"{m:{spec}} [{min(values):{spec}}–{max(values):{spec}}]"

    load = os.getloadavg()
    print(
        f"\n{args.workload}, {args.backend}, {args.rounds} rounds × {count:,} records; "
        f"load average {load[0]:.2f} {load[1]:.2f}"
    )
    cols = [
        "save",
        "save ratio",
        "save cpu",
        "save gc",
        "load",
        "load ratio",
        "load cpu",
        "load gc",
    ]
    print(
        "| system | save µs/rec | save ratio | save CPU µs/rec | of which GC | load µs/rec "
        "| load ratio | load CPU µs/rec | of which GC |"
    )
    print("|---" * (len(cols) + 1) + "|")
    for system in systems:
        row = results[system.name]
        print(f"| {system.name} | " + " | ".join(fmt(row[c]) for c in cols) + " |")


def count_worker(args: argparse.Namespace, workload: Workload, count: int) -> None:
    """Under callgrind: one batch save and load per system, each between zero and dump marks."""
    loop = asyncio.new_event_loop()
    labels = []
    with _running(args.backend, workload, args.sync, loop, args.pg_url) as systems:
        for system in systems:
            _measure(system, count, loop, 0)  # warm-up
        for system in systems:
            objs = [system.make(count + i) for i in range(count)]
            gc.collect()
            os.getppid()  # callgrind: zero the counters
            keys = _save(system, objs, loop)
            os.getpgrp()  # callgrind: dump the counters since the zero
            gc.collect()
            os.getppid()
            _load(system, keys, loop)
            os.getpgrp()
            labels += [f"{system.name}|save", f"{system.name}|load"]
    loop.close()
    print(json.dumps(labels))


def count_instructions(args: argparse.Namespace, workload: Workload, count: int) -> None:
    """Run :func:`count_worker` under callgrind; print instructions per record."""
    with ExitStack() as stack:
        argv = [a for a in sys.argv[1:] if a != "--instructions"]
        if args.backend == "postgresql":  # created and migrated here, not under valgrind
            argv += ["--pg-url", stack.enter_context(throwaway_postgres("toast_batch"))]
        totals = callgrind.run_worker(
            [
                __file__,
                "--count-worker",
                *argv,
                *(["--count", str(count)] if "--count" not in argv else []),
            ]
        )
    per_record = {label: instructions / count for label, instructions in totals.items()}
    labels = list(totals)
    names = list(dict.fromkeys(label.split("|")[0] for label in labels))
    print(f"\n{args.workload}, {args.backend}, {count:,} records per batch: instructions/record")
    print("| system | save | save ratio | load | load ratio |")
    print("|---|---|---|---|---|")
    raw_save, raw_load = per_record[f"{names[0]}|save"], per_record[f"{names[0]}|load"]
    for name in names:
        save, load = per_record[f"{name}|save"], per_record[f"{name}|load"]
        print(
            f"| {name} | {save:,.0f} | {save / raw_save:.2f} "
            f"| {load:,.0f} | {load / raw_load:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--backend", default="postgresql", choices=("postgresql", "redis", "memory")
    )
    parser.add_argument("--workload", default="10 fields", choices=[w.name for w in WORKLOADS])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, help="records per batch (default: the workload's)")
    parser.add_argument("--sync", action="store_true", help="also the sync API (dump/validate)")
    parser.add_argument("--src", type=Path, help="the source tree to measure (default: installed)")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions (callgrind) instead"
    )
    parser.add_argument("--count-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pg-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workload: Workload = next(w for w in WORKLOADS if w.name == args.workload)
    if args.count_worker:
        count_worker(args, workload, args.count)
    elif args.instructions:
        count_instructions(args, workload, args.count or min(workload.batch, 1000))
    else:
        interleaved(args, workload, args.count or workload.batch)


if __name__ == "__main__":
    main()
