"""Profile one system on one workload with py-spy: a flame graph and the top costs per operation.

    make profile PROFILE_ARGS='--system "async (PostgreSQL)" --op save'
    python bench/profile.py --system "sync (Redis)" --op load --workload "100 KB" --native

Starts its own throwaway servers (or uses --postgres-url/--redis-url like bench/run.py), runs
the operation in a child process under ``py-spy record`` (sampling at --rate per second),
and writes ``<out>.speedscope.json`` (open it at https://www.speedscope.app) or, with
``--format flamegraph``, ``<out>.svg``. It prints the wall and CPU time per operation and the
functions with the largest CPU shares (self and inclusive), each also as µs per operation.
Sampling only sees threads on the CPU (``--idle`` adds waiting ones), so shares are of CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from systems import SYSTEMS, System  # noqa: E402
from workloads import WORKLOADS  # noqa: E402

OPS = ("save", "load", "batch_save", "batch_load")


def pick(name: str) -> type[System]:
    matches = [s for s in SYSTEMS if name.lower() in s.name.lower()]
    if len(matches) != 1:
        names = "\n  ".join(s.name for s in SYSTEMS)
        raise SystemExit(
            f"--system {name!r} matches {len(matches)} systems; pick one of:\n  {names}"
        )
    return matches[0]


def worker(
    system_name: str,
    workload_name: str,
    op: str,
    seconds: float,
    urls: dict[str, str],
    result: Path,
) -> None:
    """Run ``op`` repeatedly for about ``seconds``; print wall and CPU µs per operation."""
    workload = next(w for w in WORKLOADS if w.name == workload_name)
    system_class = pick(system_name)
    system: Any = system_class(workload, urls)
    loop = asyncio.new_event_loop()
    batch = 1000 if workload.batch >= 1000 else workload.batch

    def call(method: str, *args: Any) -> Any:
        if system.sync:
            return getattr(system, f"{method}_sync")(*args)
        return loop.run_until_complete(getattr(system, method)(*args))

    if not system.sync:
        loop.run_until_complete(system.setup())
    keys = [call("save", system.make(i)) for i in range(50)]
    batch_keys = call("save_many", [system.make(i) for i in range(batch)])
    for key in keys:  # warm: pools open, statements prepared, caches filled
        call("load", key)
    print("ready", flush=True)  # the profiler attaches now: setup stays out of the profile
    time.sleep(1.0)
    done, records = 0, 0
    wall, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        if op == "save":
            call("save", system.make(done))
            records += 1
        elif op == "load":
            call("load", keys[done % len(keys)])
            records += 1
        elif op == "batch_save":
            call("save_many", [system.make(i) for i in range(batch)])
            records += batch
        else:
            call("load_many", batch_keys)
            records += batch
        done += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if not system.sync:
        loop.run_until_complete(system.teardown())
    result.write_text(
        json.dumps(
            {"records": records, "wall_us": wall / records * 1e6, "cpu_us": cpu / records * 1e6}
        )
    )


def _label(frame: dict[str, Any]) -> str:
    # By function, not by line: py-spy's frames carry the line being run.
    return f"{frame['name']} ({Path(frame.get('file') or '?').name})"


def top_costs(speedscope: Path, limit: int) -> tuple[int, list[tuple[str, int, int]]]:
    """(samples, [(function, self samples, inclusive samples)]) from a speedscope profile."""
    data = json.loads(speedscope.read_text())
    frames = data["shared"]["frames"]
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            total += weight
            names = [_label(frames[i]) for i in stack]
            if names:
                own[names[-1]] += weight  # speedscope stacks run from the root to the leaf
            for name in set(names):
                inclusive[name] += weight
    ranked = sorted(inclusive, key=lambda n: (-own[n], -inclusive[n]))[:limit]
    return total, [(n, own[n], inclusive[n]) for n in ranked]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--system", default="pydantic-toast async (PostgreSQL)")
    parser.add_argument("--workload", default="10 fields", choices=[w.name for w in WORKLOADS])
    parser.add_argument("--op", default="save", choices=OPS)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to sample")
    parser.add_argument("--rate", type=int, default=500, help="samples per second")
    parser.add_argument("--format", default="speedscope", choices=("speedscope", "flamegraph"))
    parser.add_argument(
        "--native", action="store_true", help="include C frames (pydantic-core, drivers)"
    )
    parser.add_argument("--idle", action="store_true", help="sample waiting threads too")
    parser.add_argument("--top", type=int, default=25, help="functions listed")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "profile")
    parser.add_argument("--postgres-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        system, workload, op, seconds, urls, result = args.worker
        worker(system, workload, op, float(seconds), json.loads(urls), Path(result))
        return
    pick(args.system)  # fail early on an ambiguous name
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy not found: pip install py-spy (it is in the bench extra)")
    from stores import servers

    args.out.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".speedscope.json" if args.format == "speedscope" else ".svg"
    output = args.out.with_name(args.out.name + suffix)
    timing_file = args.out.with_name(args.out.name + ".timing.json")
    with servers(args.postgres_url, args.redis_url) as stores:
        urls = (
            stores.for_toast() if "pydantic-toast" in pick(args.system).name else stores.for_raw()
        )
        urls = urls | {"redis_prefix": stores.redis_prefix}
        child = subprocess.Popen(
            [sys.executable, __file__, "--worker", args.system, args.workload, args.op,
             str(args.seconds + 3), json.dumps(urls), str(timing_file)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            child.wait()
            raise SystemExit("the profiled process failed before it was ready (see above)")
        command = [
            py_spy, "record", "--pid", str(child.pid), "--rate", str(args.rate),
            "--duration", str(int(args.seconds)), "--format", args.format, "-o", str(output),
            "--nonblocking",
            *(["--native"] if args.native else []), *(["--idle"] if args.idle else []),
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        child.wait()
    if result.returncode != 0 or not timing_file.exists():
        raise SystemExit(f"py-spy failed: {(result.stderr + result.stdout).strip()[-1500:]}")
    timing = json.loads(timing_file.read_text())
    timing_file.unlink()
    print(
        f"{args.system} · {args.workload} · {args.op}: {timing['records']} records, "
        f"{timing['wall_us']:.1f} µs wall and {timing['cpu_us']:.1f} µs CPU (this process) "
        f"per record; profile: {output}"
    )
    if args.format != "speedscope":
        return
    total, costs = top_costs(output, args.top)
    print("\n| function | self % | inclusive % | self µs/record | inclusive µs/record |")
    print("|---|---|---|---|---|")
    for name, own, inclusive in costs:
        print(
            f"| {name} | {100 * own / total:.1f} | {100 * inclusive / total:.1f} "
            f"| {timing['cpu_us'] * own / total:.1f} | {timing['cpu_us'] * inclusive / total:.1f} |"
        )


if __name__ == "__main__":
    main()
