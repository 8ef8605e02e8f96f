"""The ``toast_storage`` pytest fixture: an isolated storage for each test.

Enable it in a ``conftest.py``::

    pytest_plugins = ["pydantic_toast.testing.pytest_plugin"]

    def test_something(toast_storage):
        Order(product="tea", quantity=1).model_dump()   # stored in this test's memory:// only
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pydantic_toast.runtime.storage import Storage
from pydantic_toast.testing import isolated_storage

__all__ = ["toast_storage"]


@pytest.fixture
def toast_storage() -> Iterator[Storage]:
    """A fresh :class:`~pydantic_toast.Storage`, current for the test, closed after it."""
    with isolated_storage() as storage:
        yield storage
