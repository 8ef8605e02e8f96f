"""The servers a benchmark run uses: throwaway ones it starts itself, or URLs it is given.

By default a temporary PostgreSQL cluster (local binaries, fsync on, trust auth on loopback) and
a throwaway redis-server, both on free ports, are started and removed afterwards. With URLs
given, a throwaway database is created on that PostgreSQL server and dropped afterwards, and on
that Redis every key is written under a run prefix and deleted afterwards (never a FLUSH).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from databases import throwaway_postgres

# The Redis server of the scripts that take no URL (a throwaway key prefix on it).
REDIS_URL = os.environ.get("TOAST_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pg_binary(name: str) -> str:
    # Debian keeps the real binaries here; /usr/local/bin may hold wrappers.
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    found = candidates[-1] if candidates else shutil.which(name)
    if not found:
        raise FileNotFoundError(
            f"{name} not found: install the PostgreSQL server binaries (Debian: postgresql) "
            "or pass --postgres-url"
        )
    return found


# The throwaway cluster's server processes allocate as long-lived ones do, whatever statements
# they ran before. With glibc's defaults a process gives the top of its heap back to the kernel
# above a trim threshold (128 KB, raised only once it frees a larger mapped block) and faults
# those pages in again for the next statement: per 100 KB row sent, a new connection's process
# (or one that had run only pydantic-toast's saves) took 42-148 page faults (130-270 us more per
# load), while the raw system's connection (it ran every batch, and its jsonb-typed upserts
# raise the thresholds) took none, so a 100 KB load's ratio measured which connection each
# system got. bench/pg_connection_history.py counts them. Given servers keep their settings.
WARM_MALLOC = "glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=16777216"


class TempCluster:
    """A throwaway PostgreSQL cluster, fsync on (the shipped default), on a free port.

    ``malloc``: its processes' ``GLIBC_TUNABLES`` (``""``: glibc's defaults).
    """

    def __init__(self, malloc: str = WARM_MALLOC) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="toast-bench-pg-"))
        self.data = self.root / "data"
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(pg_binary("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust")
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=on "
            "-c max_connections=300 -c shared_buffers=256MB"
        )
        self._run(
            pg_binary("pg_ctl"),
            *("-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options),
            *("-w", "-t", "60", "start"),
            env=os.environ | {"GLIBC_TUNABLES": malloc},
        )

    def _run(self, *argv: str, env: dict[str, str] | None = None) -> None:
        command = ["runuser", "-u", self.user, "--", *argv] if self.user else list(argv)
        # No pipes: the server started by pg_ctl would hold them open.
        with open(self.root / "commands.log", "ab") as log:
            subprocess.run(command, check=True, stdout=log, stderr=log, timeout=120, env=env)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def pin(self, cpus: set[int]) -> None:
        """Run the server's processes, and the backends it starts from now on, on ``cpus``."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        for pid in [postmaster, *_children(postmaster)]:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(pid, cpus)

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self._run(pg_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


class TempRedis:
    """A throwaway redis-server (no persistence) on a free port."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise FileNotFoundError(
                "redis-server not found: install it (Debian: redis-server) or pass --redis-url"
            )
        self.port = free_port()
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]  # noqa: RUF005
            + ["--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("the throwaway redis-server did not start within 10 s")

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pin(self, cpus: set[int]) -> None:
        """Run the server on ``cpus``."""
        os.sched_setaffinity(self.process.pid, cpus)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def _children(parent: int) -> list[int]:
    """The pids of ``parent``'s child processes (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            # The fields after the command name, which may hold spaces: state, then ppid.
            if int(stat.read_text().rpartition(")")[2].split()[1]) == parent:
                found.append(int(stat.parent.name))
    return found


PINNINGS = ("same", "split")
"""``--pin``: the throwaway servers on the harness's CPU (``same``: every round trip hands
over on one CPU, so what is measured is CPU work), or on another one (``split``: every round
trip wakes the other CPU). Unpinned, the scheduler puts each server process on either CPU of
a 2-core machine, and a raw asyncpg load's p50 is 41-52 us on the client's CPU, 96-110 on the
other (bench/RESULTS.md's raw load p50 85-229 us across repetitions, bimodal): a ratio then
says mostly where two processes landed."""


def pin_harness(mode: str, *servers: TempCluster | TempRedis) -> None:
    """Pin this process to CPU 0 and ``servers`` to CPU 0 (``same``) or CPU 1 (``split``)."""
    available = os.sched_getaffinity(0)
    if {0, 1} - available:
        raise RuntimeError(f"--pin needs CPUs 0 and 1; this process may use {sorted(available)}")
    os.sched_setaffinity(0, {0})
    for server in servers:
        server.pin({0} if mode == "same" else {1})


@dataclass(frozen=True)
class Servers:
    """URLs for one run. ``redis_prefix`` namespaces every key this run writes to Redis."""

    postgresql: str
    redis: str
    redis_prefix: str
    sqlite: str
    memory: str
    throwaway: bool  # servers started by this run (not given as URLs)

    def for_toast(self) -> dict[str, str]:
        return {
            "postgresql": self.postgresql,
            "redis": f"{self.redis}?prefix={self.redis_prefix}_toast",
            "sqlite": self.sqlite,
            "memory": self.memory,
        }

    def for_raw(self) -> dict[str, str]:
        return {"postgresql": self.postgresql, "redis": self.redis}


def delete_redis_prefix(url: str, prefix: str) -> None:
    """Delete every key of the Redis at ``url`` whose name starts with ``prefix`` (no FLUSH)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()


@contextlib.contextmanager
def servers(
    postgres_url: str | None, redis_url: str | None, pin: str | None = None
) -> Iterator[Servers]:
    """The stores for one run; everything it wrote is removed afterwards.

    ``pin`` (one of :data:`PINNINGS`): where the throwaway servers run, relative to this
    process (given servers cannot be pinned).
    """
    if pin is not None and (postgres_url is not None or redis_url is not None):
        raise ValueError("--pin pins the throwaway servers: it cannot go with server URLs")
    from pydantic_toast.integrations.cli import main as toast_cli

    scratch = Path(tempfile.mkdtemp(prefix="toast-bench-"))
    sqlite = f"sqlite:///{scratch / 'bench.db'}"
    assert toast_cli(["migrate", sqlite]) == 0
    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, scratch, True)
        if postgres_url is None:
            cluster = TempCluster()
            stack.callback(cluster.destroy)
            admin = cluster.url()
        else:
            admin = postgres_url
        database = stack.enter_context(throwaway_postgres("toast_bench", admin))
        if redis_url is None:
            temp_redis = TempRedis()
            stack.callback(temp_redis.stop)
            redis = temp_redis.url()
        else:
            redis = redis_url
            stack.callback(delete_redis_prefix, redis, prefix)
        if pin is not None:
            pin_harness(pin, cluster, temp_redis)
        yield Servers(
            postgresql=database,
            redis=redis,
            redis_prefix=prefix,
            sqlite=sqlite,
            memory=f"memory://{prefix}",
            throwaway=postgres_url is None and redis_url is None,
        )
