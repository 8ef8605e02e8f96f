"""Loop steps inside a uvicorn server in 200-request bursts, with and without the integration.

    .venv-bench/bin/python bench/fastapi_loop_server.py [--rounds 15] [--postgres] [--freeze]

The server is ``uvicorn tests.loop_lag_app:app`` in its own process (asyncio loop, h11, access
log on as by default): the integration's routes, plain-FastAPI twins and the sync API over
``memory://`` with 5 ms of async latency per store call (``--postgres``: a throwaway migrated
PostgreSQL database instead; the twins keep their ``asyncio.sleep``). For each burst, this
process (the client) asks the server to start a :class:`tests.loop_steps.LoopWatch` on its
loop, sends 200 requests at once over 200 kept-alive connections (plain asyncio sockets: the
client costs the server nothing but its bytes), reads the answers, and asks for what the
watch saw: every callback the loop ran, named after the request a task step served, *held*
(wall clock less OS preemption) and *own* (the thread's CPU time, or held if the step blocked,
less the garbage collections in it: neither preemption nor the hypervisor's steal), the
collections, and the 1 ms probe's longest wait.

Kinds, each a burst, round robin with the order rotating: ``toast`` (its twin ``plain``):
``loader()`` + ``Expanded``, a ``Ref`` body prefetched, a response model saved by
``ToastRoute``, 50 of each of its 4 requests; ``response`` (twin ``plain-get``): an
unchanged external response model (answered as its reference); ``sync``: the sync API in
``async def`` routes (it blocks: the check that the clock sees blocking).

``--freeze``: ``gc.collect(); gc.freeze()`` in the server after the warm-up, as a preforking
server does; by default the collector runs as in any server, and a step a collection ran in
says so.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests import servers  # noqa: E402
from tests.loop_lag_client import BURST, KINDS, PREFIXES, Bursts, served_requests  # noqa: E402


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


async def run(port: int, rounds: int, over_ms: float, freeze: bool) -> None:
    bursts = await Bursts.open(port)
    try:
        first = {}
        for kind in KINDS:  # warm-up: the first requests build caches; shown, not counted
            first[kind] = await bursts.burst(kind, over_ms)
        if freeze:
            await bursts.freeze()
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
        loads = [os.getloadavg()]
        for round_ in range(rounds):
            start = round_ % len(KINDS)
            for kind in KINDS[start:] + KINDS[:start]:
                runs[kind].append(await bursts.burst(kind, over_ms))
            loads.append(os.getloadavg())
        # Objects a full collection keeps, per request, over 5 bursts of a kind after one (the
        # first after another kind changes the connections' state: +-400 objects either way).
        survivors = {}
        for kind in KINDS:
            await bursts.burst(kind, over_ms)
            before = await bursts.objects()
            for _ in range(5):
                await bursts.burst(kind, over_ms)
            survivors[kind] = (await bursts.objects() - before) / (5 * BURST)
    finally:
        bursts.close()
    report(first, runs, survivors, loads, rounds, over_ms, freeze)


def report(
    first: dict[str, dict[str, Any]],
    runs: dict[str, list[dict[str, Any]]],
    survivors: dict[str, float],
    loads: list[tuple[float, float, float]],
    rounds: int,
    over_ms: float,
    freeze: bool,
) -> None:
    one = [load[0] for load in loads]
    print(
        f"uvicorn (asyncio, h11), 200-request bursts, {rounds} rounds round robin; median "
        f"[min-max] over the rounds, ms, less OS preemption unless 'wall'; gc "
        f"{'frozen after warm-up' if freeze else 'as is'}; load average (1 min) "
        f"{min(one):.2f}-{max(one):.2f}, at the end {' '.join(f'{x:.2f}' for x in loads[-1])}\n"
    )
    over = f"{over_ms:g} ms"
    print(
        f"| kind | longest step | longest step, own | steps > {over} per burst (total) "
        f"| of them own > {over} | steps > {over} in | full collections | max stall (wall) "
        f"| max stall | objects kept per request | first burst: longest step |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind in KINDS:
        bursts = runs[kind]
        counts = [len(b["over"]) for b in bursts]
        own = sum(1 for b in bursts for step in b["over"] if step["own_ms"] > over_ms)
        where = collections.Counter(step["name"] for b in bursts for step in b["over"])
        named = ", ".join(f"{name} x{n}" for name, n in where.most_common(3)) or "-"
        warm = first[kind]["longest"]
        print(
            f"| {kind} | {spread([served_requests(b, PREFIXES[kind], own=False) for b in bursts])} "
            f"| {spread([served_requests(b, PREFIXES[kind]) for b in bursts])} "
            f"| {statistics.median(counts):g} [{min(counts)}-{max(counts)}] ({sum(counts)}) "
            f"| {own} | {named} | {sum(b['collections'][2] for b in bursts)} "
            f"| {spread([b['stall_ms'] for b in bursts])} "
            f"| {spread([b['held_stall_ms'] for b in bursts])} "
            f"| {survivors[kind]:.2f} | {warm['ms']:.1f} {warm['name']} |"
        )
    print("\nLongest step of any callback, held / own, ms:")
    for kind in KINDS:
        print(
            f"- {kind}: {spread([b['longest']['ms'] for b in runs[kind]])} / "
            f"{spread([b['longest_own']['own_ms'] for b in runs[kind]])} "
            f"({', '.join(sorted({b['longest_own']['name'] for b in runs[kind]}))[:80]})"
        )
    print(f"\nWarm-up (each kind's first burst), steps > {over}:")
    for kind in KINDS:
        over_steps = first[kind]["over"]
        steps = ", ".join(
            f"{step['name']} {step['ms']:.1f}"
            + (f" (gc {step['gc_ms']:.1f}, gen {step['gc_generation']})" if step["gc_ms"] else "")
            for step in over_steps[:4]
        )
        more = f" and {len(over_steps) - 4} more" if len(over_steps) > 4 else ""
        print(f"- {kind}: {steps or '-'}{more}")
    print(f"\nSteps held > {over} less their collections: held, own, CPU, waits, page faults:")
    for kind in KINDS[:-1]:
        steps = [
            f"{step['name']} {step['ms']:.1f}, {step['own_ms']:.1f}, {step['cpu_ms']:.1f}, "
            f"{step['waits']}, {step['faults']}"
            for b in runs[kind]
            for step in b["over"]
            if step["ms"] - step["gc_ms"] > over_ms
        ]
        print(f"- {kind}: {'; '.join(steps) or '-'}")
    print("\nLongest step by name (max over the rounds, ms, gc included):")
    for kind in KINDS:
        names: dict[str, float] = {}
        for b in runs[kind]:
            for name, ms in b["longest_by_name"].items():
                names[name] = max(names.get(name, 0.0), ms)
        top = sorted(names.items(), key=lambda item: -item[1])[:5]
        print(f"- {kind}: " + ", ".join(f"{name} {ms:.1f}" for name, ms in top))


@contextlib.contextmanager
def store(postgres: bool) -> Iterator[str]:
    if not postgres:
        yield ""
        return
    from databases import throwaway_postgres

    with throwaway_postgres("loop_lag") as url:
        yield url


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--over-ms", type=float, default=5.0)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--freeze", action="store_true")
    args = parser.parse_args()
    with store(args.postgres) as storage:
        port = servers.free_port()
        process = servers.start_todo_service(
            "",
            port,
            app="tests.loop_lag_app:app",
            env={"LOOP_LAG_STORAGE": storage},
            log=Path(os.environ.get("LOOP_LAG_LOG", "/dev/null")),
        )
        try:
            asyncio.run(run(port, args.rounds, args.over_ms, args.freeze))
        finally:
            servers.stop_todo_service(process)


if __name__ == "__main__":
    main()
