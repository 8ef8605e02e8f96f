"""The built-in backends pass the conformance suite that backend authors run."""

from __future__ import annotations

import pytest

from pydantic_toast.testing.conformance import BackendConformance


class TestBuiltInBackends(BackendConformance):
    """Every built-in backend (memory, SQLite, PostgreSQL, Redis) against the suite."""

    @pytest.fixture
    def storage_url(self, storage_url: str) -> str:  # type: ignore[override]
        """Each backend's URL, from the integration fixtures."""
        return storage_url
