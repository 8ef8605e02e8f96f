"""Where an event loop's time goes: each callback's duration less OS preemption, and a 1 ms probe.

Used by ``bench/fastapi_loop_lag.py`` (in process), ``bench/fastapi_loop_server.py`` and
``tests/integration/test_loop_steps.py`` (inside a uvicorn server, started and read over HTTP by
``tests/loop_lag_app.py``'s control routes). Linux only: it reads
``/proc/thread-self/schedstat``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import threading
import time
import weakref
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from resource import RUSAGE_THREAD, getrusage
from time import thread_time
from typing import Any

#: The request a task step serves (``"GET /toast/items/{id}"``), set by :class:`LabelRequests`.
request_label: ContextVar[str | None] = ContextVar("request_label", default=None)

_UUID = re.compile(r"/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class HeldClock:
    """Seconds of wall clock less those the calling thread spent runnable but not running.

    On a shared machine the OS takes the CPU away in the middle of a step for tens of ms:
    that is no work of the program's. What is left counts both the CPU the thread used and
    the time it waited on its own (a blocking call): what holding the loop means. Create it
    in the thread whose time it measures (the loop's).
    """

    def __init__(self) -> None:
        self._schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        # Closed when collected: the step that stops a clock still reads it as it ends.
        weakref.finalize(self, os.close, self._schedstat)

    def __call__(self) -> float:
        schedstat = self._schedstat
        while True:  # the clock and the counter read with no preemption between them
            preempted = os.pread(schedstat, 64, 0)
            now = time.perf_counter()
            if os.pread(schedstat, 64, 0) == preempted:
                return now - int(preempted.split()[1]) / 1e9  # ns waiting on a run queue


@dataclass(frozen=True)
class Step:
    """One callback the loop ran, in ms."""

    ms: float  # held: wall clock less the time the thread waited on a run queue
    name: str  # the request it served, else the callback
    cpu_ms: float  # CPU time of the loop's thread (interrupts it served included)
    faults: int  # page faults (minor: memory the process touched for the first time)
    waits: int  # voluntary context switches: the thread blocked (a sync call waiting)
    gc_ms: float  # held in garbage collections during the step
    gc_cpu_ms: float  # CPU time of those collections
    gc_generation: int  # the oldest generation collected during the step, -1 for none

    @property
    def own_ms(self) -> float:
        """The step's own hold on the loop: its held time if it blocked, else its CPU time.

        Less the collections in it either way. What neither OS preemption (subtracted by the
        held clock) nor the hypervisor taking the VM's CPU away (steal: the thread neither
        runs nor waits on a run queue, so held time counts it, CPU time does not) adds to.
        """
        if self.waits:
            return max(0.0, self.ms - self.gc_ms)
        return max(0.0, self.cpu_ms - self.gc_cpu_ms)


_NO_STEP = Step(0.0, "", 0.0, 0, 0, 0.0, 0.0, -1)


@dataclass
class StepClock:
    """Times every callback the event loop runs (each step of a task is one).

    Keeps the longest step by :class:`HeldClock` (``longest``, and per name), the longest by
    :attr:`Step.own_ms` (``longest_own``, and per name), every step held over ``over_ms``,
    and the collections that ran. A task's step is named by :data:`request_label` in the
    task's context when it serves a request, else by its coroutine; other callbacks by their
    function (``_SelectorSocketTransport._read_ready`` is uvicorn reading and parsing what
    arrived on a connection).
    """

    over_ms: float = 5.0
    steps: int = 0
    longest: Step = _NO_STEP
    longest_own: Step = _NO_STEP
    collections: list[int] = field(default_factory=lambda: [0, 0, 0])  # by generation
    gc_ms: float = 0.0  # in all collections while timing
    longest_by_name: dict[str, float] = field(default_factory=dict)
    longest_own_by_name: dict[str, float] = field(default_factory=dict)
    over: list[Step] = field(default_factory=list)

    def __enter__(self) -> StepClock:
        self._held = held = HeldClock()
        self._run = run = asyncio.events.Handle._run
        over_ms = self.over_ms
        longest_by_name, own_by_name = self.longest_by_name, self.longest_own_by_name
        in_step = [0.0, 0.0, -1]  # gc held and CPU seconds, oldest generation: per step
        gc_started = [0.0, 0.0]

        loop_thread = threading.get_ident()

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            if threading.get_ident() != loop_thread:  # another thread's (the sync API's)
                return
            if phase == "start":
                gc_started[0], gc_started[1] = held(), thread_time()
            else:
                took = held() - gc_started[0]
                in_step[0] += took
                in_step[1] += thread_time() - gc_started[1]
                in_step[2] = max(in_step[2], info["generation"])
                self.collections[info["generation"]] += 1
                self.gc_ms += took * 1000

        def timed(handle: asyncio.Handle) -> None:
            in_step[0], in_step[1], in_step[2] = 0.0, 0.0, -1
            start, cpu, usage = held(), thread_time(), getrusage(RUSAGE_THREAD)
            run(handle)
            took, cpu, end = held() - start, thread_time() - cpu, getrusage(RUSAGE_THREAD)
            self.steps += 1
            step = Step(
                took * 1000,
                step_name(handle),
                cpu * 1000,
                end.ru_minflt + end.ru_majflt - usage.ru_minflt - usage.ru_majflt,
                end.ru_nvcsw - usage.ru_nvcsw,
                in_step[0] * 1000,
                in_step[1] * 1000,
                int(in_step[2]),
            )
            name, own = step.name, step.own_ms
            if step.ms > longest_by_name.get(name, 0.0):
                longest_by_name[name] = step.ms
            if own > own_by_name.get(name, 0.0):
                own_by_name[name] = own
            if step.ms > over_ms:
                self.over.append(step)
            if step.ms > self.longest.ms:
                self.longest = step
            if own > self.longest_own.own_ms:
                self.longest_own = step

        self._on_gc = on_gc
        gc.callbacks.append(on_gc)
        asyncio.events.Handle._run = timed  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.events.Handle._run = self._run  # type: ignore[method-assign]
        gc.callbacks.remove(self._on_gc)


def step_name(handle: asyncio.Handle) -> str:
    """The request a task step served, else the task's coroutine or the callback's name."""
    callback = handle._callback  # type: ignore[attr-defined]
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        label = handle._context.get(request_label)  # type: ignore[attr-defined]
        if label is not None:
            return label
        return getattr(task.get_coro(), "__qualname__", None) or repr(task)[:60]
    return getattr(callback, "__qualname__", None) or repr(callback)[:60]


class Probe:
    """A task that sleeps 1 ms in a loop and records how late it wakes (wall and held)."""

    def __init__(self) -> None:
        self.stall_ms = 0.0  # the longest wait past its 1 ms, wall clock
        self.held_stall_ms = 0.0  # the same, less the time the OS had the thread preempted
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start probing on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._probe(), name="probe")

    async def stop(self) -> None:
        """Stop probing and wait for the probe to end."""
        self._done.set()
        assert self._task is not None
        await self._task

    async def _probe(self) -> None:
        held = HeldClock()
        while not self._done.is_set():
            start, start_held = time.perf_counter(), held()
            await asyncio.sleep(0.001)
            wall = (time.perf_counter() - start - 0.001) * 1000
            own = (held() - start_held - 0.001) * 1000
            self.stall_ms = max(self.stall_ms, wall)
            self.held_stall_ms = max(self.held_stall_ms, own)


class LoopWatch:
    """A :class:`StepClock` and a :class:`Probe` over one stretch of a running loop."""

    def __init__(self, over_ms: float = 5.0) -> None:
        self.clock = StepClock(over_ms=over_ms)
        self.probe = Probe()

    def start(self) -> None:
        """Start timing steps and probing, on the running loop."""
        self.clock.__enter__()
        self.probe.start()

    async def stop(self) -> dict[str, Any]:
        """Stop both; what they saw, as JSON-ready figures in ms."""
        await self.probe.stop()
        self.clock.__exit__()
        clock = self.clock
        return {
            "stall_ms": self.probe.stall_ms,
            "held_stall_ms": self.probe.held_stall_ms,
            "steps": clock.steps,
            "longest": _figures(clock.longest),
            "longest_own": _figures(clock.longest_own),
            "longest_by_name": clock.longest_by_name,
            "longest_own_by_name": clock.longest_own_by_name,
            "over": [_figures(step) for step in clock.over],
            "collections": clock.collections,
            "gc_ms": clock.gc_ms,
        }


def _figures(step: Step) -> dict[str, Any]:
    return {**asdict(step), "own_ms": step.own_ms}


class LabelRequests:
    """ASGI middleware: sets :data:`request_label` to the method and path (ids as ``{id}``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            request_label.set(f"{scope['method']} {_UUID.sub('/{id}', scope['path'])}")
        await self.app(scope, receive, send)
