"""Load test: 100 concurrent clients against the todo service under uvicorn, on loopback.

    make load-test                        # 15 s per variant
    make load-test BENCH_ARGS=--quick     # 4 s per variant

After an unmeasured warm-up (which opens the connection pools), each client
loops over a mix of create (25%), get (40%), list (15%) and patch (20%) for a fixed time,
first against the routes that use the non-blocking API (/api/todos), then against the
same routes calling the sync API from async code (/api/sync/todos). It reports requests/s,
p50/p99 latency and every failed request. PostgreSQL from TOAST_BENCH_POSTGRES_URL (a
throwaway database is created, migrated and dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from databases import throwaway_postgres

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 100


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def client_loop(
    http: httpx.AsyncClient, prefix: str, deadline: float, seed: int, results: dict[str, list]
) -> None:
    rng = random.Random(seed)
    mine: list[str] = []
    while time.monotonic() < deadline:
        roll = rng.random()
        started = time.perf_counter()
        try:
            if roll < 0.25 or not mine:
                response = await http.post(prefix, json={"description": f"task {rng.random()}"})
                if response.status_code == 201:
                    mine.append(response.json()["id"])
                expected = 201
            elif roll < 0.65:
                response = await http.get(f"{prefix}/{rng.choice(mine)}")
                expected = 200
            elif roll < 0.80:
                response = await http.get(prefix, params={"limit": 20})
                expected = 200
            else:
                response = await http.patch(
                    f"{prefix}/{rng.choice(mine)}", json={"completed": rng.random() < 0.5}
                )
                expected = 200
            ok = response.status_code == expected
            error = None if ok else f"{response.status_code} {response.text[:80]}"
        except httpx.HTTPError as exc:
            ok, error = False, type(exc).__name__
        results["latency"].append((time.perf_counter() - started) * 1000)
        if not ok:
            results["errors"].append(error)


async def run_variant(base: str, prefix: str, seconds: float) -> dict[str, float | int | list]:
    results: dict[str, list] = {"latency": [], "errors": []}
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as http:
        await http.get("/health")
        warmup: dict[str, list] = {"latency": [], "errors": []}  # opens the pools: not measured
        warm_until = time.monotonic() + min(3.0, seconds / 2)
        await asyncio.gather(
            *(client_loop(http, prefix, warm_until, -seed, warmup) for seed in range(CLIENTS))
        )
        deadline = time.monotonic() + seconds
        started = time.perf_counter()
        await asyncio.gather(
            *(client_loop(http, prefix, deadline, seed, results) for seed in range(CLIENTS))
        )
        elapsed = time.perf_counter() - started
    latency = sorted(results["latency"])
    return {
        "requests": len(latency),
        "rps": len(latency) / elapsed,
        "p50": statistics.median(latency),
        "p99": latency[int(0.99 * (len(latency) - 1))],
        "failed": len(results["errors"]),
        "errors": sorted(set(results["errors"]))[:5],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float)
    args = parser.parse_args()
    seconds = args.seconds or (4 if args.quick else 15)
    with throwaway_postgres("toast_load") as url:
        run_service(url + os.environ.get("TOAST_LOAD_URL_OPTIONS", ""), seconds)


def run_service(url: str, seconds: float) -> None:
    """Serve the todo API on ``url``'s database and load both route variants."""
    port = free_port()
    service = None
    try:
        service = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "examples.todo_api.app:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": url},
        )
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(f"{base}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        rows = []
        for label, prefix in (("non-blocking API", "/api/todos"), ("sync API", "/api/sync/todos")):
            print(f"running {label} for {seconds:.0f} s ...", file=sys.stderr, flush=True)
            rows.append((label, asyncio.run(run_variant(base, prefix, seconds))))
        print(
            f"\n{CLIENTS} concurrent clients, {seconds:.0f} s each, mixed create/get/list/patch\n"
        )
        print("| routes | requests | requests/s | p50 ms | p99 ms | failed |")
        print("|---|---|---|---|---|---|")
        for label, r in rows:
            print(
                f"| {label} | {r['requests']} | {r['rps']:.0f} | {r['p50']:.1f} | "
                f"{r['p99']:.1f} | {r['failed']} |"
            )
        for label, r in rows:
            if r["errors"]:
                print(f"{label} errors: {r['errors']}")
    finally:
        if service is not None:
            service.terminate()
            service.wait(30)


if __name__ == "__main__":
    main()
