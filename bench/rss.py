"""Peak RSS growth of saves and loads (pydantic-toast async), each probe in a child process.

Three probes, each printing JSON (the peak RSS growth of the save and of the load, in bytes,
next to the bytes of JSON moved; for one model, also of a page holding it and of a batch load
of it with a small record, ``avalidate(list[...])``)::

    python bench/rss.py KIND WORKLOAD_INDEX COUNT URL       # one batch (bench/run.py uses it)
    python bench/rss.py model KIND MEGABYTES URL [OFFLOAD]  # one model of MEGABYTES of JSON

and a driver that starts throwaway stores (a database on ``TOAST_TEST_POSTGRES_URL``, a key
prefix on ``TOAST_TEST_REDIS_URL``, a SQLite file, a SeaweedFS, a 3-primary Redis Cluster from
the local ``redis-server`` or a key prefix on ``TOAST_BENCH_REDIS_CLUSTER_URL`` when set), runs
the probes round robin (one child each, so each starts from a clean heap) and prints median
[min-max] per cell::

    python bench/rss.py table --sizes 10 100 --rounds 3           # one large model
    python bench/rss.py table --batch 100000 --workloads 0 1 --rounds 3   # a batch of records
    python bench/rss.py table ... --src /path/to/other/checkout/src       # code to measure
    python bench/rss.py table --batch 100000 --kinds postgresql raw-postgresql  # vs raw drivers

``KIND`` is memory, sqlite, postgresql, redis, redis-cluster, s3, or offload (PostgreSQL
keeping a pointer, the payload in S3). The peak is read from ``VmHWM`` after resetting it
(Linux). ``raw-postgresql`` and ``raw-redis`` (batch probes only) are the raw drivers of
``bench/systems.py`` (asyncpg ``executemany`` and ``ANY`` select; a pipeline of SETs and MGET)
called on chunks of ``RAW_CHUNK`` records, every loaded model kept, as a caller would write a
batch that should not grow with its size. The driver runs the children with glibc's mmap
threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``; ``--dynamic-malloc`` keeps the
default): otherwise memory freed by the save stays mapped and the load reuses it unseen.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from uuid import uuid4

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, os.environ.get("TOAST_BENCH_SRC") or str(HERE.parent / "src"))

KINDS = ("memory", "sqlite", "postgresql", "redis", "redis-cluster", "s3", "offload")
RAW_KINDS = ("raw-postgresql", "raw-redis")
RAW_CHUNK = 1000


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def reset_peak_rss() -> int:
    """Reset the peak-RSS mark to the current RSS (Linux); return the current RSS."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS:")


def peak_rss() -> int:
    return _status("VmHWM:")


def probe(kind: str, workload_index: int, count: int, url: str) -> dict[str, float]:
    """One batch of ``count`` records of a workload saved, then loaded."""
    from systems import Toast
    from workloads import WORKLOADS

    workload = WORKLOADS[workload_index]
    toast = type("Probe", (Toast,), {"storage_kind": kind, "name": "probe", "backend": kind})
    system = toast(workload, {kind: url})

    async def run() -> dict[str, float]:
        await system.setup()
        objs = [system.make(i) for i in range(count)]
        plain = workload.plain_model()
        json_bytes = sum(len(plain(**workload.values(i)).model_dump_json()) for i in range(count))
        await system.load(await system.save(system.make(0)))  # connect outside the window
        before = reset_peak_rss()
        keys = await system.save_many(objs)
        save_peak = peak_rss() - before
        del objs
        before = reset_peak_rss()
        await system.load_many(keys)
        load_peak = peak_rss() - before
        await system.teardown()
        return {"json_bytes": json_bytes, "save_rss": save_peak, "load_rss": load_peak}

    return asyncio.run(run())


def raw_probe(kind: str, workload_index: int, count: int, url: str) -> dict[str, float]:
    """The batch of :func:`probe` through a raw driver, ``RAW_CHUNK`` records per call."""
    from systems import RawAsyncpg, RawRedis
    from workloads import WORKLOADS

    workload = WORKLOADS[workload_index]
    raw = {"postgresql": RawAsyncpg, "redis": RawRedis}[kind]
    base, _, prefix = url.partition("?prefix=")
    system = raw(workload, {kind: base, "redis_prefix": prefix})

    async def run() -> dict[str, float]:
        await system.setup()
        objs = [system.make(i) for i in range(count)]
        json_bytes = sum(len(obj.model_dump_json()) for obj in objs)
        await system.load(await system.save(system.make(0)))  # connect outside the window
        before = reset_peak_rss()
        keys: list[object] = []
        for start in range(0, count, RAW_CHUNK):
            keys += await system.save_many(objs[start : start + RAW_CHUNK])
        save_peak = peak_rss() - before
        del objs
        before = reset_peak_rss()
        loaded: list[object] = []
        for start in range(0, count, RAW_CHUNK):
            loaded += await system.load_many(keys[start : start + RAW_CHUNK])
        load_peak = peak_rss() - before
        assert len(loaded) == count
        del loaded
        await system.teardown()
        return {"json_bytes": json_bytes, "save_rss": save_peak, "load_rss": load_peak}

    return asyncio.run(run())


def document(megabytes: float) -> str:
    """``megabytes`` of text in one string (varied, so no store compresses it to nothing)."""
    piece = "".join(f"line {i:07d} of a large document; " for i in range(1000))
    repeats = int(megabytes * 1_000_000) // len(piece) + 1
    return (piece * repeats)[: int(megabytes * 1_000_000)]


def model_probe(kind: str, megabytes: float, url: str, offload: str | None) -> dict[str, float]:
    """One model holding ``megabytes`` of JSON saved, then loaded back."""
    import pydantic_core

    import pydantic_toast
    from pydantic_toast import ExternalBaseModel, ExternalConfigDict

    config = ExternalConfigDict(
        storage=url,
        external_name=f"Big{uuid4().hex[:8]}",
        max_decompressed_size=1 << 30,
    )
    if offload is not None:
        config["offload"] = offload
    big = type(
        "Big",
        (ExternalBaseModel,),
        {"__annotations__": {"title": str, "body": str}, "model_config": config},
    )

    async def run() -> dict[str, float]:
        small = await big(title="warm-up", body="x").asave()  # connect outside the window
        body = document(megabytes)
        json_bytes = len(pydantic_core.to_json({"title": "big", "body": body}))
        instance = big(title="big", body=body)
        del body
        before = reset_peak_rss()
        reference = await instance.asave()
        save_peak = peak_rss() - before
        del instance
        before = reset_peak_rss()
        loaded = await big.aload(reference)
        load_peak = peak_rss() - before
        assert len(loaded.body) == int(megabytes * 1_000_000)  # type: ignore[attr-defined]
        del loaded
        # Before the page: a Redis Cluster page leaves memory that the next load reuses.
        before = reset_peak_rss()
        batch = await pydantic_toast.avalidate(list[big], [reference, small])  # type: ignore[valid-type]
        batch_peak = peak_rss() - before
        assert len(batch[0].body) == int(megabytes * 1_000_000)
        del batch
        before = reset_peak_rss()
        page = await pydantic_toast.apage(big, limit=10)
        page_peak = peak_rss() - before
        newest = page.items[0]  # the warm-up record is older
        assert len(newest.body) == int(megabytes * 1_000_000)  # type: ignore[attr-defined]
        del page, newest
        await pydantic_toast.aclose_storage()
        return {
            "json_bytes": json_bytes,
            "save_rss": save_peak,
            "load_rss": load_peak,
            "page_rss": page_peak,
            "batch_rss": batch_peak,
        }

    return asyncio.run(run())


class Stores:
    """Throwaway stores for the driver: URLs per kind, removed on close."""

    def __init__(self, kinds: list[str]) -> None:
        sys.path.insert(0, str(HERE.parent))
        from tests import servers

        self.tmp = Path(tempfile.mkdtemp(prefix="toast-rss-"))
        self.urls: dict[str, str] = {"memory": "memory://rss"}
        self.offload: str | None = None
        self.weed = None
        self.cluster = None
        self.admin = os.environ["TOAST_TEST_POSTGRES_URL"]
        self.database = f"toast_rss_{uuid4().hex[:8]}"
        self.redis_prefix = f"toast_rss_{uuid4().hex[:8]}"
        from pydantic_toast.integrations.cli import main as toast_cli

        if "sqlite" in kinds:
            path = self.tmp / "rss.db"
            assert toast_cli(["migrate", f"sqlite:///{path}"]) == 0
            self.urls["sqlite"] = f"sqlite:///{path}"
        if {"postgresql", "offload", "raw-postgresql"} & set(kinds):
            self._admin(f'CREATE DATABASE "{self.database}"')
            pg = f"{self.admin.rpartition('/')[0]}/{self.database}"
            assert toast_cli(["migrate", pg]) == 0
            self.urls["postgresql"] = self.urls["offload"] = self.urls["raw-postgresql"] = pg
        if "redis" in kinds:
            self.urls["redis"] = f"{os.environ['TOAST_TEST_REDIS_URL']}?prefix={self.redis_prefix}"
        if "raw-redis" in kinds:
            redis = os.environ["TOAST_TEST_REDIS_URL"]
            self.urls["raw-redis"] = f"{redis}?prefix={self.redis_prefix}_raw"
        if "redis-cluster" in kinds:
            given = os.environ.get("TOAST_BENCH_REDIS_CLUSTER_URL")
            if given:
                separator = "&" if "?" in given else "?"
                self.urls["redis-cluster"] = f"{given}{separator}prefix={self.redis_prefix}"
            else:
                self.cluster = servers.TempRedisCluster(replicas=0)
                self.urls["redis-cluster"] = self.cluster.url(self.redis_prefix)
        if {"s3", "offload"} & set(kinds):
            self.weed = servers.TempSeaweedFS()
            asyncio.run(self._bucket())
            self.urls["s3"] = self.weed.url("rss", "records")
            self.offload = self.weed.url("rss", "payloads")

    async def _bucket(self) -> None:
        assert self.weed is not None
        async with self.weed.admin_client() as client:
            await client.create_bucket(Bucket="rss")

    async def _delete_cluster_prefix(self) -> None:
        """Delete this run's keys from every primary of a cluster given by URL (no FLUSH)."""
        from pydantic_toast.backends.redis_cluster import RedisClusterBackend

        backend = RedisClusterBackend(self.urls["redis-cluster"])
        await backend.connect()
        try:
            cluster = backend._connected_cluster()
            keys = [key async for key in cluster.scan_iter(match=f"{{{self.redis_prefix}:*")]
            for key in keys:
                await cluster.delete(key)
        finally:
            await backend.disconnect()

    def _admin(self, statement: str) -> None:
        from databases import admin_execute

        admin_execute(statement, self.admin)

    def close(self) -> None:
        if self.weed is not None:
            self.weed.stop()
        if self.cluster is not None:
            self.cluster.destroy()
        elif "redis-cluster" in self.urls:
            asyncio.run(self._delete_cluster_prefix())
        if "postgresql" in self.urls:
            self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        if {"redis", "raw-redis"} & set(self.urls):
            from stores import delete_redis_prefix

            delete_redis_prefix(os.environ["TOAST_TEST_REDIS_URL"], self.redis_prefix)
        shutil.rmtree(self.tmp, ignore_errors=True)


def table(arguments: argparse.Namespace) -> None:
    """Run the probes round robin in children and print the table."""
    env = dict(os.environ)
    if not arguments.dynamic_malloc:
        # glibc raises its mmap threshold after a large free, so a freed payload stays in RSS
        # and hides the next one's allocation: a fixed threshold returns large blocks to the
        # system at once, and the peak measures what was alive at the same time.
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    if arguments.src:
        env["TOAST_BENCH_SRC"] = str(Path(arguments.src).resolve())
    kinds = list(arguments.kinds)
    stores = Stores(kinds)
    if arguments.batch:
        cells = [(kind, index) for index in arguments.workloads for kind in kinds]
    else:
        cells = [(kind, size) for size in arguments.sizes for kind in kinds]
    results: dict[tuple[str, float], list[dict[str, float]]] = {cell: [] for cell in cells}
    try:
        for round_ in range(arguments.rounds):
            shift = round_ % len(cells)
            for kind, size in cells[shift:] + cells[:shift]:
                url = stores.urls[kind]
                if arguments.batch:
                    argv = [str(int(size)), str(arguments.batch), url]
                else:
                    argv = ["model", kind, str(size), url]
                    if kind == "offload":
                        assert stores.offload is not None
                        argv.append(stores.offload)
                if arguments.batch:
                    raw = kind.removeprefix("raw-")
                    argv = [kind, *argv] if raw == kind else ["raw", raw, *argv]
                output = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), *argv],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=False,
                )
                if output.returncode != 0:
                    print(f"{kind} {size}: failed\n{output.stderr[-2000:]}", file=sys.stderr)
                    continue
                results[(kind, size)].append(json.loads(output.stdout))
    finally:
        stores.close()
    load = os.getloadavg()
    print(
        f"{arguments.rounds} rounds, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        "peak RSS growth, median [min-max], and its ratio to the JSON moved"
    )
    what = "records" if arguments.batch else "payload"
    pages = "" if arguments.batch else " page peak RSS | batch load peak RSS |"
    print(f"| {what} | backend | JSON | save peak RSS | load peak RSS |{pages}")
    print("|---|---|---|---|---|" + ("" if arguments.batch else "---|---|"))
    for kind, size in cells:
        runs = results[(kind, size)]
        if not runs:
            print(f"| {size} | {kind} | failed | | |")
            continue
        json_bytes = runs[0]["json_bytes"]
        label = f"{arguments.batch:,} × workload {int(size)}" if arguments.batch else f"{size} MB"
        page = ""
        if not arguments.batch:
            page = (
                f" {_cell(runs, 'page_rss', json_bytes)} | {_cell(runs, 'batch_rss', json_bytes)} |"
            )
        print(
            f"| {label} | {kind} | {json_bytes / 1e6:.1f} MB "
            f"| {_cell(runs, 'save_rss', json_bytes)} | {_cell(runs, 'load_rss', json_bytes)} |"
            f"{page}"
        )


def _cell(runs: list[dict[str, float]], key: str, json_bytes: float) -> str:
    values = [run[key] / json_bytes for run in runs]
    mb = statistics.median(run[key] for run in runs) / 1e6
    return f"{mb:.0f} MB, {statistics.median(values):.2f}× [{min(values):.2f}-{max(values):.2f}]"


def main(argv: list[str]) -> None:
    if argv and argv[0] == "model":
        kind, megabytes, url = argv[1:4]
        offload = argv[4] if len(argv) > 4 else None
        print(json.dumps(model_probe(kind, float(megabytes), url, offload)))
        return
    if argv and argv[0] == "table":
        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("--sizes", type=float, nargs="+", default=[10.0, 100.0])
        parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS + RAW_KINDS)
        parser.add_argument("--batch", type=int, default=0, help="records per batch probe")
        parser.add_argument("--workloads", type=int, nargs="+", default=[0, 1])
        parser.add_argument("--rounds", type=int, default=3)
        parser.add_argument(
            "--dynamic-malloc", action="store_true", help="keep glibc's dynamic mmap threshold"
        )
        parser.add_argument("--src", help="the src directory of the code to measure")
        table(parser.parse_args(argv[1:]))
        return
    if argv and argv[0] == "raw":
        kind, index, count, url = argv[1:5]
        print(json.dumps(raw_probe(kind, int(index), int(count), url)))
        return
    kind, index, count, url = argv[:4]
    print(json.dumps(probe(kind, int(index), int(count), url)))


if __name__ == "__main__":
    main(sys.argv[1:])
