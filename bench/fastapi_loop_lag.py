"""Loop stall during a 200-request burst against a slow store, with and without the integration.

    .venv-bench/bin/python bench/fastapi_loop_lag.py [--repeat 9]

A probe task sleeps 1 ms in a loop and records how late it wakes: the longest wait is the
burst's *stall*. It is not all blocking: when 200 requests wake together, the loop runs 200
continuations in one pass, and the probe waits for all of them (FastAPI and the in-process
client alone show several ms). So each kind of burst runs next to a plain-FastAPI twin with the
same requests (methods, bodies, response shapes, store round trips as ``asyncio.sleep``), in
the same round, and the figure that belongs to the library is the *excess* over its twin,
round by round. The bench also times every callback the loop runs (a task step is one): the
longest *step* is what blocking means (one request holding the loop), whatever the burst.

This measures in process, through httpx's ``ASGITransport``: the client's work and the app's
run in the same task steps. ``bench/fastapi_loop_server.py`` measures the same app
(``tests/loop_lag_app.py``) inside a real uvicorn process with the client in another one, the
figures that say whether the integration blocks the loop. Both time steps with
``tests/loop_steps.py``.

The store is ``memory://`` with 5 ms of (async) latency per call; the twins are a separate
plain FastAPI app (no ``install()``). Kinds:

- ``toast`` (twin ``plain``): ``install(app)``; a body with ``Ref[Item]`` (prefetched),
  ``loader()``, ``Expanded`` and an external response model saved by ``ToastRoute``;
- ``response`` (twin ``plain-get``): a loaded, unchanged external model as the response
  model (answered as its reference; change tracking means no write);
- ``sync`` (twin ``plain``): the sync API from ``async def`` routes (what the warning is
  about): it blocks, the reason the figure is here.

``LOOP_LAG_LATENCY=0.05`` sets the store latency in seconds. Kinds run round robin (the order
rotating); each figure is the median [min-max] over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
from pathlib import Path
from typing import Any, NamedTuple

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.loop_lag_app import LATENCY, Item, app
from tests.loop_steps import LoopWatch


def requests(client: httpx.AsyncClient, kind: str, reference: dict[str, str]) -> list[Any]:
    ref = reference["id"]
    # 200 distinct coroutines: gather() runs one coroutine object once, however often it is
    # listed (``[client.get(...)] * 200`` was a burst of one request).
    body = {"item": reference}
    if kind in ("toast", "plain"):
        prefix = f"/{kind}"
        return [
            call
            for _ in range(50)
            for call in (
                client.get(f"{prefix}/items/{ref}"),
                client.post(f"{prefix}/gifts", json=body),
                client.post(f"{prefix}/items", json=body),
                client.post(f"{prefix}/gifts", json=body),
            )
        ]
    if kind == "response":
        return [client.get(f"/toast/refs/{ref}") for _ in range(200)]
    if kind == "plain-get":
        return [client.get(f"/plain/items/{ref}") for _ in range(200)]
    return [
        call
        for _ in range(100)
        for call in (
            client.get(f"/sync/items/{ref}"),
            client.post("/sync/items", json={"name": "x"}),
        )
    ]


TWINS = {"toast": "plain", "response": "plain-get", "sync": "plain"}


class Burst(NamedTuple):
    """One burst's figures, in ms."""

    stall: float  # the probe's longest wait past its 1 ms, wall clock
    held_stall: float  # the same, less the time the OS had the thread preempted
    step: float  # the longest single callback, less preemption
    step_in: str  # the task it belonged to


async def burst(client: httpx.AsyncClient, kind: str, reference: dict[str, str]) -> Burst:
    """One 200-request burst, the probe running beside it."""
    watch = LoopWatch()
    watch.start()
    # Coroutines, not yet started: built while watching (httpx starts nothing before they
    # are awaited).
    responses = await asyncio.gather(*requests(client, kind, reference))
    watched = await watch.stop()
    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}
    return Burst(
        watched["stall_ms"],
        watched["held_stall_ms"],
        watched["longest"]["ms"],
        watched["longest"]["name"],
    )


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):5.1f} [{min(values):.1f}-{max(values):.1f}]"


async def main(repeat: int) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        reference = await Item(name="gift").asave()
        kinds = ["plain", "toast", "plain-get", "response", "sync"]
        for kind in kinds:  # warm-up: first requests build caches, not measured
            await burst(client, kind, reference)
        # What a long-running server does after start-up: the start-up's objects out of the
        # collector's way (a full collection over them took 50 ms steps in any kind of burst).
        gc.collect()
        gc.freeze()
        runs: dict[str, list[Burst]] = {kind: [] for kind in kinds}
        loads = [os.getloadavg()[0]]
        for round_ in range(repeat):
            start = round_ % len(kinds)  # each kind in every position: no order effect
            for kind in kinds[start:] + kinds[:start]:
                runs[kind].append(await burst(client, kind, reference))
            loads.append(os.getloadavg()[0])
    print(
        f"200-request bursts, store latency {LATENCY * 1000:.0f} ms, {repeat} rounds round robin, "
        f"median [min-max] in ms; load average {min(loads):.1f}-{max(loads):.1f}\n"
    )
    print(
        "| kind | max stall (wall) | excess over twin | max stall less preemption "
        "| excess over twin | longest step less preemption | longest steps in |"
    )
    print("|---|---|---|---|---|---|---|")
    for kind in kinds:
        twin = TWINS.get(kind)

        def column(name: str, kind: str = kind) -> list[float]:
            return [getattr(run, name) for run in runs[kind]]

        def excess(name: str, kind: str = kind, twin: str | None = twin) -> str:
            if twin is None:
                return "-"
            return spread([a - b for a, b in zip(column(name), column(name, twin), strict=True)])

        where = ", ".join(sorted({run.step_in for run in runs[kind]}))[:60]
        print(
            f"| {kind} | {spread(column('stall'))} | {excess('stall')} "
            f"| {spread(column('held_stall'))} | {excess('held_stall')} "
            f"| {spread(column('step'))} | {where} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=9)
    asyncio.run(main(parser.parse_args().repeat))
