"""The C floors: pgbench and redis-benchmark doing the same writes and reads as the raw drivers.

They move the same JSON text (no Python, no decoding) and show how much of a latency is the
server and the wire. pgbench runs a custom script in prepared mode (the upsert and the primary-key
select of the raw asyncpg system); redis-benchmark runs SET/GET of the same value under this
run's key prefix (custom commands, so it never touches other keys).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from systems import PG_POOL_MAX, REDIS_POOL
from workloads import Workload

TIMEOUT = 600


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Floor:
    """A C client run as a subprocess; implements the harness's phases."""

    name: str
    backend: str
    sync = False
    floor = True

    def setup(self) -> None:
        """Prepare data (not timed)."""

    def teardown(self) -> None:
        """Remove scratch files."""


class PgBench(Floor):
    """pgbench, prepared mode: the upsert and the PK select of the raw asyncpg system."""

    name = "pgbench (C, prepared)"
    backend = "postgresql"

    def __init__(self, workload: Workload, urls: dict[str, str]) -> None:
        self.binary = shutil.which("pgbench")
        if not self.binary:
            raise FileNotFoundError("pgbench not found: install it (Debian: postgresql-contrib)")
        self.url = urls["postgresql"]
        self.data = workload.plain_model()(**workload.values(0)).model_dump_json()
        self.class_name = f"pgbench_{uuid.uuid4().hex[:8]}"
        self.scratch = Path(tempfile.mkdtemp(prefix="toast-pgbench-"))
        (self.scratch / "save.sql").write_text(
            "INSERT INTO external_records "
            "(class_name, id, schema_version, data, created_at, updated_at) "
            f"VALUES ('{self.class_name}', gen_random_uuid(), 1, CAST(:data AS jsonb), "
            "now(), now()) ON CONFLICT (class_name, id) DO UPDATE "
            "SET data = excluded.data, updated_at = excluded.updated_at;\n"
        )
        self.seeded = 1000
        (self.scratch / "load.sql").write_text(
            f"\\set i random(1, {self.seeded})\n"
            "SELECT data::text FROM external_records "
            f"WHERE class_name = '{self.class_name}' "
            "AND id = CAST(md5(CAST(:i AS text)) AS uuid);\n"
        )

    def setup(self) -> None:
        import asyncio

        import asyncpg

        async def seed() -> None:
            connection = await asyncpg.connect(self.url)
            try:
                await connection.execute(
                    "INSERT INTO external_records "
                    "(class_name, id, schema_version, data, created_at, updated_at) "
                    "SELECT $1, md5(g::text)::uuid, 1, $2::jsonb, now(), now() "
                    "FROM generate_series(1, $3::int) AS g",
                    self.class_name,
                    self.data,
                    self.seeded,
                )
            finally:
                await connection.close()

        asyncio.run(seed())

    def teardown(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _run(self, script: str, clients: int, transactions: int) -> tuple[list[float], float]:
        """Per-transaction latencies (µs) and the throughput (transactions/s)."""
        prefix = self.scratch / f"log_{uuid.uuid4().hex[:6]}"
        output = subprocess.run(
            [
                self.binary or "pgbench",
                *("-n", "-M", "prepared", "-f", str(self.scratch / script)),
                *("-c", str(clients), "-j", str(min(clients, 2)), "-t", str(transactions)),
                *("-D", f"data={self.data}", "-l", f"--log-prefix={prefix}"),
                self.url,
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        if output.returncode != 0:
            raise RuntimeError(f"pgbench failed: {output.stderr.strip()[-500:]}")
        latencies: list[float] = []
        for log in self.scratch.glob(f"{prefix.name}*"):
            latencies += [float(line.split()[2]) for line in log.read_text().splitlines()]
            log.unlink()
        tps = next(
            float(line.split()[2])
            for line in output.stdout.splitlines()
            if line.startswith("tps = ")
        )
        return latencies, tps

    def single(self, count: int) -> dict[str, float]:
        saves, _ = self._run("save.sql", 1, count)
        loads, _ = self._run("load.sql", 1, count)
        return summary(saves, loads)

    def batch(self, count: int) -> dict[str, float]:
        return {}

    def concurrent(self, tasks: int, per_task: int) -> dict[str, float]:
        transactions = max(1, tasks * per_task // PG_POOL_MAX)
        _, loads = self._run("load.sql", PG_POOL_MAX, transactions)
        _, saves = self._run("save.sql", PG_POOL_MAX, transactions)
        return {"conc_load": loads, "conc_save": saves}


class RedisBenchmark(Floor):
    """redis-benchmark: SET/GET of the same value, pipelined for batches."""

    name = "redis-benchmark (C)"
    backend = "redis"

    def __init__(self, workload: Workload, urls: dict[str, str]) -> None:
        self.binary = shutil.which("redis-benchmark")
        if not self.binary:
            raise FileNotFoundError("redis-benchmark not found: install it (Debian: redis-tools)")
        parts = urlsplit(urls["redis"])
        self.connection = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
        if parts.password:
            self.connection += ["-a", unquote(parts.password)]
        if parts.path.strip("/"):
            self.connection += ["--dbnum", parts.path.strip("/")]
        self.value = workload.plain_model()(**workload.values(0)).model_dump_json()
        self.key = f"{urls['redis_prefix']}_rb_{uuid.uuid4().hex[:8]}:__rand_int__"

    def _run(
        self, command: list[str], requests: int, clients: int, pipeline: int, keyspace: int
    ) -> dict[str, float]:
        output = subprocess.run(
            [
                self.binary or "redis-benchmark",
                *self.connection,
                *("-n", str(requests), "-c", str(clients), "-P", str(pipeline)),
                *("-r", str(keyspace), "--csv", *command),
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        lines = [line for line in output.stdout.splitlines() if line.startswith('"')]
        if output.returncode != 0 or len(lines) < 2:
            raise RuntimeError(f"redis-benchmark failed: {output.stderr.strip()[-500:]}")
        # The first column names the command (with the value, commas and all): read from the end.
        header = [cell.strip('"') for cell in lines[0].split(",")][1:]
        values = [cell.strip('"') for cell in lines[-1].split(",")][-len(header) :]
        row = dict(zip(header, values, strict=True))
        return {
            "rps": float(row["rps"]),
            "p50": float(row["p50_latency_ms"]) * 1000,
            "p99": float(row["p99_latency_ms"]) * 1000,
        }

    def _set(self, requests: int, clients: int = 1, pipeline: int = 1) -> dict[str, float]:
        return self._run(["SET", self.key, self.value], requests, clients, pipeline, 1000)

    def _get(self, requests: int, clients: int = 1, pipeline: int = 1) -> dict[str, float]:
        return self._run(["GET", self.key], requests, clients, pipeline, 1000)

    def single(self, count: int) -> dict[str, float]:
        # The 1,000-key space is filled once (below), so nearly every GET finds its value.
        saves = self._set(max(count, 4000))
        loads = self._get(count)
        return {
            "save_p50": saves["p50"],
            "save_p99": saves["p99"],
            "load_p50": loads["p50"],
            "load_p99": loads["p99"],
        }

    # redis-benchmark times in milliseconds: short runs give coarse rates, so these run longer.
    def batch(self, count: int) -> dict[str, float]:
        pipeline = min(count, 1000)
        # ...but not for large values, where 20 pipelines would move gigabytes.
        requests = max(count, 20 * pipeline) if len(self.value) < 10_000 else count
        return {
            "batch_save": self._set(requests, pipeline=pipeline)["rps"],
            "batch_load": self._get(requests, pipeline=pipeline)["rps"],
        }

    def concurrent(self, tasks: int, per_task: int) -> dict[str, float]:
        requests = max(tasks * per_task, 5000)
        return {
            "conc_load": self._get(requests, clients=REDIS_POOL)["rps"],
            "conc_save": self._set(requests, clients=REDIS_POOL)["rps"],
        }


def summary(saves: list[float], loads: list[float]) -> dict[str, Any]:
    return {
        "save_p50": statistics.median(saves),
        "save_p99": percentile(saves, 0.99),
        "load_p50": statistics.median(loads),
        "load_p99": percentile(loads, 0.99),
    }


FLOORS: list[type[Floor]] = [PgBench, RedisBenchmark]
