"""A user's four-method backend runs the conformance suite as its author would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from pydantic_toast import StorageBackend, register_backend
from pydantic_toast.testing.conformance import BackendConformance


class FileBackend(StorageBackend):
    """The README's four-method backend: one JSON file per record, no optional capability."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._base = Path(url.removeprefix("jsonfile://"))

    async def connect(self) -> None:
        self._base.mkdir(parents=True, exist_ok=True)

    async def disconnect(self) -> None:
        return

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        path = self._base / f"{class_name}_{id}.json"
        if path.exists():  # keep created_at, as the interface asks
            data = {**data, "created_at": json.loads(path.read_text())["created_at"]}
        path.write_text(json.dumps(data))

    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        path = self._base / f"{class_name}_{id}.json"
        return json.loads(path.read_text()) if path.exists() else None  # type: ignore[no-any-return]


class TestFileBackend(BackendConformance):
    """The suite against a backend with only the four required methods."""

    @pytest.fixture
    def storage_url(self, tmp_path: Path) -> str:
        register_backend("jsonfile", FileBackend)
        return f"jsonfile://{tmp_path}"


BROKEN_SUITE = '''
import json
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from pydantic_toast import StorageBackend, register_backend
from pydantic_toast.testing.conformance import BackendConformance


class ForgetfulBackend(StorageBackend):
    """Overwrites created_at on update: a bug the suite must catch."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._base = Path(url.removeprefix("forgetful://"))

    async def connect(self) -> None:
        return

    async def disconnect(self) -> None:
        return

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        (self._base / f"{class_name}_{id}.json").write_text(json.dumps(data))

    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        path = self._base / f"{class_name}_{id}.json"
        return json.loads(path.read_text()) if path.exists() else None


class TestForgetful(BackendConformance):
    @pytest.fixture
    def storage_url(self, tmp_path):
        register_backend("forgetful", ForgetfulBackend)
        return f"forgetful://{tmp_path}"
'''


def test_the_suite_catches_a_backend_that_loses_created_at(pytester: pytest.Pytester) -> None:
    """A backend that overwrites created_at on update fails exactly that conformance test."""
    pytester.makepyfile(test_forgetful=BROKEN_SUITE)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    suite_size = sum(1 for name in dir(BackendConformance) if name.startswith("test_"))
    result.assert_outcomes(passed=suite_size - 1, failed=1)
    result.stdout.fnmatch_lines(["*test_update_keeps_id_and_created_at*"])
