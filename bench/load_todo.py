"""Load test: 100 concurrent clients against the todo service under uvicorn, on loopback.

    make load-test                        # 15 s per variant, 3 rounds
    make load-test BENCH_ARGS=--quick     # 4 s per variant, 1 round
    .venv-bench/bin/python bench/load_todo.py --src . --src ../other-checkout --rounds 5

After an unmeasured warm-up (which opens the connection pools), each client loops over a
mix of create (25%), get (40%), list (15%) and patch (20%) for a fixed time, against the
routes that use the non-blocking API (/api/todos) and against the same routes calling the
sync API from async code (/api/sync/todos). Each (checkout, variant) gets its own uvicorn
process, PYTHONPATH and throwaway database migrated by that checkout's own code; checkouts
and variants run round robin, and each figure is the median [min-max] over the rounds.

Besides requests/s and p50/p99 latency (wall clock: noisy on a shared machine), it reports
what depends little on the machine's load: the server process's CPU time per request (from
/proc), the PostgreSQL transactions per request (``pg_stat_database`` of the throwaway
database, read after the server exited, so every backend has flushed its counters) and the
most connections the database saw. The client is a minimal HTTP/1.1 client on asyncio
streams, keep-alive, one connection per simulated client: httpx's AsyncClient spent about
2.5 times the server's CPU per request, so that on 2 cores the figures measured the client.
PostgreSQL from TOAST_BENCH_POSTGRES_URL (databases are created, migrated and dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from databases import ADMIN_URL, admin_execute
from stores import free_port

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 100
VARIANTS = {"non-blocking API": "/api/todos", "sync API": "/api/sync/todos"}
TICKS = os.sysconf("SC_CLK_TCK")
SERVER = [
    sys.executable,
    "-m",
    "uvicorn",
    "examples.todo_api.app:app",
    "--log-level",
    "warning",
    "--no-access-log",
]


class Connection:
    """One keep-alive HTTP/1.1 connection: a request at a time, Content-Length bodies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def call(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        payload = b""
        if body is not None:
            payload = json.dumps(body).encode()
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + payload)
        header = await self.reader.readuntil(b"\r\n\r\n")
        status = int(header[9:12])
        length = 0
        for line in header.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length) if length else b""

    def close(self) -> None:
        self.writer.close()


@dataclass
class Tally:
    latency: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def client_loop(
    connection: Connection, prefix: str, deadline: float, seed: int, tally: Tally
) -> None:
    rng = random.Random(seed)
    mine: list[str] = []
    while time.monotonic() < deadline:
        roll = rng.random()
        started = time.perf_counter()
        try:
            if roll < 0.25 or not mine:
                status, body = await connection.call(
                    "POST", prefix, {"description": f"task {rng.random()}"}
                )
                if status == 201:
                    mine.append(json.loads(body)["id"])
                expected = 201
            elif roll < 0.65:
                status, body = await connection.call("GET", f"{prefix}/{rng.choice(mine)}")
                expected = 200
            elif roll < 0.80:
                status, body = await connection.call("GET", f"{prefix}?limit=20")
                expected = 200
            else:
                status, body = await connection.call(
                    "PATCH", f"{prefix}/{rng.choice(mine)}", {"completed": rng.random() < 0.5}
                )
                expected = 200
            error = None if status == expected else f"{status} {body[:80]!r}"
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            error = type(exc).__name__
        tally.latency.append((time.perf_counter() - started) * 1000)
        if error is not None:
            tally.errors.append(error)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def database_stats(url: str, database: str) -> tuple[int, int]:
    """(transactions so far, connections now) of ``database``, as pg_stat_database has them."""
    connection = await asyncpg.connect(url)
    try:
        row = await connection.fetchrow(
            "SELECT xact_commit + xact_rollback AS xacts, numbackends "
            "FROM pg_stat_database WHERE datname = $1",
            database,
        )
    finally:
        await connection.close()
    assert row is not None
    # numbackends counts the connection reading it.
    return int(row["xacts"]), int(row["numbackends"]) - 1


async def drive(
    port: int, pid: int, prefix: str, seconds: float, admin: str, database: str
) -> dict[str, float | int | list[str]]:
    """Warm up, then load the server for ``seconds``; figures of the measured window."""
    connections = [await Connection.open(port) for _ in range(CLIENTS)]
    try:
        warmup = Tally()
        warm_until = time.monotonic() + min(3.0, seconds / 2)
        await asyncio.gather(
            *(client_loop(c, prefix, warm_until, -i, warmup) for i, c in enumerate(connections))
        )
        tally = Tally()
        peak = 0

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, (await database_stats(admin, database))[1])
                await asyncio.sleep(1)

        sampler = asyncio.create_task(sample())
        server_cpu, client_cpu = cpu_seconds(pid), time.process_time()
        started = time.perf_counter()
        deadline = time.monotonic() + seconds
        await asyncio.gather(
            *(client_loop(c, prefix, deadline, i, tally) for i, c in enumerate(connections))
        )
        elapsed = time.perf_counter() - started
        server_cpu, client_cpu = cpu_seconds(pid) - server_cpu, time.process_time() - client_cpu
        sampler.cancel()
    finally:
        for connection in connections:
            connection.close()
    latency = sorted(tally.latency)
    count = len(latency)
    return {
        "requests": count,
        "all_requests": count + len(warmup.latency) + 1,  # and the /health check
        "rps": count / elapsed,
        "p50": statistics.median(latency),
        "p99": latency[int(0.99 * (count - 1))],
        "failed": len(tally.errors),
        "errors": sorted(set(tally.errors + warmup.errors))[:5],
        "server_us": server_cpu / count * 1e6,
        "client_us": client_cpu / count * 1e6,
        "peak_connections": peak,
    }


def run_once(src: Path, prefix: str, seconds: float) -> dict[str, float | int | list[str]]:
    """One uvicorn process of checkout ``src`` on a fresh database, loaded on ``prefix``."""
    database = f"toast_load_{os.urandom(4).hex()}"
    admin_execute(f'CREATE DATABASE "{database}"', ADMIN_URL)
    url = f"{ADMIN_URL.rsplit('/', 1)[0]}/{database}"
    env = {
        **os.environ,
        "PYTHONPATH": str(src / "src"),
        "DATABASE_URL": url + os.environ.get("TOAST_LOAD_URL_OPTIONS", ""),
        "PYDANTIC_TOAST_BLOCKING_CALLS": "off",
    }
    service = None
    try:
        migrate = "from pydantic_toast.integrations.cli import main; raise SystemExit(main())"
        subprocess.run(
            [sys.executable, "-c", migrate, "migrate", url],
            cwd=src,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        before, _ = asyncio.run(database_stats(ADMIN_URL, database))
        port = free_port()
        service = subprocess.Popen(
            [*SERVER, "--port", str(port)],
            cwd=src,
            env=env,
        )
        wait_healthy(port)
        result = asyncio.run(drive(port, service.pid, prefix, seconds, ADMIN_URL, database))
        service.terminate()
        service.wait(30)
        service = None
        time.sleep(0.5)  # the backends flush their counters as they exit
        after, _ = asyncio.run(database_stats(ADMIN_URL, database))
        result["xacts"] = (after - before) / int(result["all_requests"])
        return result
    finally:
        if service is not None:
            service.terminate()
            service.wait(30)
        admin_execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)', ADMIN_URL)


def wait_healthy(port: int) -> None:
    async def probe() -> bool:
        try:
            connection = await Connection.open(port)
        except OSError:
            return False
        try:
            return (await connection.call("GET", "/health"))[0] == 200
        finally:
            connection.close()

    for _ in range(200):
        if asyncio.run(probe()):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the todo service on port {port} did not become healthy")


def spread(values: list[float], digits: int = 0) -> str:
    return (
        f"{statistics.median(values):,.{digits}f} "
        f"[{min(values):,.{digits}f}-{max(values):,.{digits}f}]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 s per variant, 1 round")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--rounds", type=int)
    parser.add_argument(
        "--src", action="append", type=Path, help="a checkout to measure (repeat to compare)"
    )
    parser.add_argument("--variant", choices=sorted(VARIANTS), action="append")
    args = parser.parse_args()
    seconds = args.seconds or (4 if args.quick else 15)
    rounds = args.rounds or (1 if args.quick else 3)
    sources = [path.resolve() for path in args.src or [ROOT]]
    variants = args.variant or list(VARIANTS)
    results: dict[tuple[str, str], list[dict[str, float | int | list[str]]]] = {}
    loads = [os.getloadavg()[0]]
    for round_ in range(rounds):
        for variant in variants:
            for src in sources:
                print(
                    f"round {round_ + 1}/{rounds}: {variant} of {src} for {seconds:.0f} s ...",
                    file=sys.stderr,
                    flush=True,
                )
                result = run_once(src, VARIANTS[variant], seconds)
                results.setdefault((str(src), variant), []).append(result)
                loads.append(os.getloadavg()[0])
    print(
        f"\n{CLIENTS} concurrent clients, {seconds:.0f} s per run, mixed create/get/list/patch, "
        f"{rounds} round(s) round robin, median [min-max]; load average "
        f"{min(loads):.1f}-{max(loads):.1f}\n"
    )
    print(
        "| checkout | routes | requests/s | p50 ms | p99 ms | failed | server CPU us/req "
        "| client CPU us/req | transactions/req | peak connections |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (src, variant), runs in results.items():

        def column(name: str, runs: list[dict[str, float | int | list[str]]] = runs) -> list[float]:
            return [float(run[name]) for run in runs]  # type: ignore[arg-type]

        print(
            f"| {Path(src).name} | {variant} | {spread(column('rps'))} | {spread(column('p50'))} "
            f"| {spread(column('p99'))} | {sum(column('failed')):.0f} "
            f"| {spread(column('server_us'))} | {spread(column('client_us'))} "
            f"| {spread(column('xacts'), 2)} | {max(column('peak_connections')):.0f} |"
        )
    for (src, variant), runs in results.items():
        errors = sorted({error for run in runs for error in run["errors"]})  # type: ignore[union-attr]
        if errors:
            print(f"{Path(src).name} {variant} errors: {errors[:5]}")


if __name__ == "__main__":
    main()
