"""Benchmark pydantic-toast against the raw drivers, the alternatives and the C floors, interleaved.

    make bench                          # full run (about 15 minutes on 2 cores)
    make bench BENCH_ARGS=--quick       # a few minutes
    make bench-snapshot                 # full run, written to bench/ (RESULTS.md, JSON, PNG)

How it measures: for each workload, every system is set up once; a warm-up round runs every
phase of every system (discarded); then R repetitions each run every phase (single saves and
loads, batches, 100 concurrent tasks) round-robin over the systems, in an order rotated each
repetition. Each repetition gives each system's ratio to the raw driver of its backend measured
minutes apart at most; the report gives the median of those ratios and their min-max.

Servers: by default a temporary PostgreSQL cluster (fsync on) and a throwaway redis-server,
started and removed by the run. ``--postgres-url`` (a throwaway database is created on it and
dropped) and ``--redis-url`` (keys under a run prefix, deleted afterwards; never flushed) use
given servers instead. ``--pin same|split`` pins the throwaway servers to the harness's CPU or
to the other one (see ``stores.PINNINGS``: unpinned, where the scheduler puts each server
process moves a PostgreSQL round trip's p50 by a factor of two). The throwaway cluster's
processes allocate as long-lived ones do (``stores.WARM_MALLOC``): with glibc's defaults a
connection's speed at sending 100 KB rows depended on the statements it had run before.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from floors import FLOORS, Floor, summary  # noqa: E402
from report import METRICS, write_outputs  # noqa: E402
from stores import PINNINGS, Servers, servers  # noqa: E402
from systems import SLOW_BATCH, SYSTEMS, System  # noqa: E402
from workloads import WORKLOADS, Workload  # noqa: E402

import pydantic_toast  # noqa: E402

# SQLModel warns when the per-run table class is defined again under the same name.
warnings.filterwarnings("ignore", message="This declarative base already contains")


@dataclass(frozen=True)
class Sizes:
    repetitions: int
    single: int  # sequential saves, then as many loads, per system and repetition
    batch: int | None  # records per batch (None: the workload's own size)
    tasks: int  # concurrent tasks
    per_task: int  # operations per task, per direction

    @classmethod
    def full(cls, repetitions: int) -> Sizes:
        return cls(repetitions, single=150, batch=None, tasks=100, per_task=2)

    @classmethod
    def quick(cls, repetitions: int) -> Sizes:
        return cls(repetitions, single=60, batch=300, tasks=100, per_task=1)

    @classmethod
    def warmup(cls) -> Sizes:
        return cls(1, single=30, batch=100, tasks=100, per_task=1)

    def batch_for(self, workload: Workload, system: Any) -> int:
        count = self.batch or workload.batch
        cap = getattr(system, "batch_cap", None)
        return min(count, cap) if cap else count


class Contender:
    """One system, driven phase by phase on the harness's own event loop."""

    def __init__(self, system: System | Floor, loop: asyncio.AbstractEventLoop) -> None:
        self.system = system
        self.loop = loop
        self.name = system.name
        self.backend = system.backend

    def setup(self) -> None:
        if isinstance(self.system, Floor):
            self.system.setup()
        elif not self.system.sync:
            self.loop.run_until_complete(self.system.setup())

    def teardown(self) -> None:
        if isinstance(self.system, Floor):
            self.system.teardown()
        elif self.system.sync:
            pydantic_toast.close_storage()
        else:
            self.loop.run_until_complete(self.system.teardown())

    def run(self, phase: str, workload: Workload, sizes: Sizes) -> dict[str, float]:
        system = self.system
        if isinstance(system, Floor):
            if phase == "single":
                return system.single(sizes.single)
            if phase == "batch":
                return system.batch(sizes.batch_for(workload, system))
            return system.concurrent(sizes.tasks, sizes.per_task)
        if system.sync:
            if phase == "single":
                return sync_single(system, sizes.single)
            if phase == "batch":
                return sync_batch(system, sizes.batch_for(workload, system))
            return {}
        if phase == "single":
            return self.loop.run_until_complete(async_single(system, sizes.single))
        if phase == "batch":
            count = sizes.batch_for(workload, system)
            return self.loop.run_until_complete(async_batch(system, count))
        return self.loop.run_until_complete(async_concurrent(system, sizes.tasks, sizes.per_task))


async def async_single(system: System, count: int) -> dict[str, float]:
    await system.begin_sequential()
    try:
        return await _async_single(system, count)
    finally:
        await system.end_sequential()


async def _async_single(system: System, count: int) -> dict[str, float]:
    objs = [system.make(i) for i in range(count)]
    saves, keys = [], []
    for obj in objs:
        started = time.perf_counter_ns()
        keys.append(await system.save(obj))
        saves.append((time.perf_counter_ns() - started) / 1000)
    loads = []
    for key in keys:
        started = time.perf_counter_ns()
        await system.load(key)
        loads.append((time.perf_counter_ns() - started) / 1000)
    return summary(saves, loads)


async def async_batch(system: System, count: int) -> dict[str, float]:
    await system.begin_sequential()
    try:
        return await _async_batch(system, count)
    finally:
        await system.end_sequential()


async def _async_batch(system: System, count: int) -> dict[str, float]:
    objs = [system.make(i) for i in range(count)]
    gc.collect()  # see _collected
    started = time.perf_counter()
    keys = await system.save_many(objs)
    saved = time.perf_counter()
    pause = _collected()
    loaded = await system.load_many(keys)
    finished = time.perf_counter()
    assert len(loaded) == count, f"{system.name}: loaded {len(loaded)} of {count}"
    return {
        "batch_save": count / (saved - started),
        "batch_load": count / (finished - saved - pause),
    }


def _collected() -> float:
    """A full collection between a batch save and its load, untimed; the seconds it took.

    Every system's batch starts from a collected heap, as in ``bench/batch_path.py``: else a
    full collection, which walks every object of the process (the other systems' included:
    40-57 ms at 10,000 records), lands in whichever system's batch happens to cross the
    collector's threshold. A collection the batch's own allocations set off is still timed.
    """
    started = time.perf_counter()
    gc.collect()
    return time.perf_counter() - started


async def async_concurrent(system: System, tasks: int, per_task: int) -> dict[str, float]:
    await system.begin_sequential()
    try:
        seeds = [await system.save(system.make(i)) for i in range(tasks)]
    finally:
        await system.end_sequential()
    objs = [[system.make(i) for _ in range(per_task)] for i in range(tasks)]

    async def loader(i: int) -> None:
        for _ in range(per_task):
            await system.load_concurrent(seeds[i])

    async def saver(i: int) -> None:
        for obj in objs[i]:
            await system.save_concurrent(obj)

    # Untimed: every pool opens the connections it keeps under this load.
    await asyncio.gather(*(system.load_concurrent(seed) for seed in seeds))
    started = time.perf_counter()
    await asyncio.gather(*(loader(i) for i in range(tasks)))
    loaded = time.perf_counter()
    await asyncio.gather(*(saver(i) for i in range(tasks)))
    saved = time.perf_counter()
    ops = tasks * per_task
    return {"conc_load": ops / (loaded - started), "conc_save": ops / (saved - loaded)}


def sync_single(system: Any, count: int) -> dict[str, float]:
    objs = [system.make(i) for i in range(count)]
    saves, keys = [], []
    for obj in objs:
        started = time.perf_counter_ns()
        keys.append(system.save_sync(obj))
        saves.append((time.perf_counter_ns() - started) / 1000)
    loads = []
    for key in keys:
        started = time.perf_counter_ns()
        system.load_sync(key)
        loads.append((time.perf_counter_ns() - started) / 1000)
    return summary(saves, loads)


def sync_batch(system: Any, count: int) -> dict[str, float]:
    objs = [system.make(i) for i in range(count)]
    gc.collect()  # see _collected
    started = time.perf_counter()
    keys = system.save_many_sync(objs)
    saved = time.perf_counter()
    pause = _collected()
    loaded = system.load_many_sync(keys)
    finished = time.perf_counter()
    assert len(loaded) == count, f"{system.name}: loaded {len(loaded)} of {count}"
    return {
        "batch_save": count / (saved - started),
        "batch_load": count / (finished - saved - pause),
    }


PHASES = ("single", "batch", "concurrent")


def contenders_for(
    workload: Workload, urls: Servers, only: str | None, loop: asyncio.AbstractEventLoop
) -> list[Contender]:
    raw = urls.for_raw() | {"redis_prefix": urls.redis_prefix}
    toast = urls.for_toast() | {"redis_prefix": urls.redis_prefix}
    chosen: list[Contender] = []
    for system_class in SYSTEMS:
        if system_class.only_small and workload is not WORKLOADS[0]:
            continue
        is_raw = system_class.name.startswith("raw ")
        if only and not is_raw and only.lower() not in system_class.name.lower():
            continue
        is_toast = system_class.name.startswith("pydantic-toast")
        chosen.append(Contender(system_class(workload, toast if is_toast else raw), loop))
    for floor_class in FLOORS:
        if only and only.lower() not in floor_class.name.lower():
            continue
        chosen.append(Contender(floor_class(workload, raw), loop))
    return chosen


def measure(
    urls: Servers, sizes: Sizes, only: str | None, workloads: list[Workload]
) -> list[dict[str, Any]]:
    """One row per (workload, system, repetition) with that repetition's figures."""
    rows: list[dict[str, Any]] = []
    loop = asyncio.new_event_loop()
    try:
        for workload in workloads:
            contenders = contenders_for(workload, urls, only, loop)
            for contender in contenders:
                contender.setup()
            try:
                for contender in contenders:  # warm-up: every phase once, discarded
                    for phase in PHASES:
                        contender.run(phase, workload, Sizes.warmup())
                for repetition in range(sizes.repetitions):
                    shift = repetition % len(contenders)
                    order = contenders[shift:] + contenders[:shift]
                    figures: dict[str, dict[str, float]] = {c.name: {} for c in contenders}
                    gc.collect()  # once per repetition: a full collection of a big heap is slow
                    started = time.perf_counter()
                    spent: dict[str, float] = {}
                    for phase in PHASES:
                        for contender in order:
                            phase_started = time.perf_counter()
                            figures[contender.name] |= contender.run(phase, workload, sizes)
                            spent[f"{contender.name} {phase}"] = time.perf_counter() - phase_started
                    slowest = sorted(spent.items(), key=lambda item: -item[1])[:4]
                    print(
                        f"  {workload.name:>10} | repetition {repetition + 1}/"
                        f"{sizes.repetitions} ({time.perf_counter() - started:.0f} s; slowest: "
                        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in slowest)
                        + ")",
                        file=sys.stderr,
                        flush=True,
                    )
                    for contender in contenders:
                        rows.append(
                            {
                                "workload": workload.name,
                                "system": contender.name,
                                "backend": contender.backend,
                                "repetition": repetition,
                            }
                            | {m: figures[contender.name].get(m) for m in METRICS}
                        )
            finally:
                for contender in contenders:
                    contender.teardown()
    finally:
        loop.close()
    return rows


def rss_probes(urls: Servers, sizes: Sizes) -> list[dict[str, Any]]:
    """Peak RSS growth of one batch save and load (pydantic-toast async), each in a child."""
    memory = []
    toast_urls = urls.for_toast()
    for index in (0, 1):
        for kind in ("postgresql", "redis"):
            count = sizes.batch or WORKLOADS[index].batch
            output = subprocess.run(
                [sys.executable, HERE / "rss.py", kind, str(index), str(count), toast_urls[kind]],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            memory.append(
                {"workload": WORKLOADS[index].name, "backend": kind, "records": count}
                | json.loads(output)
            )
    return memory


def instruction_counts(quick: bool) -> list[dict[str, Any]] | None:
    """Callgrind instruction counts per operation (bench/instructions.py), or None."""
    command = [sys.executable, str(HERE / "instructions.py"), "--json"]
    if quick:
        command.append("--quick")
    output = subprocess.run(command, capture_output=True, text=True, check=False)
    if output.returncode != 0:
        print(f"callgrind counts skipped: {output.stderr.strip()[-400:]}", file=sys.stderr)
        return None
    counts: list[dict[str, Any]] = json.loads(output.stdout)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 repetitions")
    parser.add_argument("--repetitions", "-r", type=int, help="repetitions (default 5, quick 2)")
    parser.add_argument("--only", help="only systems whose name contains this (raws always run)")
    parser.add_argument("--workload", help="only workloads whose name contains this")
    parser.add_argument("--postgres-url", help="use this server (a throwaway database on it)")
    parser.add_argument("--redis-url", help="use this Redis (keys under a run prefix)")
    parser.add_argument(
        "--pin",
        choices=PINNINGS,
        help="pin this process to CPU 0 and the throwaway servers to CPU 0 (same) or 1 (split)",
    )
    parser.add_argument("--no-callgrind", action="store_true", help="skip instruction counts")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS probes")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="output directory")
    args = parser.parse_args()
    repetitions = args.repetitions or (2 if args.quick else 5)
    sizes = Sizes.quick(repetitions) if args.quick else Sizes.full(repetitions)
    workloads = [w for w in WORKLOADS if not args.workload or args.workload in w.name]
    started = time.perf_counter()
    counts = None if args.no_callgrind else instruction_counts(args.quick)
    with servers(args.postgres_url, args.redis_url, args.pin) as urls:
        rows = measure(urls, sizes, args.only, workloads)
        memory = [] if args.no_rss else rss_probes(urls, sizes)
    elapsed = time.perf_counter() - started
    meta = {
        "repetitions": sizes.repetitions,
        "single_ops": sizes.single,
        "batch": {w.name: sizes.batch or w.batch for w in workloads},
        "tasks": sizes.tasks,
        "per_task": sizes.per_task,
        "slow_batch": SLOW_BATCH,
        "servers": (
            f"throwaway (started by the run{f', pinned {args.pin}' if args.pin else ''}; "
            "PostgreSQL's processes with GLIBC_TUNABLES as in stores.WARM_MALLOC)"
            if urls.throwaway
            else "given URLs"
        ),
        "seconds": round(elapsed),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    text = write_outputs(args.out, rows, memory, counts, meta)
    print(text)
    print(f"({elapsed:.0f} s; written to {args.out})", file=sys.stderr)


if __name__ == "__main__":
    main()
