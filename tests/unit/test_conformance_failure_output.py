"""A backend author's failing conformance test shows the values it compared."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

_FORGETFUL = '''
import dataclasses

import pytest

from pydantic_toast import register_backend
from pydantic_toast.backends.memory import MemoryBackend
from pydantic_toast.testing.conformance import BackendConformance


class Forgetful(MemoryBackend):
    """Replaces a record whole on update: its created_at is the writer's, not the stored one."""

    async def save_records(self, records):
        for record in records:
            await self.delete(record.id, record.class_name)
        return await super().save_records(records)


class TestForgetful(BackendConformance):
    @pytest.fixture
    def storage_url(self):
        register_backend("forgetful", Forgetful)
        return "forgetful://conformance-failures"
'''


def test_a_failed_conformance_assert_shows_the_compared_values(tmp_path: Path) -> None:
    """The suite's asserts are rewritten by pytest: the report shows both ``created_at``s
    (a bare ``AssertionError`` told a backend author nothing)."""
    (tmp_path / "test_forgetful.py").write_text(textwrap.dedent(_FORGETFUL))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "test_update_keeps_id_and_created_at",
            str(tmp_path / "test_forgetful.py"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert "1 failed" in output, output
    assert "assert datetime.datetime(2024, 1, 2" in output, output
    assert "== datetime.datetime(2024, 1, 1" in output, output
