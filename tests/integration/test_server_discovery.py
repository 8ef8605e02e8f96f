"""How the suite finds its servers on a newcomer's machine: no TOAST_TEST_* variables.

These tests run pytest in a subprocess with the variables removed, so `make test` (and CI,
which sets them) always also exercises the discovery path: Docker probe, then local binaries,
then a loud skip, or with CI=true a failure saying how to provide a server.
"""

from __future__ import annotations

import gc
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import pytest

from tests import servers

ROOT = Path(__file__).resolve().parents[2]
SERVER_TESTS = [
    "tests/integration/test_every_backend.py",
    "tests/integration/test_cli.py",
    "-k",
    "postgresql or redis or postgres",
]


def newcomer_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TOAST_TEST_") and k not in ("CI", "PYTEST_ADDOPTS")
    }
    return {**env, **extra}


def pytest_run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_docker_probe_refused_is_quick_and_closes_its_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A DOCKER_HOST nobody listens on: no Docker, without waiting out the probe's timeout,
    and no socket left open."""
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{servers.free_port()}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        started = time.monotonic()
        assert servers.docker_answers(timeout=10) is False
        elapsed = time.monotonic() - started
        gc.collect()
    assert elapsed < 5  # refused at once; 10 s would mean it waited
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_docker_probe_on_a_silent_host_gives_up_after_its_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A DOCKER_HOST that accepts but never answers: no Docker after the probe's timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        accepted: list[socket.socket] = []
        thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]))
        thread.start()
        monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{listener.getsockname()[1]}")
        started = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert servers.docker_answers(timeout=0.5) is False
            gc.collect()
        elapsed = time.monotonic() - started
        thread.join(5)
        for connection in accepted:
            connection.close()
    assert 0.4 < elapsed < 3
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_missing_docker_socket_is_no_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default unix socket absent (this machine): no Docker, at once."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert servers.docker_answers() is False


@pytest.mark.slow
@pytest.mark.timeout(900)  # its inner pytest run has 600 s
def test_newcomer_without_variables_gets_local_servers() -> None:
    """With no TOAST_TEST_* variables, the server tests start local servers and all pass."""
    result = pytest_run(*SERVER_TESTS, env=newcomer_env())
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in summary
    assert "skipped" not in summary
    assert "error" not in summary


@pytest.mark.slow
@pytest.mark.timeout(900)  # its inner pytest run has 600 s
def test_nothing_at_all_skips_loudly() -> None:
    """No variables, no Docker, no binaries: each server test is skipped, saying what to do."""
    result = pytest_run(
        "-p", "tests.hide_servers", *SERVER_TESTS, env=newcomer_env(DOCKER_HOST="unix:///none")
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "skipped" in result.stdout.strip().splitlines()[-1]
    assert "no PostgreSQL server for the tests: set TOAST_TEST_POSTGRES_URL" in result.stdout
    assert "no Redis server for the tests: set TOAST_TEST_REDIS_URL" in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)  # its inner pytest run has 600 s
def test_nothing_at_all_in_ci_fails_saying_how_to_provide_a_server() -> None:
    """The same with CI=true: the run fails, and the message says how to provide a server."""
    result = pytest_run(
        "-p",
        "tests.hide_servers",
        *SERVER_TESTS,
        env=newcomer_env(CI="true", DOCKER_HOST="unix:///none"),
    )
    assert result.returncode != 0
    assert "no PostgreSQL server for the tests: set TOAST_TEST_POSTGRES_URL" in result.stdout
    assert "skipped" not in result.stdout.strip().splitlines()[-1]


def test_a_redis_whose_port_was_taken_is_reported_as_taken() -> None:
    """A connect to a port another process holds is no proof that the server started: the
    start reports PortTaken (the set-ups then retry on other ports), not a live server."""
    binary = shutil.which("redis-server")
    if binary is None:
        servers.missing_server("Redis", "(no variable: needs redis-server)")
        return
    with socket.socket() as squatter, tempfile.TemporaryDirectory() as root:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        log = Path(root) / "redis.log"
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--logfile", str(log)]
        with pytest.raises(servers.PortTaken, match="Address already in use"):
            servers.spawn_redis(argv, log)


def test_free_ports_lie_below_the_ephemeral_range_and_are_not_handed_out_twice() -> None:
    """Outgoing connections take ports in the ephemeral range: a port picked there may be
    gone by the time a server binds it (a cluster node failed to start so in CI)."""
    floor = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [servers.free_port() for _ in range(50)] + [
        servers.free_port(with_bus=True) for _ in range(50)
    ]
    assert len(set(ports)) == 100
    assert all(port < floor for port in ports)
    assert all(port + 10000 < floor for port in ports[50:])
