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
import json
import os
import shutil
import subprocess
import sys
import tempfile
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
    from systems import RawAsyncpg, Toast, ToastSync

    import pydantic_toast

    loop = asyncio.new_event_loop()
    labels: list[str] = []
    urls = {"postgresql": url}
    for workload in (w for w in WORKLOADS if w.name in workload_names):
        kinds: list[tuple[str, type[Any]]] = [("raw", RawAsyncpg)]
        for label, base in (("async", Toast), ("sync", ToastSync)):
            kinds.append(
                (label, type(f"{base.__name__}_pg", (base,), {"storage_kind": "postgresql"}))
            )
        for label, cls in kinds:
            system = cls(workload, urls)
            loop.run_until_complete(system.setup())
            objs = [system.make(i) for i in range(count + WARMUP)]
            keys: list[Any] = []
            if system.sync:
                for obj in objs[count:]:
                    system.save_sync(obj)
                os.getppid()
                for obj in objs[:count]:
                    keys.append(system.save_sync(obj))
                os.getpgrp()
                for key in keys[:WARMUP]:
                    system.load_sync(key)
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
                    os.getppid()
                    for obj in objs[:count]:
                        keys.append(await system.save(obj))
                    os.getpgrp()
                    for key in keys[:WARMUP]:
                        await system.load(key)
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


def _total(dump: Path) -> int:
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


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
    from databases import throwaway_postgres

    valgrind = shutil.which("valgrind")
    if not valgrind:
        raise SystemExit("valgrind not found: install it (Debian: valgrind)")
    scratch = Path(tempfile.mkdtemp(prefix="toast-pg-callgrind-"))
    try:
        with throwaway_postgres("toast_cg") as url:
            command = [valgrind, "--tool=callgrind", "--zero-before=getppid"]
            command += ["--dump-before=getpgrp", f"--callgrind-out-file={scratch}/cg.out.%p"]
            command += [sys.executable, __file__, "--worker", url, str(args.count)]
            for name in names:
                command += ["--workload", name]
            if args.src:
                command += ["--src", str(args.src)]
            env = os.environ | {"PYTHONHASHSEED": "0"}
            output = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if output.returncode != 0:
            raise SystemExit(f"callgrind worker failed: {output.stderr.strip()[-1500:]}")
        labels: list[str] = json.loads(output.stdout.strip().splitlines()[-1])
        dumps = sorted(
            (p for p in scratch.iterdir() if p.name.rsplit(".", 1)[-1].isdigit()),
            key=lambda p: int(p.name.rsplit(".", 1)[-1]),
        )
        per_op = {label: _total(d) / args.count for label, d in zip(labels, dumps, strict=False)}
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for label, dump in zip(labels, dumps, strict=False):
                shutil.copy(dump, args.keep / label.replace("|", " ").replace(" ", "_"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
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
