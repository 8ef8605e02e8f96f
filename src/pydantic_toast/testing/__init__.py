"""Helpers for testing code that uses pydantic-toast, and for testing storage backends.

* :func:`isolated_storage` gives a test a fresh :class:`~pydantic_toast.Storage`: its own
  ``memory://`` stores, stored-name catalog and connections, and the backend classes registered
  so far. Models (even those defined at import time) save and load through it inside the block.
* :func:`memory_records` reads what a ``memory://`` URL holds, for assertions.
* ``pytest_plugins = ["pydantic_toast.testing.pytest_plugin"]`` in a ``conftest.py`` gives every
  test the ``toast_storage`` fixture (an isolated storage).
* :mod:`pydantic_toast.testing.conformance` is the test suite a backend author runs to prove
  their backend behaves like the built-in ones.

Example::

    from pydantic_toast.testing import isolated_storage, memory_records

    def test_order_is_stored():
        with isolated_storage():
            Order(product="tea", quantity=1).model_dump()
            assert len(memory_records("memory://shop", "Order")) == 1
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic_toast._records import StoredRecord
from pydantic_toast._url import StorageURL
from pydantic_toast.runtime.storage import Storage, current_storage

__all__ = ["isolated_storage", "memory_records"]

if "pytest" in sys.modules and "pydantic_toast.testing.conformance" not in sys.modules:
    # Importing the suite imports this package first: pytest then rewrites the suite's asserts,
    # so that a backend author's failure shows the values compared, not a bare AssertionError.
    sys.modules["pytest"].register_assert_rewrite("pydantic_toast.testing.conformance")


@contextmanager
def isolated_storage() -> Iterator[Storage]:
    """A fresh storage, current inside the block and closed when it ends.

    It starts with the backend classes registered in the current storage, and nothing else:
    empty ``memory://`` stores, no stored names claimed, no open connections.
    """
    with Storage(registry=current_storage().registry.copy()) as storage:
        yield storage


def memory_records(url: str, class_name: str | None = None) -> list[StoredRecord]:
    """The live records a ``memory://NAME`` URL holds in the current storage, oldest first.

    Args:
        url: The model's ``memory://`` storage URL.
        class_name: Only the records stored under this class name.
    """
    parsed = StorageURL.parse(url)
    return current_storage().memory_store(parsed.host or "").records(class_name)
