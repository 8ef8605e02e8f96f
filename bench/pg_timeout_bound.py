"""How long a single PostgreSQL save past ``command_timeout`` takes to answer, by failure.

    PYTHONPATH=src python bench/pg_timeout_bound.py [--timeout 1.0] [--rounds 3]

A throwaway cluster (``tests/servers.py``, started, migrated and destroyed by this process)
behind a fault proxy (``tests/fault_proxy.py``); the storage URL's ``command_timeout`` and
``connect_timeout`` are ``--timeout`` (T) and 5 T, and its pool holds four idle connections
before each save. Each scenario times one ``asave()`` of an update, from the call to its
answer, and prints the median [min-max] in seconds and in T:

* ``lock``: the row is locked by another transaction for 3 T; the cancel stops the save
  (``StorageTimeoutError``, nothing applied);
* ``slow reply``: the save is applied at once, its reply held 1.5 T (saved);
* ``stalled``: the same, its reply held 10 T: the wait for the statement's end on that
  connection times out too, and the boundary reads the record back on another one (saved);
* ``frozen``: the reply held as in ``stalled``, and every server process stopped (SIGSTOP)
  0.5 T after the save was sent: the reading back times out as well
  (``OutcomeUnknownError``);
* ``worst``: the reply held 1.9 T (the wait for the statement's end answers just in time),
  the next request naming the record held 10 T, and the server stopped at 2.5 T. When the
  record was read back on another connection after that wait (before this script's commit),
  that reading back timed out, then the boundary's: the longest path of one attempt, 3.9 T.
  Now the wait is the reading back, on the statement's own connection: it ends by 2 T.

The server is resumed (SIGCONT) once the save has answered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from uuid import uuid4

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
from tests import servers
from tests.fault_proxy import FaultProxy

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from pydantic_toast.integrations.cli import main as toast_cli


async def _timed(save: Callable[[], Awaitable[object]]) -> tuple[float, str]:
    started = time.monotonic()
    try:
        await save()
        outcome = "saved"
    except pydantic_toast.ExternalStorageError as exc:
        outcome = type(exc).__name__
    return time.monotonic() - started, outcome


async def _open_connections(items: list[ExternalBaseModel], cluster: servers.TempPostgres) -> None:
    """Leave one idle pooled connection per item: their saves are held on a row lock together."""
    locker = await asyncpg.connect(cluster.url())
    try:
        async with locker.transaction():
            for item in items:
                await locker.execute(
                    "SELECT 1 FROM external_records WHERE id = $1 FOR UPDATE",
                    item.external_id,  # type: ignore[attr-defined]
                )
            held = [asyncio.ensure_future(item.asave(force=True)) for item in items]
            await asyncio.sleep(0.1)
        await asyncio.gather(*held)
    finally:
        await locker.close()


async def _scenario(
    name: str, cluster: servers.TempPostgres, proxy: FaultProxy, url: str, bound: float
) -> tuple[float, str]:
    note = type(
        "Note",
        (ExternalBaseModel,),
        {
            "__annotations__": {"text": str},
            "model_config": ExternalConfigDict(storage=url, external_name=f"N{uuid4().hex[:8]}"),
        },
    )
    items = [note(text=str(n)) for n in range(4)]
    for item in items:
        await item.asave()
    await _open_connections(items[1:], cluster)
    item = items[0]
    marker = f"bound-{uuid4().hex}"
    item.text = marker  # type: ignore[attr-defined]
    if name == "lock":
        locker = await asyncpg.connect(cluster.url())
        try:
            async with locker.transaction():
                await locker.execute(
                    "SELECT 1 FROM external_records WHERE id = $1 FOR UPDATE",
                    item.external_id,  # type: ignore[attr-defined]
                )
                return await _timed(item.asave)
        finally:
            await locker.close()
    held = {"slow reply": 1.5, "worst": 1.9}.get(name, 10) * bound
    proxy.delay_reply_to(marker.encode(), held)
    if name not in ("frozen", "worst"):
        return await _timed(item.asave)
    pids = cluster.server_pids()

    async def freeze() -> None:
        if name == "worst":
            while proxy.armed:  # noqa: ASYNC110 (the proxy's thread sets no event)
                await asyncio.sleep(0.001)
            # The save has gone: the next request naming the record is the backend's reading back.
            proxy.delay_reply_to(item.external_id.bytes, 10 * bound)  # type: ignore[attr-defined]
        await asyncio.sleep((2.5 if name == "worst" else 0.5) * bound)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # a child that has just ended
                os.kill(pid, signal.SIGSTOP)

    freezing = asyncio.ensure_future(freeze())
    try:
        return await _timed(item.asave)
    finally:
        try:
            await freezing
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)


NAMES = os.environ.get("BOUND_SCENARIOS", "lock,slow reply,stalled,frozen,worst").split(",")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cluster = servers.TempPostgres()
    cluster.start()
    try:
        assert toast_cli(["migrate", cluster.url()]) == 0
        for name in NAMES:
            seconds, outcomes = [], set()
            for _ in range(args.rounds):
                with FaultProxy("127.0.0.1", cluster.port) as proxy:
                    url = cluster.url().replace(f":{cluster.port}/", f":{proxy.port}/")
                    url += f"?command_timeout={args.timeout}&connect_timeout={5 * args.timeout}"
                    took, outcome = asyncio.run(_scenario(name, cluster, proxy, url, args.timeout))
                    pydantic_toast.close_storage()
                seconds.append(took)
                outcomes.add(outcome)
                time.sleep(0.2)
            median = statistics.median(seconds)
            print(
                f"{name:>10}: {median:.2f} s [{min(seconds):.2f}-{max(seconds):.2f}] = "
                f"{median / args.timeout:.2f} T [{min(seconds) / args.timeout:.2f}-"
                f"{max(seconds) / args.timeout:.2f}], {', '.join(sorted(outcomes))}"
            )
    finally:
        pydantic_toast.close_storage()
        cluster.destroy()


if __name__ == "__main__":
    main()
