"""A/B: save and load p50 of two source trees of pydantic-toast, interleaved and repeated.

    git archive main src | tar -x -C /tmp/before     # the code to compare against
    .venv/bin/python bench/compare_sources.py /tmp/before/src src --rounds 7

Each round runs one child process per source tree, in alternating order, on the same
databases (the newest migration, which older code also runs on when it only adds columns).
A child times ``asave`` and ``aload`` of the 10-field workload, one operation at a time, and
prints its p50s. The summary gives, per backend and operation, the median over rounds of
p50(B) / p50(A) with its minimum and maximum.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import asyncio, json, sys, time, uuid
sys.path.insert(0, sys.argv[1])
sys.path.insert(1, sys.argv[2])
import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from workloads import WORKLOADS

url, count = sys.argv[3], int(sys.argv[4])
workload = next(w for w in WORKLOADS if w.name.startswith("10"))
fields = {name: annotation for name, (annotation, _) in workload.fields.items()}
Model = type("Bench", (ExternalBaseModel,), {
    "__annotations__": fields,
    "model_config": ExternalConfigDict(storage=url, class_name=f"AB{uuid.uuid4().hex[:8]}"),
})

async def main():
    items = [Model(**workload.values(i)) for i in range(count + 50)]
    saves, loads = [], []
    for item in items[:50]:
        await Model.aload(await item.asave())
    for item in items[50:]:
        start = time.perf_counter()
        reference = await item.asave()
        middle = time.perf_counter()
        await Model.aload(reference)
        end = time.perf_counter()
        saves.append(middle - start)
        loads.append(end - middle)
    saves.sort(); loads.sort()
    print(json.dumps({"save": saves[len(saves) // 2] * 1e6, "load": loads[len(loads) // 2] * 1e6}))

asyncio.run(main())
pydantic_toast.close_storage()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src_a", help="the src/ folder of the code to compare against")
    parser.add_argument("src_b", help="the src/ folder of the code under test")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument("--backends", default="postgresql,sqlite,redis,memory")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.src_b).resolve()))
    sys.path.insert(0, str(HERE))
    from databases import throwaway_postgres

    redis_url = os.environ.get("TOAST_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    sources = {"A": str(Path(args.src_a).resolve()), "B": str(Path(args.src_b).resolve())}
    ratios: dict[tuple[str, str], list[float]] = {}
    absolute: dict[tuple[str, str, str], list[float]] = {}
    with throwaway_postgres("toast_ab") as pg_url, tempfile.TemporaryDirectory() as folder:
        from pydantic_toast.integrations.cli import main as toast_cli

        sqlite_url = f"sqlite:///{folder}/ab.db"
        assert toast_cli(["migrate", sqlite_url]) == 0
        urls = {
            "postgresql": pg_url,
            "sqlite": sqlite_url,
            "redis": f"{redis_url}?prefix=toast_ab_{os.getpid()}",
            "memory": "memory://ab",
        }
        for round_ in range(args.rounds):
            for backend in args.backends.split(","):
                order = ["A", "B"] if round_ % 2 == 0 else ["B", "A"]
                result = {}
                for side in order:
                    out = subprocess.run(
                        [
                            sys.executable,
                            "-c",
                            CHILD,
                            sources[side],
                            str(HERE),
                            urls[backend],
                            str(args.count),
                        ],
                        capture_output=True,
                        text=True,
                        check=True,
                        timeout=600,
                    )
                    result[side] = json.loads(out.stdout.strip().splitlines()[-1])
                for op in ("save", "load"):
                    ratios.setdefault((backend, op), []).append(result["B"][op] / result["A"][op])
                    for side in "AB":
                        absolute.setdefault((backend, op, side), []).append(result[side][op])
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
            time.sleep(0.1)
    print("backend     op    p50 A (µs)  p50 B (µs)  B/A median  [min, max]")
    for (backend, op), values in ratios.items():
        a = statistics.median(absolute[(backend, op, "A")])
        b = statistics.median(absolute[(backend, op, "B")])
        print(
            f"{backend:<11} {op:<5} {a:>10.1f}  {b:>10.1f}  {statistics.median(values):>9.3f}"
            f"  [{min(values):.3f}, {max(values):.3f}]"
        )


if __name__ == "__main__":
    main()
