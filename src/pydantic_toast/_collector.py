"""The cyclic garbage collector paused while a batch builds its per-record objects.

CPython's collector runs whenever the container objects allocated since its last run outnumber
those freed by 700 (``gc.get_threshold()``), and every tenth run moves the young survivors on,
towards the oldest generation. A batch load of 10,000 records builds four to eight such objects
per record (the instance, its ``__dict__`` and fields set, its lists, its identity): built with
the collector on, it runs a hundred times during the build, and the instances reach the oldest
generation while still being built, where they count towards the full collections that walk
every object of the process (in a process holding many objects, the larger part of a batch
load's time). Paused, the new instances stay young: a batch that is used and dropped (a
request's) is freed by reference counting without ever being walked, and one that is kept is
walked once by the next young collection and moves on from there.

A batch save is the same: serializing 10,000 models makes six to eight such objects per record
(identity, id, fingerprint, record, the batch's entries), alive until the write ends.
Serialized with the collector on, it runs a hundred times and moves them towards the oldest
generation, and the full collection they then start lands on whatever runs next (measured: the
batch load after it, where it was most of the load's time). Paused are: a batch save's
serialization (the models of a list or tuple dumped, or any dump that queues :data:`PAUSE_FROM`
of them), the bookkeeping after its write, a batch load's reference parsing and its build. A
save followed by a load of 10,000 records of 10 fields, ten times over on PostgreSQL: 15 full
collections before, 7 after, and a third less time in the collector.

The collector is one switch for the whole process (``gc.disable()``), so the pause is shared:
it nests (batch loads building at once in several threads pause it once, the last to finish
ends it), restores what it found (a collector the application disabled stays disabled) and ends
with the build, whatever the build raises. It covers only loops that call no I/O and no
``await`` (a batch's writes and reads run with the collector on); other threads keep running
during it and their garbage cycles wait for its end; a process forked during it starts with the
collector as the pause found it. Caveat: a thread that calls ``gc.disable()`` while a batch is
being built finds the collector enabled again when the build ends.
"""

from __future__ import annotations

import gc
import os
import threading
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType

__all__ = ["PAUSE_FROM", "collector_paused", "paused_for"]

PAUSE_FROM = 1000
"""Records in a batch from which its build pauses the collector (a smaller batch allocates
too few objects for the collector to run more than a few times)."""


class CollectorPause:
    """The collector paused for as long as any ``with`` block of it runs (reentrant, shared by
    threads). One instance per process: :data:`collector_paused`."""

    __slots__ = ("_depth", "_lock", "_resume")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0  # with blocks inside, in all threads
        self._resume = False  # whether the collector was enabled when the first one began

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._depth += 1

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._lock:
            if self._depth == 0:  # a pause a forked child's reset already ended (its thread's)
                return
            self._depth -= 1
            if self._depth == 0 and self._resume:
                gc.enable()

    def __repr__(self) -> str:
        return f"<CollectorPause depth={self._depth}>"

    def forget_after_fork(self) -> None:
        """In a child process: end the pauses of the parent's threads (none of them runs here,
        so none would end them) and restore what the first of them found. The forking thread
        does run on: the pauses it held end here too, and its ``with`` blocks leave them as
        they are (see :meth:`__exit__`)."""
        self._lock = threading.Lock()
        if self._depth:
            self._depth = 0
            if self._resume:
                gc.enable()


collector_paused = CollectorPause()
os.register_at_fork(after_in_child=collector_paused.forget_after_fork)


def paused_for(records: int) -> AbstractContextManager[None]:
    """The pause for a batch's work on ``records`` records: :data:`collector_paused` from
    :data:`PAUSE_FROM` records, else no pause (the collector would run a few times at most)."""
    return collector_paused if records >= PAUSE_FROM else _NO_PAUSE


_NO_PAUSE = nullcontext()  # (reusable: one for every small batch)
