"""Page faults of a PostgreSQL server process per 100 KB load, by what its connection ran before.

    python bench/pg_connection_history.py [--loads 100]

Exact and repeatable on a busy machine (minor faults of the server process, from /proc): two
throwaway clusters, one with glibc's default allocator thresholds and one started as
``bench/run.py`` starts its own (``stores.WARM_MALLOC``). On each, a new connection first runs
one of the statements below, then ``--loads`` times pydantic-toast's ``select_one`` and raw
asyncpg's ``SELECT data::text`` of the same 100 KB record. With the defaults, a process that
never freed a large block gives its heap back after each statement and faults it in again for
the next: how fast a connection sends a 100 KB row depends on its past (issue 14: the raw
system's connection had run every batch, pydantic-toast's came fresh from the concurrent test).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import stores  # noqa: E402
from databases import throwaway_postgres  # noqa: E402
from systems import SELECT, UPSERT  # noqa: E402
from workloads import WORKLOADS  # noqa: E402

from pydantic_toast.backends.postgresql import _SQL  # noqa: E402


def minor_faults(pid: int) -> int:
    """The minor page faults of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])


async def faults_per_load(
    url: str, before: list[tuple[str, tuple[Any, ...]]], key: tuple[str, Any], loads: int
) -> str:
    """Faults per ``select_one`` and per raw select, on a new connection that ran ``before``."""
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        pid = connection.get_server_pid()
        for sql, args in before:
            await connection.execute(sql, *args)
        figures = []
        for sql, args in ((_SQL["select_one"], (*key, time.time())), (SELECT, key)):
            prepared = await connection.prepare(sql)
            await prepared.fetchrow(*args)
            started = minor_faults(pid)
            for _ in range(loads):
                await prepared.fetchrow(*args)
            figures.append(f"{(minor_faults(pid) - started) / loads:.1f}")
        return " | ".join(figures)
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--loads", type=int, default=100, help="loads per figure")
    loads = parser.parse_args().loads
    workload = WORKLOADS[2]
    text = workload.plain_model()(**workload.values(0)).model_dump_json()
    now = datetime.now(UTC)
    toast_save = (_SQL["upsert"], ("w", uuid.uuid4(), 1, text, None, now, now, None))
    before = {
        "nothing": [],
        "one pydantic-toast save": [toast_save],
        "one raw asyncpg upsert ($3::jsonb)": [(UPSERT, ("raw", uuid.uuid4(), text, now))],
        "a 4 MB value": [("SELECT length(repeat('x', 4194304))", ())],
    }
    print("| allocator | connection ran before | faults per select_one | per raw select |")
    print("|---|---|---|---|")
    for label, tunables in (("glibc defaults", ""), ("WARM_MALLOC", stores.WARM_MALLOC)):
        with contextlib.ExitStack() as stack:
            cluster = stores.TempCluster(malloc=tunables)
            stack.callback(cluster.destroy)
            url = stack.enter_context(throwaway_postgres("toast_history", cluster.url()))
            model = workload.external_model("History", url, "history")
            record = model(**workload.values(0))
            record.model_dump()
            key = ("history", record.external_id)
            for name, statements in before.items():
                figures = asyncio.run(faults_per_load(url, statements, key, loads))
                print(f"| {label} | {name} | {figures} |", flush=True)


if __name__ == "__main__":
    main()
