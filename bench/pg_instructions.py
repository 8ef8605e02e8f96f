"""Instructions per PostgreSQL save and load, pydantic-toast against raw asyncpg (callgrind).

    python bench/pg_instructions.py [--workload "100 KB"] [--count 50] [--src PATH]

Like ``bench/instructions.py``, but on a real server: a throwaway database (created and
migrated by this process, outside valgrind) and a worker under ``valgrind --tool=callgrind``
that zeroes the counters (``os.getppid()``) before and dumps them (``os.getpgrp()``) after N
sequential operations of one system. The counts are this process's CPU work only (the server
runs elsewhere; waiting in ``epoll`` costs nothing), so they repeat on a busy machine. Systems:
raw asyncpg (``bench/systems.py``: prepared statements, one connection, plain Pydantic
encode/decode), pydantic-toast's async API (``asave``/``aload``) and its sync API from the main
thread (``model_dump``/``model_validate``, the loop thread counted too).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if "--src" in sys.argv:
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--src") + 1]).resolve()))
else:
    sys.path.insert(0, str(HERE.parent / "src"))

from workloads import WORKLOADS  # noqa: E402

WARMUP = 20


def worker(url: str, count: int, workload_names: list[str]) -> list[str]:
    """Run every measured segment under callgrind; return their labels in dump order."""
    from systems import RawAsyncpg, toast_on

    import pydantic_toast

    loop = asyncio.new_event_loop()
    labels: list[str] = []
    urls = {"postgresql": url}
    for workload in (w for w in WORKLOADS if w.name in workload_names):
        kinds: list[tuple[str, type[Any]]] = [("raw", RawAsyncpg)]
        for label in ("async", "sync"):
            kinds.append((label, toast_on("postgresql", sync=label == "sync")))
        for label, cls in kinds:
            system = cls(workload, urls)
            loop.run_until_complete(system.setup())
            objs = [system.make(i) for i in range(count + WARMUP)]
            keys: list[Any] = []
            if system.sync:
                for obj in objs[count:]:
                    system.save_sync(obj)
                gc.collect()
                os.getppid()
                for obj in objs[:count]:
                    keys.append(system.save_sync(obj))
                os.getpgrp()
                for key in keys[:WARMUP]:
                    system.load_sync(key)
                gc.collect()
                os.getppid()
                for key in keys:
                    system.load_sync(key)
                os.getpgrp()
            else:

                async def run(
                    system: Any = system, objs: list[Any] = objs, keys: list[Any] = keys
                ) -> None:
                    for obj in objs[count:]:
                        await system.save(obj)
                    gc.collect()
                    os.getppid()
                    for obj in objs[:count]:
                        keys.append(await system.save(obj))
                    os.getpgrp()
                    for key in keys[:WARMUP]:
                        await system.load(key)
                    gc.collect()
                    os.getppid()
                    for key in keys:
                        await system.load(key)
                    os.getpgrp()

                loop.run_until_complete(run())
            labels += [f"{workload.name}|{label} save", f"{workload.name}|{label} load"]
            if label == "raw":
                loop.run_until_complete(system.teardown())
    loop.run_until_complete(pydantic_toast.aclose_storage())
    pydantic_toast.close_storage()
    loop.close()
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("URL", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--workload", action="append", help="repeatable (default: all three)")
    parser.add_argument("--count", type=int, default=50, help="operations per segment")
    parser.add_argument("--src", type=Path, help="the source tree to count (default: ../src)")
    parser.add_argument("--keep", type=Path, help="copy the callgrind dumps here (annotate them)")
    args = parser.parse_args()
    names = args.workload or [w.name for w in WORKLOADS]
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), names)))
        return
    import callgrind
    from databases import throwaway_postgres

    with throwaway_postgres("toast_cg") as url:
        argv = [__file__, "--worker", url, str(args.count)]
        for name in names:
            argv += ["--workload", name]
        if args.src:
            argv += ["--src", str(args.src)]
        totals = callgrind.run_worker(argv, keep=args.keep)
    per_op = {label: instructions / args.count for label, instructions in totals.items()}
    print("| workload | operation | raw asyncpg | toast async | ratio | toast sync | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        for op in ("save", "load"):
            raw = per_op[f"{name}|raw {op}"]
            a = per_op[f"{name}|async {op}"]
            s = per_op[f"{name}|sync {op}"]
            print(
                f"| {name} | {op} | {raw:,.0f} | {a:,.0f} | {a / raw:.2f} | {s:,.0f} "
                f"| {s / raw:.2f} |"
            )


if __name__ == "__main__":
    main()
