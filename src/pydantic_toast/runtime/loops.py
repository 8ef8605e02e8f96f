"""Running async storage I/O from sync code.

Backends are async and their pools belong to the event loop that opened them. A sync call
(``model_dump``, ``model_validate``) runs its I/O on one of two loops owned by the library:

* the **main-thread loop**, when the call comes from the main thread with no loop running
  there (scripts, workers): it runs in place (until the call's task is done), no thread hop;
* the **loop thread**, a daemon thread started on first need, for calls from other threads or
  from code already inside a running loop (``async def`` code calling a sync method). The
  caller blocks until the I/O is done, which blocks its own loop too: async code should use the
  async API instead.

Both loops keep their pools across calls and are closed at interpreter exit. After
``os.fork()`` the child forgets the parent's loops and pools without closing them (the sockets
still belong to the parent) and starts its own on first use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import importlib
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from pydantic_toast._exceptions import StorageUsageError
from pydantic_toast.runtime.blocking import report_blocking_call

__all__ = [
    "close_library_loops",
    "is_library_loop",
    "run_on_loop_thread",
    "run_sync",
    "shutdown",
    "unwinding_interrupt",
]

T = TypeVar("T")

_EXIT_TIMEOUT = 10.0


class _LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="pydantic-toast-loop", daemon=True
        )
        self.thread.start()
        self.ident = self.thread.ident  # (set once start() returns)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on this loop in the caller's context; wait for its result.

        An interrupt or timeout while waiting cancels the coroutine's task.
        """
        context = contextvars.copy_context()
        result: concurrent.futures.Future[T] = concurrent.futures.Future()
        tasks: list[asyncio.Task[T]] = []

        def start() -> None:
            task = self.loop.create_task(coroutine, name=_TASK_NAME, context=context)
            tasks.append(task)
            task.add_done_callback(lambda done: _settle(result, done))

        self.loop.call_soon_threadsafe(start)
        try:
            return result.result(timeout)
        except BaseException:
            if not result.done():
                self.loop.call_soon_threadsafe(lambda: [task.cancel() for task in tasks])
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(_EXIT_TIMEOUT)
        if not self.thread.is_alive():
            self.loop.close()


class _Loops:
    """The library's loops in this process."""

    def __init__(self) -> None:
        self.main_loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: _LoopThread | None = None
        self.lock = threading.Lock()
        self.interrupted = False
        # The task of the call running in place (main thread), for the SIGINT handler, and
        # whether Ctrl-C has cancelled it.
        self.in_place_task: asyncio.Task[Any] | None = None
        self.sigint_seen = False
        # Compared with the caller's thread ident on every sync call (threading's
        # current_thread() and main_thread() are two Python calls). In a forked child, made
        # after threading's own fork hook (registered first) named the child's main thread.
        self.main_ident = threading.main_thread().ident

    def get_main_loop(self) -> asyncio.AbstractEventLoop:
        loop = self.main_loop
        if loop is None:
            loop = self.main_loop = asyncio.new_event_loop()
        return loop

    def get_loop_thread(self) -> _LoopThread:
        loop_thread = self.loop_thread
        if loop_thread is None:
            with self.lock:
                loop_thread = self.loop_thread
                if loop_thread is None:
                    loop_thread = self.loop_thread = _LoopThread()
        return loop_thread


_loops = _Loops()
# The C functions behind ``signal.signal`` and ``signal.getsignal``: the module's wrappers turn
# handlers into enums, which costs an exception per call for a function handler (about 20 µs
# for the pair, on every sync call).
_signals: Any
try:
    _signals = importlib.import_module("_signal")
except ImportError:  # pragma: no cover - interpreters without CPython's module
    _signals = signal
_SIGINT = int(signal.SIGINT)
# Objects inherited across fork: never closed or collected in the child (their sockets and
# selectors are the parent's), so they are kept alive here.
_inherited: list[object] = []


def is_library_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` is one of the library's own loops (it serves the blocking API)."""
    loop_thread = _loops.loop_thread
    return loop is _loops.main_loop or (loop_thread is not None and loop is loop_thread.loop)


def unwinding_interrupt() -> bool:
    """Whether a task interrupted by Ctrl-C is being cancelled (its connections are suspect)."""
    return _loops.interrupted


_TASK_NAME = "pydantic-toast"
"""The name of the tasks blocking calls run: without one, Python 3.11's ``Task()`` spells
``Task-<n>`` for each (about 1,500 instructions of a sync save on memory://)."""


def run_sync(
    function: Callable[[], Coroutine[Any, Any, T]],
    *,
    call: str = "a blocking pydantic-toast call",
    instead: str = "the async API (await ...)",
) -> T:
    """Run the coroutine ``function()`` makes to completion from sync code; return its result.

    From code running on an event loop, this blocks that loop: it is reported (once per call
    site) as naming ``call`` and the async method to use ``instead``.

    Raises:
        StorageUsageError: Called from the library's own loop thread, where waiting for the
            loop would deadlock.
    """
    current = threading.get_ident()
    loop_thread = _loops.loop_thread
    if loop_thread is not None and current == loop_thread.ident:
        raise StorageUsageError(
            "a blocking pydantic-toast call (model_dump, model_validate, ...) was made on "
            "pydantic-toast's own event loop thread, where it would deadlock: inside a storage "
            "backend or other code running there, use the async API (await ...) instead"
        )
    # asyncio's own "is a loop running in this thread" (None when not), without the
    # exception get_running_loop() raises on every call from plain sync code.
    in_loop = asyncio._get_running_loop() is not None
    if not in_loop and current == _loops.main_ident:
        return _run_in_place(_loops.main_loop or _loops.get_main_loop(), function())
    if in_loop:
        report_blocking_call(call, instead)
    return _loops.get_loop_thread().call(function())


def _run_in_place(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on ``loop`` in this thread; an interrupt leaves no task behind.

    While it runs, Ctrl-C cancels the task instead of raising ``KeyboardInterrupt`` wherever
    the signal lands (inside a driver's protocol callback, it would leave the connection
    half-read), as ``asyncio.Runner`` does; ``KeyboardInterrupt`` is raised once the task has
    unwound. A second Ctrl-C raises at once. A program's own SIGINT handler is left alone.
    """
    # The C Task itself, not loop.create_task(): the same task (a library loop has no task
    # factory) without a Python call and a closed-loop check that call_soon() makes anyway.
    task: asyncio.Task[T] = asyncio.Task(coroutine, loop=loop, name=_TASK_NAME)
    loops = _loops
    loops.in_place_task = task
    loops.sigint_seen = False
    previous = None
    if _signals.getsignal(_SIGINT) is signal.default_int_handler:
        previous = _signals.signal(_SIGINT, _on_sigint)
    try:
        _run_until_done(loop, task)
        result = task.result()
    except asyncio.CancelledError:
        if loops.sigint_seen:
            raise KeyboardInterrupt from None
        raise
    except BaseException:
        # Ctrl-C (or SystemExit) stopped the loop with the task still pending: cancel it and
        # let it release its connections, so the next call starts clean.
        if not task.done():
            task.cancel()
            # Its CancelledError, or a second Ctrl-C: the first interrupt is the one raised.
            # The interrupt may have hit a driver's callback mid-message: while the task
            # unwinds, backends drop the connections it used rather than reuse them.
            loops.interrupted = True
            try:
                with contextlib.suppress(BaseException):
                    _run_until_done(loop, task)
            finally:
                loops.interrupted = False
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit
        raise
    finally:
        if previous is not None:
            _signals.signal(_SIGINT, previous)
        loops.in_place_task = None
    if loops.sigint_seen:  # Ctrl-C came as the work finished: it is done, and the program stops
        raise KeyboardInterrupt
    return result


def _on_sigint(signum: int, frame: Any) -> None:
    """SIGINT while a call runs in place: cancel its task (a second one raises at once).

    One function for every call (its state is on ``_loops``): no closure made per call.
    """
    loops = _loops
    task = loops.in_place_task
    if loops.sigint_seen or task is None or task.done():
        raise KeyboardInterrupt
    loops.sigint_seen = True
    task.cancel()
    task.get_loop().call_soon_threadsafe(_wake)  # out of the selector, to run the task


def _run_until_done(loop: Any, task: asyncio.Task[Any]) -> None:
    """Run ``loop`` in this thread until ``task`` is done, as ``run_until_complete`` would.

    What ``run_forever`` does around its iterations is done here too (the running loop, the
    async generator hooks, the thread the loop runs in), but the task's first step and the
    callbacks queued with it run at once, not after a first poll of the selector (as Python
    3.12's eager tasks start), and the loop ends when the task is done, not one iteration
    later through ``stop()``. That was half of what a sync call cost on top of the async one
    (50k instructions, now 27k, on a call that awaits nothing). A loop that is not
    asyncio's own (uvloop's, when a program installs its policy) has none of the internals
    used here: it runs the task with ``run_until_complete``.
    """
    asyncios_own = isinstance(loop, asyncio.BaseEventLoop)  # not narrowing ``loop``: Any
    if not asyncios_own:
        loop.run_until_complete(task)  # raises what the task raised, as task.result() would
        return
    # is_running() and get_debug() read these two attributes (about 1,000 instructions for
    # the two method calls).
    if loop._thread_id is not None:
        raise RuntimeError("pydantic-toast's event loop is already running in another thread")
    debug = loop._debug
    if debug:
        loop._set_coroutine_origin_tracking(True)
    # Two names, not the struct sequence and a star call: cheaper to take and to put back.
    firstiter, finalizer = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(loop._asyncgen_firstiter_hook, loop._asyncgen_finalizer_hook)
    loop._thread_id = threading.get_ident()
    asyncio._set_running_loop(loop)
    try:
        ready = loop._ready
        for _ in range(len(ready)):
            handle = ready.popleft()
            if not handle._cancelled:
                handle._run()
        while not task.done():
            loop._run_once()
    finally:
        asyncio._set_running_loop(None)
        loop._thread_id = None
        loop._stopping = False  # a stop() asked for meanwhile would end the next run at once
        sys.set_asyncgen_hooks(firstiter, finalizer)
        if debug:
            loop._set_coroutine_origin_tracking(False)


def _wake() -> None:
    """Nothing: queued from a signal handler only to end the selector's wait."""


def _settle(result: concurrent.futures.Future[T], task: asyncio.Task[T]) -> None:
    if result.done():
        return
    if task.cancelled():
        result.set_exception(asyncio.CancelledError())
    elif (error := task.exception()) is not None:
        result.set_exception(error)
    else:
        result.set_result(task.result())


def close_library_loops(close: Callable[[], Awaitable[None]]) -> None:
    """Run ``close()`` on each of the library's loops that exists (to close their pools)."""
    loop_thread = _loops.loop_thread
    if loop_thread is not None:
        loop_thread.call(_as_coroutine(close), timeout=_EXIT_TIMEOUT)
    main_loop = _loops.main_loop
    if main_loop is not None and not main_loop.is_closed():
        try:
            asyncio.get_running_loop()
            in_loop = True
        except RuntimeError:
            in_loop = False
        if in_loop or threading.current_thread() is not threading.main_thread():
            # The main-thread loop is idle (its thread is busy elsewhere): run it from a helper.
            helper = threading.Thread(
                target=main_loop.run_until_complete, args=(_as_coroutine(close),)
            )
            helper.start()
            helper.join(_EXIT_TIMEOUT)
        else:
            main_loop.run_until_complete(close())


def run_on_loop_thread(function: Callable[[], Awaitable[None]]) -> None:
    """Run ``function()`` on the loop thread (started if need be), waiting up to 10 s.

    From any thread, inside a running loop too, as :func:`close_library_loops` does; from the
    loop thread itself, nothing is run (it would wait for itself).
    """
    loop_thread = _loops.get_loop_thread()
    if threading.current_thread() is not loop_thread.thread:
        loop_thread.call(_as_coroutine(function), timeout=_EXIT_TIMEOUT)


async def _as_coroutine(close: Callable[[], Awaitable[None]]) -> None:
    await close()


def shutdown(close: Callable[[], Awaitable[None]]) -> None:
    """Close the pools on the library's loops, then stop and close the loops themselves."""
    close_library_loops(close)
    loop_thread, _loops.loop_thread = _loops.loop_thread, None
    if loop_thread is not None:
        loop_thread.stop()
    main_loop, _loops.main_loop = _loops.main_loop, None
    if main_loop is not None and not main_loop.is_closed():
        main_loop.close()


def _forget_after_fork() -> None:
    global _loops
    _inherited.append(_loops)
    _loops = _Loops()


os.register_at_fork(after_in_child=_forget_after_fork)
