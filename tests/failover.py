"""A write workload through the library while a test breaks a server: what survived."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from pydantic_toast import ExternalBaseModel, ExternalConfigDict, RecordNotFoundError
from pydantic_toast.runtime.storage import Storage


class Workload:
    """Writers saving new records through the library until stopped; what was acknowledged."""

    def __init__(self, url: str, writers: int = 8) -> None:
        class Event(ExternalBaseModel):
            model_config = ExternalConfigDict(storage=url, external_name="Event")
            n: int

        self.model = Event
        self.writers = writers
        self.acknowledged: list[Any] = []
        self.acknowledged_at: list[float] = []
        self.errors: list[tuple[float, str]] = []
        self.stop = asyncio.Event()

    async def writer(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                reference = await self.model(n=n).asave()
            except Exception as exc:  # the library's errors, counted and reported
                self.errors.append((time.monotonic(), f"{type(exc).__name__}: {exc}"[:160]))
                await asyncio.sleep(0.05)
            else:
                self.acknowledged.append(reference)
                self.acknowledged_at.append(time.monotonic())

    async def lost(self) -> int:
        """How many acknowledged writes cannot be loaded (any other error fails the test)."""
        missing = 0
        for reference in self.acknowledged:
            try:
                await self.model.aload(reference)
            except RecordNotFoundError:
                missing += 1
        return missing


def run_with(cluster_action: Any, url: str, seconds_after: float = 2.0) -> dict[str, Any]:
    """Run the workload, do ``cluster_action()`` in a thread meanwhile; the figures."""

    async def main() -> dict[str, Any]:
        with Storage():
            workload = Workload(url)
            tasks = [asyncio.create_task(workload.writer()) for _ in range(workload.writers)]
            await asyncio.sleep(1.0)
            started = time.monotonic()
            await asyncio.to_thread(cluster_action)
            await asyncio.sleep(seconds_after)
            before = len(workload.acknowledged)
            deadline = time.monotonic() + 30
            while len(workload.acknowledged) <= before:
                assert time.monotonic() < deadline, "writes did not resume within 30 s"
                await asyncio.sleep(0.1)
            workload.stop.set()
            await asyncio.gather(*tasks)
            # Writes to the failed shard fail (the writers retry) until its replica is
            # promoted: the recovery time is the longest gap between acknowledgements.
            times = [started, *sorted(t for t in workload.acknowledged_at if t >= started)]
            stall = max(b - a for a, b in itertools.pairwise(times))
            return {
                "acknowledged": len(workload.acknowledged),
                "lost": await workload.lost(),
                "errors": len(workload.errors),
                "error_kinds": sorted({kind for _, kind in workload.errors}),
                "longest_stall_s": round(stall, 2),
            }

    return asyncio.run(main())
