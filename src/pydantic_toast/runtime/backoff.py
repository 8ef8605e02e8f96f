"""The pauses between attempts at something a store refuses for a while (busy, unreachable,
a slot being migrated): the one backoff of the library, with a deadline."""

from __future__ import annotations

import asyncio
import time

__all__ = ["Backoff"]

_FIRST = 0.05
_LONGEST = 0.5


class Backoff:
    """Pauses from 50 ms, doubling up to 0.5 s, for ``seconds`` in all.

    Attributes:
        seconds: The time allowed, from when the backoff was made.
        pauses: How many pauses were taken.
    """

    __slots__ = ("give_up", "pause", "pauses", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.give_up = time.monotonic() + seconds
        self.pause = _FIRST
        self.pauses = 0

    def __repr__(self) -> str:
        return f"<Backoff {self.seconds:g} s, {self.pauses} pauses>"

    async def wait(self) -> bool:
        """Sleep the next pause and return ``True``; ``False`` (at once) when it would end
        past the time allowed: then the next attempt would come too late, so make none."""
        if time.monotonic() + self.pause > self.give_up:
            return False
        await asyncio.sleep(self.pause)
        self.pause = min(self.pause * 2, _LONGEST)
        self.pauses += 1
        return True
