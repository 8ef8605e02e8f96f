"""SQLite specifics: the embedded default needs its migration and keeps timestamps aware."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    StorageConfigurationError,
    StorageSchemaError,
)

pytestmark = pytest.mark.sqlite
ROOT = Path(__file__).resolve().parents[2]


def test_unmigrated_file_says_which_command_to_run(tmp_path: Path) -> None:
    """A SQLite file without the table fails with the migrate command, and stays without it."""
    url = f"sqlite:///{tmp_path / 'new.db'}"

    class Memo(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=url)

    with pytest.raises(StorageSchemaError, match="pydantic-toast migrate"):
        Memo(text="x").model_dump()
    pydantic_toast.close_storage()


def test_in_memory_sqlite_is_refused_with_a_hint() -> None:
    """sqlite:///:memory: would lose the table per connection: memory:// is suggested."""
    with pytest.raises(StorageConfigurationError, match="memory://"):

        class InMemory(ExternalBaseModel):
            text: str
            model_config = ExternalConfigDict(storage="sqlite:///:memory:")


def test_alembic_check_has_no_drift_on_sqlite(tmp_path: Path) -> None:
    """alembic upgrade and check work on a SQLite file too."""
    url = f"sqlite:///{tmp_path / 'checked.db'}"
    for args in (("upgrade", "head"), ("check",), ("downgrade", "base")):
        result = subprocess.run(
            [sys.executable, "-m", "alembic", "-x", f"url={url}", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    """The README's demo migrates a SQLite file and runs the quickstart on it."""
    database = tmp_path / "demo.db"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pydantic_toast.integrations.cli",
            "migrate",
            f"sqlite:///{database}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", str(ROOT / "examples" / "quickstart_demo.py")],
        env={"DEMO_STORAGE_URL": f"sqlite:///{database}", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "async loaded: name='Carol'" in result.stdout
    assert "a missing record is reported" in result.stdout
