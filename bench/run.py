"""Benchmark pydantic-toast against the raw drivers and the alternatives, in one run.

    make bench                      # full run (a few minutes)
    make bench BENCH_ARGS=--quick   # under a minute

Servers: PostgreSQL from TOAST_BENCH_POSTGRES_URL (default postgres@127.0.0.1:5432; a
throwaway database is created, migrated and dropped), Redis from TOAST_BENCH_REDIS_URL (default
127.0.0.1:6379/0; keys under bench prefixes, deleted afterwards). Only ratios from the same run
are comparable: each figure is divided by the raw driver of its backend, measured alongside.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from databases import throwaway_postgres  # noqa: E402
from systems import SYSTEMS, ConcurrentRawAsyncpg, RawAsyncpg, RawRedis, System  # noqa: E402
from workloads import WORKLOADS, Workload  # noqa: E402

import pydantic_toast  # noqa: E402
from pydantic_toast.integrations.cli import main as toast_cli  # noqa: E402

RAW = {"postgresql": RawAsyncpg, "redis": RawRedis}
# SQLModel warns when the per-run table class is defined again under the same name.
warnings.filterwarnings("ignore", message="This declarative base already contains")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Sizes:
    def __init__(self, quick: bool) -> None:
        self.sequential = 100 if quick else 2000
        self.warmup = 10 if quick else 100
        self.batch_cap = 300 if quick else None
        self.concurrent_ops = 2 if quick else 10  # per task, 100 tasks

    def batch(self, workload: Workload) -> int:
        return min(workload.batch, self.batch_cap) if self.batch_cap else workload.batch


async def run_async(system: System, sizes: Sizes, concurrent: System | None) -> dict[str, Any]:
    await system.setup()
    try:
        objs = [system.make(i) for i in range(sizes.sequential + sizes.warmup)]
        for obj in objs[: sizes.warmup]:
            await system.load(await system.save(obj))
        saves, keys = [], []
        for obj in objs[sizes.warmup :]:
            started = time.perf_counter_ns()
            keys.append(await system.save(obj))
            saves.append((time.perf_counter_ns() - started) / 1000)
        loads = []
        for key in keys:
            started = time.perf_counter_ns()
            await system.load(key)
            loads.append((time.perf_counter_ns() - started) / 1000)
        result = summary(saves, loads)
        batch = [system.make(i) for i in range(sizes.batch(system.workload))]
        started = time.perf_counter()
        batch_keys = await system.save_many(batch)
        result["batch_save"] = len(batch) / (time.perf_counter() - started)
        started = time.perf_counter()
        loaded = await system.load_many(batch_keys)
        result["batch_load"] = len(batch) / (time.perf_counter() - started)
        assert len(loaded) == len(batch)
    finally:
        await system.teardown()
    if concurrent is not None:
        result["concurrent"] = await run_concurrent(concurrent, sizes)
    return result


async def run_concurrent(system: System, sizes: Sizes) -> float:
    await system.setup()
    try:
        seeds = [await system.save(system.make(i)) for i in range(100)]

        async def task(i: int) -> None:
            for _ in range(sizes.concurrent_ops):
                await system.load(seeds[i])
                await system.save(system.make(i))

        await asyncio.gather(*(task(i) for i in range(10)))  # warm the pool
        started = time.perf_counter()
        await asyncio.gather(*(task(i) for i in range(100)))
        return 100 * sizes.concurrent_ops * 2 / (time.perf_counter() - started)
    finally:
        await system.teardown()


def run_sync(system: Any, sizes: Sizes) -> dict[str, Any]:
    objs = [system.make(i) for i in range(sizes.sequential + sizes.warmup)]
    for obj in objs[: sizes.warmup]:
        system.load_sync(system.save_sync(obj))
    saves, keys = [], []
    for obj in objs[sizes.warmup :]:
        started = time.perf_counter_ns()
        keys.append(system.save_sync(obj))
        saves.append((time.perf_counter_ns() - started) / 1000)
    loads = []
    for key in keys:
        started = time.perf_counter_ns()
        system.load_sync(key)
        loads.append((time.perf_counter_ns() - started) / 1000)
    result = summary(saves, loads)
    batch = [system.make(i) for i in range(sizes.batch(system.workload))]
    started = time.perf_counter()
    batch_keys = system.save_many_sync(batch)
    result["batch_save"] = len(batch) / (time.perf_counter() - started)
    started = time.perf_counter()
    system.load_many_sync(batch_keys)
    result["batch_load"] = len(batch) / (time.perf_counter() - started)
    pydantic_toast.close_storage()
    return result


def summary(saves: list[float], loads: list[float]) -> dict[str, Any]:
    return {
        "save_p50": statistics.median(saves),
        "save_p99": percentile(saves, 0.99),
        "load_p50": statistics.median(loads),
        "load_p99": percentile(loads, 0.99),
    }


def rss_probe(kind: str, workload_index: int, count: int, url: str) -> None:
    """Run in a child process: peak RSS growth of one batch save and load (toast async)."""
    from systems import Toast

    workload = WORKLOADS[workload_index]
    toast = type("Probe", (Toast,), {"storage_kind": kind, "name": "probe", "backend": kind})
    system = toast(workload, {kind: url})

    async def probe() -> dict[str, float]:
        await system.setup()
        objs = [system.make(i) for i in range(count)]
        plain = workload.plain_model()
        json_bytes = sum(len(plain(**workload.values(i)).model_dump_json()) for i in range(count))
        await system.load(await system.save(system.make(0)))  # connect outside the window
        before = reset_peak_rss()
        keys = await system.save_many(objs)
        save_peak = peak_rss() - before
        del objs
        before = reset_peak_rss()
        await system.load_many(keys)
        load_peak = peak_rss() - before
        await system.teardown()
        return {
            "json_bytes": json_bytes,
            "save_rss": save_peak,
            "load_rss": load_peak,
        }

    print(json.dumps(asyncio.run(probe())))


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def reset_peak_rss() -> int:
    """Reset the peak-RSS mark to the current RSS (Linux); return the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS:")


def peak_rss() -> int:
    return _status("VmHWM:")


@contextmanager
def servers() -> Iterator[dict[str, str]]:
    """URLs of every store for one run; their data is removed afterwards."""
    import redis

    sqlite_file = Path(tempfile.mkdtemp()) / "bench.db"
    assert toast_cli(["migrate", f"sqlite:///{sqlite_file}"]) == 0
    redis_base = os.environ.get("TOAST_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    with throwaway_postgres("toast_bench") as postgres:
        try:
            yield {
                "postgresql": postgres,
                "redis": redis_base,
                "redis_toast": f"{redis_base}?prefix={prefix}",
                "sqlite": f"sqlite:///{sqlite_file}",
                "memory": f"memory://bench-{prefix}",
            }
        finally:
            pydantic_toast.close_storage()
            client = redis.Redis.from_url(redis_base)
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
            client.close()


def measure(sizes: Sizes, only: str | None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    rows: list[dict[str, Any]] = []
    with servers() as urls:
        toast_urls = urls | {"redis": urls["redis_toast"]}
        for workload in WORKLOADS:
            for system_class in SYSTEMS:
                if system_class.only_small and workload is not WORKLOADS[0]:
                    continue
                if only and only.lower() not in system_class.name.lower():
                    continue
                is_toast = system_class.__name__.startswith("Toast")
                system = system_class(workload, toast_urls if is_toast else urls)
                print(f"  {workload.name:>10} | {system_class.name}", file=sys.stderr, flush=True)
                if system.sync:
                    result = run_sync(system, sizes)
                else:
                    concurrent_class = (
                        ConcurrentRawAsyncpg if system_class is RawAsyncpg else system_class
                    )
                    concurrent = concurrent_class(workload, toast_urls if is_toast else urls)
                    result = asyncio.run(run_async(system, sizes, concurrent))
                rows.append(
                    {
                        "workload": workload.name,
                        "system": system_class.name,
                        "backend": system_class.backend,
                    }
                    | result
                )
        memory = []
        for index in (0, 1):
            for kind in ("postgresql", "redis"):
                count = sizes.batch(WORKLOADS[index])
                output = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--rss-probe",
                        kind,
                        str(index),
                        str(count),
                        toast_urls[kind],
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                memory.append(
                    {"workload": WORKLOADS[index].name, "backend": kind, "records": count}
                    | json.loads(output)
                )
    return rows, {"memory": json.dumps(memory)}


def ratio(value: float | None, raw: float | None) -> str:
    if value is None or not raw:
        return ""
    return f" ({value / raw:.2f}x)"


def report(rows: list[dict[str, Any]], extra: dict[str, str], sizes: Sizes) -> str:
    raw_rows = {
        (r["workload"], r["backend"]): r
        for r in rows
        if r["system"] in (RawAsyncpg.name, RawRedis.name)
    }
    lines = [
        "# pydantic-toast benchmark",
        "",
        f"{sizes.sequential} sequential saves and loads (p50/p99 µs), batches (records/s), "
        f"100 concurrent tasks (ops/s). Ratios in parentheses: to the raw driver of the same "
        "backend in this run (latency: lower is better; throughput: higher is better).",
        "",
        "| workload | system | save p50 | save p99 | load p50 | load p99 | batch save/s "
        "| batch load/s | concurrent ops/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        raw = raw_rows.get((r["workload"], r["backend"]), {})
        cells = [
            f"{r['save_p50']:.0f}{ratio(r['save_p50'], raw.get('save_p50'))}",
            f"{r['save_p99']:.0f}",
            f"{r['load_p50']:.0f}{ratio(r['load_p50'], raw.get('load_p50'))}",
            f"{r['load_p99']:.0f}",
            f"{r['batch_save']:.0f}{ratio(r['batch_save'], raw.get('batch_save'))}",
            f"{r['batch_load']:.0f}{ratio(r['batch_load'], raw.get('batch_load'))}",
            (
                f"{r['concurrent']:.0f}{ratio(r['concurrent'], raw.get('concurrent'))}"
                if "concurrent" in r
                else "n/a (sync)"
            ),
        ]
        lines.append(f"| {r['workload']} | {r['system']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Peak RSS of a batch (pydantic-toast async)",
        "",
        "| workload | backend | records | JSON moved | save peak RSS | load peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for m in json.loads(extra["memory"]):
        mb = 1024 * 1024
        lines.append(
            f"| {m['workload']} | {m['backend']} | {m['records']} | {m['json_bytes'] / mb:.1f} MB "
            f"| {m['save_rss'] / mb:.1f} MB ({m['save_rss'] / m['json_bytes']:.2f}x) "
            f"| {m['load_rss'] / mb:.1f} MB ({m['load_rss'] / m['json_bytes']:.2f}x) |"
        )
    return "\n".join(lines) + "\n"


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart (pip install matplotlib)", file=sys.stderr)
        return
    raw_rows = {
        (r["workload"], r["backend"]): r
        for r in rows
        if r["system"] in (RawAsyncpg.name, RawRedis.name)
    }
    labelled = [
        r
        for r in rows
        if (r["workload"], r["backend"]) in raw_rows
        and r["system"] not in (RawAsyncpg.name, RawRedis.name)
    ]
    labels = [f"{r['system']} · {r['workload']}" for r in labelled]
    saves = [r["save_p50"] / raw_rows[(r["workload"], r["backend"])]["save_p50"] for r in labelled]
    loads = [r["load_p50"] / raw_rows[(r["workload"], r["backend"])]["load_p50"] for r in labelled]
    figure, axis = plt.subplots(figsize=(10, 0.35 * len(labels) + 1.5))
    positions = range(len(labels))
    axis.barh([p - 0.2 for p in positions], saves, height=0.4, label="save p50")
    axis.barh([p + 0.2 for p in positions], loads, height=0.4, label="load p50")
    axis.axvline(1.0, color="black", linewidth=0.8)
    axis.set_yticks(list(positions), labels, fontsize=7)
    axis.set_xlabel("latency ratio to the raw driver of the same backend (lower is better)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: under a minute")
    parser.add_argument("--only", help="only systems whose name contains this")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--rss-probe", nargs=4, metavar=("KIND", "WORKLOAD", "COUNT", "URL"))
    args = parser.parse_args()
    if args.rss_probe:
        kind, index, count, url = args.rss_probe
        rss_probe(kind, int(index), int(count), url)
        return
    sizes = Sizes(args.quick)
    started = time.perf_counter()
    rows, extra = measure(sizes, args.only)
    text = report(rows, extra, sizes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    chart(rows, args.out / "ratios.png")
    print(text)
    print(f"({time.perf_counter() - started:.0f} s; written to {args.out})", file=sys.stderr)


if __name__ == "__main__":
    main()
