"""The distributions as users get them: built with `python -m build`, one fresh venv per extra.

`python -m build` builds the sdist first and the wheel from the sdist (a symlinked folder once
broke exactly that path). Each extra's venv then migrates, saves and loads, and reports every
missing optional dependency with its `pip install` line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from tests.integration.conftest import _admin, _delete_redis_keys, _with_database

# Building the distributions and five venvs is bounded by its own subprocess timeouts (600 s
# each) in the first tests' setup, above pytest-timeout's 600 s per test.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgresql,
    pytest.mark.redis,
    pytest.mark.timeout(2400),
]
ROOT = Path(__file__).resolve().parents[2]
EXTRAS = ["sqlite", "postgresql", "redis", "fastapi", "all"]
MIGRATION = "0001_external_records.py"


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel, built once with `python -m build` (wheel from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


@pytest.fixture(scope="module")
def fresh_database(postgres_admin_url: str) -> Iterator[str]:
    """A PostgreSQL database of this module's own, not migrated."""
    database = f"toast_wheel_{uuid4().hex[:10]}"
    _admin(postgres_admin_url, f'CREATE DATABASE "{database}"')
    try:
        yield _with_database(postgres_admin_url, database)
    finally:
        _admin(postgres_admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_wheel_and_sdist_hold_the_migrations_and_no_symlinks(dists: dict[str, Path]) -> None:
    """The wheel has the migrations inside the package; the sdist holds no symlink."""
    names = zipfile.ZipFile(dists["wheel"]).namelist()
    assert f"pydantic_toast/migrations/versions/{MIGRATION}" in names
    assert "pydantic_toast/migrations/env.py" in names
    assert "pydantic_toast/migrations/script.py.mako" in names
    assert "pydantic_toast/py.typed" in names
    assert not [n for n in names if n.startswith("migrations/")]
    with tarfile.open(dists["sdist"]) as sdist:
        assert not [m.name for m in sdist.getmembers() if m.issym() or m.islnk()]


@pytest.fixture(scope="module")
def wheelhouse(dists: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel and every dependency of [all], resolved once (from pip's cache when warm)."""
    house = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(house), f"{dists['wheel']}[all]"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return house


def _venv_report(
    extra: str, wheel: Path, house: Path, work: Path, pg: str, redis: str, prefix: str
) -> dict[str, Any]:
    venv = work / f"venv-{extra}"
    # No pip inside: this venv's pip is the outer one (--python), installing offline from the
    # wheelhouse. The venv gets exactly the wheel and what its extra pulls in.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(house),
            f"{wheel}[{extra}]",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    result = subprocess.run(
        [
            str(python),
            str(Path(__file__).with_name("wheel_extra_check.py")),
            extra,
            str(venv),
            pg,
            redis,
            prefix,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=work,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.fixture(scope="module")
def reports(
    dists: dict[str, Path],
    wheelhouse: Path,
    fresh_database: str,
    redis_base_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, dict[str, Any]]]:
    """Each extra's report from its own fresh venv (built in parallel)."""
    work = tmp_path_factory.mktemp("venvs")
    prefix = f"toast_wheel_{uuid4().hex[:8]}_"  # this run's keys: <prefix><extra>:...
    try:
        with ThreadPoolExecutor(len(EXTRAS)) as pool:
            futures = {
                extra: pool.submit(
                    _venv_report,
                    extra,
                    dists["wheel"],
                    wheelhouse,
                    work,
                    fresh_database,
                    redis_base_url,
                    prefix,
                )
                for extra in EXTRAS
            }
            yield {extra: future.result() for extra, future in futures.items()}
    finally:
        _delete_redis_keys(redis_base_url, f"{prefix}*")


HAS = {
    "sqlite": {"sqlite"},
    "postgresql": {"postgresql"},
    "redis": {"redis"},
    "fastapi": {"fastapi"},
    "all": {"sqlite", "postgresql", "redis", "fastapi"},
}


@pytest.mark.parametrize("extra", EXTRAS)
def test_each_extra_installs_migrates_and_round_trips(
    reports: dict[str, dict[str, Any]], extra: str
) -> None:
    """From the wheel: migrate and save/load where the extra allows, the pip line elsewhere."""
    report = reports[extra]
    has = HAS[extra]
    assert "site-packages" in report["file"]
    assert MIGRATION in report["migrations"]
    assert report["memory"] == "ok"
    assert report["help"]["code"] == 0
    for backend in ("sqlite", "postgresql", "redis"):
        if backend in has:
            assert report[backend] == "ok", report[backend]
        else:
            assert report[backend].startswith("StorageConfigurationError"), report[backend]
            assert f"pip install 'pydantic-toast[{backend}]'" in report[backend]
    for backend in ("sqlite", "postgresql"):
        migrate = report[f"migrate_{backend}"]
        if backend in has:
            assert migrate["code"] == 0, migrate["err"]
        else:
            assert migrate["code"] == 2
            assert migrate["err"].count("\n") == 1, migrate["err"]
            assert f"pip install 'pydantic-toast[{backend}]'" in migrate["err"]
    if "postgresql" in has:
        assert report["check_postgresql"]["code"] == 0
    if "fastapi" in has:
        assert report["fastapi"] == "ok"
    else:
        assert "pip install 'pydantic-toast[fastapi]'" in report["fastapi"]
