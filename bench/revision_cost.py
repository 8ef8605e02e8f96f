"""What revisions and change tracking cost a save: this tree against the commit before them.

    python bench/revision_cost.py                      # 7 rounds, every backend, sync and async
    python bench/revision_cost.py --rounds 9 --backends memory,sqlite
    python bench/revision_cost.py --before-src /path/to/old/src --after-src src

Issue 11's closing figures: the conditional write and change tracking must not cost more than
10% on any backend's save, and an unchanged re-dump must be at least 10x faster than a save.

How it measures: each system (``before``: the source tree of the commit before revisions, e.g.
``git worktree add /tmp/before-rev a95dc0f``; ``after``: this tree) runs in its own worker
processes, one per backend, with its own ``PYTHONPATH``, its own PostgreSQL database and SQLite
file (each migrated by that system's own migrations) and its own Redis key prefix. Raw-driver
workers (asyncpg, redis.asyncio) give the floor on the servers. Workers stay up; the parent
drives them one at a time (never two measuring at once), round robin, in an order rotated each
round. In a round each worker, for each API (sync: ``model_dump()`` / ``model_validate()`` from
the main thread; async: ``asave()`` / ``aload()``), times ``--ops`` single saves of fresh
instances, as many loads, then re-dumps of the saved (unchanged) instances and of the loaded
ones, and reports the p50 of each. Ratios are taken within a round (after / before, save /
re-dump, library / raw driver), then the median [min-max] over the rounds is reported, with the
load average seen at the start and the end.

Servers: ``--postgres-url`` (default ``TOAST_TEST_POSTGRES_URL``; a throwaway database per
system is created and dropped) and ``--redis-url`` (default ``TOAST_TEST_REDIS_URL``; keys under
a run prefix, deleted afterwards; never flushed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BACKENDS = ("memory", "sqlite", "postgresql", "redis")
APIS = ("sync", "async")
PHASES = ("save", "load", "redump", "redump_loaded")
RAW_BACKENDS = ("postgresql", "redis")

# -- the worker: one system, one backend, driven over stdin/stdout --------------------------------


def _p50(samples: list[float]) -> float:
    return statistics.median(samples)


class ToastWorker:
    """pydantic-toast (whichever tree is on sys.path) on one storage URL."""

    def __init__(self, url: str, workload_name: str) -> None:
        sys.path.insert(0, str(HERE))
        from workloads import WORKLOADS

        self.workload = next(w for w in WORKLOADS if w.name == workload_name)
        self.model: Any = self.workload.external_model(
            "RevisionCost", url, f"revcost_{uuid.uuid4().hex[:8]}"
        )
        self.loop = asyncio.new_event_loop()

    def round(self, api: str, ops: int) -> dict[str, float]:
        objs = [self.model(**self.workload.values(i)) for i in range(ops)]
        gc.collect()
        if api == "sync":
            return self._sync(objs)
        return self.loop.run_until_complete(self._async(objs))

    def _sync(self, objs: list[Any]) -> dict[str, float]:
        times: dict[str, list[float]] = {phase: [] for phase in PHASES}
        clock = time.perf_counter_ns
        refs = []
        for obj in objs:
            started = clock()
            refs.append(obj.model_dump())
            times["save"].append(clock() - started)
        loaded = []
        for ref in refs:
            started = clock()
            loaded.append(self.model.model_validate(ref))
            times["load"].append(clock() - started)
        for obj in objs:
            started = clock()
            obj.model_dump()
            times["redump"].append(clock() - started)
        for obj in loaded:
            started = clock()
            obj.model_dump()
            times["redump_loaded"].append(clock() - started)
        return {phase: _p50(samples) / 1000 for phase, samples in times.items()}

    async def _async(self, objs: list[Any]) -> dict[str, float]:
        times: dict[str, list[float]] = {phase: [] for phase in PHASES}
        clock = time.perf_counter_ns
        refs = []
        for obj in objs:
            started = clock()
            refs.append(await obj.asave())
            times["save"].append(clock() - started)
        loaded = []
        for ref in refs:
            started = clock()
            loaded.append(await self.model.aload(ref))
            times["load"].append(clock() - started)
        for obj in objs:
            started = clock()
            await obj.asave()
            times["redump"].append(clock() - started)
        for obj in loaded:
            started = clock()
            await obj.asave()
            times["redump_loaded"].append(clock() - started)
        return {phase: _p50(samples) / 1000 for phase, samples in times.items()}

    def close(self) -> None:
        import pydantic_toast

        self.loop.run_until_complete(pydantic_toast.aclose_storage())
        pydantic_toast.close_storage()
        self.loop.close()


class RawWorker:
    """The raw driver, async only: asyncpg's UPSERT/SELECT, or redis.asyncio's SET/GET."""

    def __init__(self, backend: str, url: str, workload_name: str) -> None:
        sys.path.insert(0, str(HERE))
        from workloads import WORKLOADS

        self.workload = next(w for w in WORKLOADS if w.name == workload_name)
        self.plain = self.workload.plain_model()
        self.backend = backend
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._connect())

    async def _connect(self) -> None:
        if self.backend == "postgresql":
            import asyncpg

            self.connection = await asyncpg.connect(self.url)
            self.class_name = f"raw_{uuid.uuid4().hex[:8]}"
        else:
            import redis.asyncio as aioredis

            url, _, prefix = self.url.partition("#")
            self.client = aioredis.Redis.from_url(url)
            self.prefix = prefix

    def round(self, api: str, ops: int) -> dict[str, float]:
        objs = [self.plain(**self.workload.values(i)) for i in range(ops)]
        gc.collect()
        return self.loop.run_until_complete(self._async(objs))

    async def _async(self, objs: list[Any]) -> dict[str, float]:
        from datetime import UTC, datetime

        upsert = (
            "INSERT INTO external_records (class_name, id, schema_version, data, created_at, "
            "updated_at) VALUES ($1, $2, 1, $3::jsonb, $4, $4) ON CONFLICT (class_name, id) DO "
            "UPDATE SET data = excluded.data, updated_at = excluded.updated_at"
        )
        select = "SELECT data::text FROM external_records WHERE class_name = $1 AND id = $2"
        saves, loads, keys = [], [], []
        clock = time.perf_counter_ns
        for obj in objs:
            started = clock()
            data = obj.__pydantic_serializer__.to_json(obj)
            if self.backend == "postgresql":
                key: Any = uuid.uuid4()
                await self.connection.execute(
                    upsert, self.class_name, key, data.decode(), datetime.now(UTC)
                )
            else:
                key = f"{self.prefix}:{uuid.uuid4()}"
                await self.client.set(key, data)
            saves.append(clock() - started)
            keys.append(key)
        for key in keys:
            started = clock()
            if self.backend == "postgresql":
                text = await self.connection.fetchval(select, self.class_name, key)
            else:
                text = await self.client.get(key)
            self.plain.model_validate_json(text)
            loads.append(clock() - started)
        return {"save": _p50(saves) / 1000, "load": _p50(loads) / 1000}

    def close(self) -> None:
        if self.backend == "postgresql":
            self.loop.run_until_complete(self.connection.close())
        else:
            self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


def worker(system: str, backend: str, url: str, workload: str) -> None:
    """Serve commands from the parent, one JSON line each, until ``close``."""
    import warnings

    warnings.simplefilter("error")  # a blocking-call or resource warning would skew the figures
    runner: Any = (
        RawWorker(backend, url, workload) if system == "raw" else ToastWorker(url, workload)
    )
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but answers on the pipe
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "close":
            runner.close()
            out.write("{}\n")
            out.flush()
            return
        answer = {api: runner.round(api, command["ops"]) for api in command["apis"]}
        out.write(json.dumps(answer) + "\n")
        out.flush()


# -- the parent: stores, workers, rounds, report -------------------------------------------------


def _python() -> str:
    return sys.executable


def _env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)
    env.pop("PYTHONHASHSEED", None)
    return env


def _migrate(src: Path, url: str) -> None:
    code = (
        "import sys; from pydantic_toast.integrations.cli import main; "
        "sys.exit(main(['migrate', sys.argv[1]]))"
    )
    subprocess.run(
        [_python(), "-c", code, url], env=_env(src), check=True, capture_output=True, text=True
    )


@contextlib.contextmanager
def stores(
    systems: dict[str, Path], backends: list[str], postgres: str, redis_url: str
) -> Iterator[dict[tuple[str, str], str]]:
    """A URL per (system, backend), each migrated by that system's own code; removed after."""
    from databases import admin_execute
    from stores import delete_redis_prefix

    run = uuid.uuid4().hex[:8]
    scratch = Path(tempfile.mkdtemp(prefix="toast-revcost-"))
    urls: dict[tuple[str, str], str] = {}
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, scratch, True)
        for system, src in systems.items():
            if "memory" in backends:
                urls[(system, "memory")] = f"memory://revcost_{system}"
            if "sqlite" in backends:
                url = f"sqlite:///{scratch / f'{system}.db'}"
                _migrate(src, url)
                urls[(system, "sqlite")] = url
            if "postgresql" in backends:
                database = f"toast_revcost_{run}_{system}"
                admin_execute(f'CREATE DATABASE "{database}"', postgres)
                stack.callback(
                    admin_execute, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)', postgres
                )
                url = f"{postgres.rsplit('/', 1)[0]}/{database}"
                _migrate(src, url)
                urls[(system, "postgresql")] = url
            if "redis" in backends:
                prefix = f"revcost_{run}_{system}"
                sep = "&" if "?" in redis_url else "?"
                urls[(system, "redis")] = f"{redis_url}{sep}prefix={prefix}"
        if "redis" in backends:
            stack.callback(delete_redis_prefix, redis_url, f"revcost_{run}_")
            urls[("raw", "redis")] = f"{redis_url}#revcost_{run}_raw"
        if "postgresql" in backends:
            # The raw driver writes the table the measured tree writes (its revision column,
            # count triggers and indexes): the same durable work per save. (It used to write
            # the table as it was before revisions, whose saves fire no count trigger.)
            urls[("raw", "postgresql")] = urls[("after", "postgresql")]
        yield urls


class Worker:
    def __init__(self, system: str, backend: str, url: str, src: Path, workload: str) -> None:
        self.system, self.backend = system, backend
        self.process = subprocess.Popen(
            [_python(), str(Path(__file__).resolve()), "--worker", system, backend, url, workload],
            env=_env(src),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.system} {self.backend} died (see its stderr above)")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask({"cmd": "close"})
        self.process.wait(30)


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def measure(args: argparse.Namespace) -> dict[str, Any]:
    systems = {"before": args.before_src.resolve(), "after": args.after_src.resolve()}
    backends = args.backends.split(",")
    apis = args.apis.split(",")
    results: list[dict[str, Any]] = []  # one row per round, worker and API
    loads = [_load()]
    with stores(systems, backends, args.postgres_url, args.redis_url) as urls:
        workers = []
        for backend in backends:
            for system, src in systems.items():
                workers.append(Worker(system, backend, urls[(system, backend)], src, args.workload))
            if backend in RAW_BACKENDS and not args.no_raw:
                workers.append(
                    Worker("raw", backend, urls[("raw", backend)], systems["after"], args.workload)
                )
        try:
            for worker_ in workers:  # warm-up: imports, connections, caches (discarded)
                worker_.ask({"cmd": "round", "ops": args.warmup, "apis": _apis(worker_, apis)})
            for round_ in range(args.rounds):
                shift = round_ % len(workers)
                started = time.perf_counter()
                for worker_ in workers[shift:] + workers[:shift]:
                    answer = worker_.ask(
                        {"cmd": "round", "ops": args.ops, "apis": _apis(worker_, apis)}
                    )
                    for api, figures in answer.items():
                        results.append(
                            {
                                "round": round_,
                                "system": worker_.system,
                                "backend": worker_.backend,
                                "api": api,
                            }
                            | figures
                        )
                loads.append(_load())
                print(
                    f"round {round_ + 1}/{args.rounds}: {time.perf_counter() - started:.0f} s, "
                    f"load {loads[-1]}",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            for worker_ in workers:
                worker_.close()
    return {
        "rows": results,
        "rounds": args.rounds,
        "ops": args.ops,
        "workload": args.workload,
        "load_averages": loads,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "before_src": str(systems["before"]),
        "after_src": str(systems["after"]),
    }


def _apis(worker_: Worker, apis: list[str]) -> list[str]:
    return ["async"] if worker_.system == "raw" else apis


def _spread(values: list[float], digits: int = 2) -> str:
    if not values:
        return "-"
    return (
        f"{statistics.median(values):.{digits}f} "
        f"[{min(values):.{digits}f}-{max(values):.{digits}f}]"
    )


def report(data: dict[str, Any]) -> str:
    rows = data["rows"]
    by: dict[tuple[str, str, str, int], dict[str, float]] = {
        (r["system"], r["backend"], r["api"], r["round"]): r for r in rows
    }
    rounds = range(data["rounds"])
    backends = sorted({r["backend"] for r in rows}, key=BACKENDS.index)
    apis = [api for api in APIS if any(r["api"] == api for r in rows)]

    def series(
        backend: str, api: str, figure: Callable[[Callable[[str], dict[str, float]]], float]
    ) -> list[float]:
        values = []
        for round_ in rounds:

            def pick(system: str, round_: int = round_) -> dict[str, float]:
                return by[(system, backend, api, round_)]

            with contextlib.suppress(KeyError):
                values.append(figure(pick))
        return values

    lines = [
        f"# Revision cost: {data['workload']}, {data['ops']} ops per phase, "
        f"{data['rounds']} rounds ({data['date']})",
        "",
        f"before: {data['before_src']}  after: {data['after_src']}",
        f"load averages (start, after each round): {'; '.join(data['load_averages'])}",
        "",
        "p50 per round, then median [min-max] over the rounds. Ratios taken within a round.",
        "",
        "| backend | API | save before µs | save after µs | save after/before (≤1.10) "
        "| re-dump µs | save/re-dump (≥10) | re-dump loaded µs | save/re-dump loaded "
        "| load before µs | load after µs | load after/before |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backend in backends:
        for api in apis:
            cells = [
                series(backend, api, lambda f: f("before")["save"]),
                series(backend, api, lambda f: f("after")["save"]),
                series(backend, api, lambda f: f("after")["save"] / f("before")["save"]),
                series(backend, api, lambda f: f("after")["redump"]),
                series(backend, api, lambda f: f("after")["save"] / f("after")["redump"]),
                series(backend, api, lambda f: f("after")["redump_loaded"]),
                series(backend, api, lambda f: f("after")["save"] / f("after")["redump_loaded"]),
                series(backend, api, lambda f: f("before")["load"]),
                series(backend, api, lambda f: f("after")["load"]),
                series(backend, api, lambda f: f("after")["load"] / f("before")["load"]),
            ]
            digits = [1, 1, 2, 1, 1, 1, 1, 1, 1, 2]
            lines.append(
                f"| {backend} | {api} | "
                + " | ".join(_spread(c, d) for c, d in zip(cells, digits, strict=True))
                + " |"
            )
    raw_backends = [
        b for b in backends if any(r["system"] == "raw" and r["backend"] == b for r in rows)
    ]
    if raw_backends:
        lines += [
            "",
            "Ratios to the raw driver (async; asyncpg UPSERT/SELECT, redis.asyncio SET/GET):",
            "",
            "| backend | raw save µs | save before/raw | save after/raw | raw load µs "
            "| load before/raw | load after/raw |",
            "|---|---|---|---|---|---|---|",
        ]
        for backend in raw_backends:
            cells = [
                series(backend, "async", lambda f: f("raw")["save"]),
                series(backend, "async", lambda f: f("before")["save"] / f("raw")["save"]),
                series(backend, "async", lambda f: f("after")["save"] / f("raw")["save"]),
                series(backend, "async", lambda f: f("raw")["load"]),
                series(backend, "async", lambda f: f("before")["load"] / f("raw")["load"]),
                series(backend, "async", lambda f: f("after")["load"] / f("raw")["load"]),
            ]
            digits = [1, 2, 2, 1, 2, 2]
            lines.append(
                f"| {backend} | "
                + " | ".join(_spread(c, d) for c, d in zip(cells, digits, strict=True))
                + " |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--before-src", type=Path, default=Path("/work/wt/before-rev/src"))
    parser.add_argument("--after-src", type=Path, default=REPO / "src")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--ops", type=int, default=200, help="operations per phase and round")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--apis", default=",".join(APIS))
    parser.add_argument("--workload", default="10 fields")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw-driver workers")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "TOAST_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("TOAST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    data = measure(args)
    if args.json:
        args.json.write_text(json.dumps(data, indent=1))
    print(report(data))


if __name__ == "__main__":
    main()
