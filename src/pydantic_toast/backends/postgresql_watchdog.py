"""One timer per backend bounding its statements, in place of asyncpg's timer per statement.

asyncpg bounds each statement by ``command_timeout`` with a timer of its own: a
``loop.call_later`` when the statement starts and its ``cancel`` when it ends, about 13k
instructions, a twentieth of a 10-field load's. The backend's hot path runs its prepared
statements without that timer (``timeout=NO_TIMEOUT``) and registers them here instead: a
dictionary entry per statement, and a single timer per backend that wakes at most once per
:data:`PERIOD` while statements run, and at the deadline of the first one running.

A statement past its deadline is ended as asyncpg's timer ends it: its task is cancelled,
which cancels asyncpg's waiter, and asyncpg asks the server to cancel the statement; the
caller turns the cancellation into the ``TimeoutError`` asyncpg raises (:meth:`expired`).
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["PERIOD", "Watchdog"]

PERIOD = 1.0
"""Seconds between checks while statements run (shorter when ``command_timeout`` is)."""


class Watchdog:
    """The statements a backend runs on one event loop, by task, and their deadlines."""

    __slots__ = ("_deadlines", "_handle", "_next", "_period", "_started", "_timed_out")

    def __init__(self) -> None:
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._timed_out: set[asyncio.Task[Any]] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0  # when the timer fires
        self._period = PERIOD
        self._started = False  # a statement started since the last check

    def watch(self, task: asyncio.Task[Any], loop: Any, timeout: float) -> None:
        """Watch ``task``'s statement, which must end within ``timeout`` seconds from now.

        Checks come at most ``timeout`` apart, so a deadline lies at or after the next check,
        which sets the one after at the first deadline: each statement ends on time.
        """
        now = loop.time()
        deadline = self._deadlines[task] = now + timeout
        self._started = True
        if self._handle is None or deadline < self._next:  # the latter: a shorter timeout
            if timeout < self._period:
                self._period = timeout
            self._arm(loop, min(deadline, now + self._period))

    def forget(self, task: asyncio.Task[Any]) -> None:
        """Stop watching ``task``'s statement (it ended, whatever its outcome)."""
        del self._deadlines[task]
        if self._timed_out:
            self._timed_out.discard(task)

    def expired(self, task: asyncio.Task[Any]) -> bool:
        """Whether ``task``'s ``CancelledError`` is its statement's timeout, not a cancellation.

        Called as the cancellation reaches the caller, before :meth:`forget`: when it came from
        this watchdog and from nobody else, the task's cancellation is withdrawn
        (``uncancel``), and the caller raises ``TimeoutError`` instead.
        """
        if task not in self._timed_out:
            return False
        self._timed_out.discard(task)
        return task.uncancel() == 0

    def close(self) -> None:
        """Stop the timer (the backend is disconnecting; its statements have ended)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, loop: Any, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._next = when
        self._handle = loop.call_at(when, self._check, loop)

    def _check(self, loop: Any) -> None:
        self._handle = None
        now = loop.time()
        first = now + self._period
        for task, deadline in self._deadlines.items():
            if deadline > now:
                first = min(first, deadline)
                continue
            if task in self._timed_out:
                continue
            # A task whose future is done (its reply came in this iteration) is about to
            # resume: it ended in time, as asyncpg's timer does not fire on a done waiter. A
            # task class without asyncio's _fut_waiter is cancelled all the same.
            waiting: Any = getattr(task, "_fut_waiter", None)
            if waiting is not None and waiting.done():
                continue
            self._timed_out.add(task)
            task.cancel()  # its done callbacks run later: the dictionary stays as it is
        if self._deadlines or self._started:
            self._started = False
            self._arm(loop, first)
