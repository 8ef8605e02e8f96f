"""The integration never holds the event loop: every loop step timed inside a real uvicorn server.

``tests/loop_lag_app.py`` runs under uvicorn in a subprocess; a :class:`~tests.loop_steps.
LoopWatch` inside it times each callback its loop runs by its own hold on the loop
(:attr:`~tests.loop_steps.Step.own_ms`): the thread's CPU time, or the wall clock less OS
preemption when the step blocked, less garbage collections either way (a full one takes
45-105 ms over FastAPI's objects on a small VM, in plain FastAPI routes as much: the
interpreter's, not a route's). Neither a loaded machine's preemption nor the hypervisor's
steal counts. The store answers after 50 ms of async latency, so a store call made
synchronously on the loop would hold it 50 ms: twice the bound, which is about 10 times the
longest step measured (``bench/fastapi_loop_server.py``: at most 3.5 ms, median 0.9-1.4).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import servers
from tests.loop_lag_client import Bursts, request, served_requests

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path("/proc/thread-self/schedstat").exists(), reason="needs Linux's schedstat"
    ),
]

LATENCY_MS = 50.0
BOUND_MS = 25.0


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The loop-lag app under uvicorn, its store answering after ``LATENCY_MS``."""
    port = servers.free_port()
    process = servers.start_todo_service(
        "",
        port,
        app="tests.loop_lag_app:app",
        log=tmp_path_factory.mktemp("loop-steps") / "server.log",
        env={"LOOP_LAG_LATENCY": str(LATENCY_MS / 1000), "LOOP_LAG_STORAGE": ""},
    )
    try:
        yield port
    finally:
        servers.stop_todo_service(process)


async def test_no_step_of_the_integration_holds_the_loop(port: int) -> None:
    """In 200-request bursts, the first ones included, no step of a route holds the loop 25 ms."""
    bursts = await Bursts.open(port)
    try:
        watched = [await bursts.burst(kind) for _ in range(3) for kind in ("toast", "response")]
    finally:
        bursts.close()
    longest = [served_requests(burst, "/toast/") for burst in watched]
    assert max(longest) < BOUND_MS, [(burst["longest_own"], burst["over"]) for burst in watched]


async def test_the_clock_sees_a_blocking_call(port: int) -> None:
    """A sync load in an ``async def`` route holds the loop for the store's whole latency."""
    bursts = await Bursts.open(port)
    try:
        reference = bursts.reference["id"]
        watched = await bursts.watch([request("GET", f"/sync/items/{reference}")])
    finally:
        bursts.close()
    assert served_requests(watched, "/sync/") >= 0.8 * LATENCY_MS
