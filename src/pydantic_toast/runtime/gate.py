"""``Gate``: first come, first served admission to a pool of a fixed size, on one event loop."""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import suppress

__all__ = ["Gate"]


class Gate:
    """Admits at most ``size`` holders at a time, the waiting ones in the order they came.

    Unlike an asyncio queue (whose returned item goes to whoever asks before the woken waiter
    runs, sending that waiter to the back of the line), a leaving holder hands its place to
    the first waiter directly, and nobody enters while anyone waits. Cheaper than an
    ``asyncio.Semaphore`` on the path that does not wait: the caller tests :meth:`enter_now`.

    Args:
        size: How many may hold it at once.
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def enter_now(self) -> bool:
        """Enter if there is room and nobody waits; ``False`` (nothing taken) otherwise."""
        if self._free and not self._waiters:
            self._free -= 1
            return True
        return False

    async def enter(self) -> None:
        """Wait for a place, behind those already waiting.

        Bound the wait with ``asyncio.timeout()``: a wait that is cancelled or times out takes
        no place (one handed to it as it ended goes on to the next waiter).
        """
        if self.enter_now():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # handed a place just as the wait ended: pass it on
            else:
                with suppress(ValueError):  # not there when leave() already skipped it
                    self._waiters.remove(waiter)
            raise

    def leave(self) -> None:
        """Give the place back: to the first waiter, or to the room."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
