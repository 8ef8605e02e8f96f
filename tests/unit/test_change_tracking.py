"""Change tracking: an unchanged instance is not written again, nested or not."""

from __future__ import annotations

import pytest

import pydantic_toast
from pydantic_toast import ConcurrencyError, ExternalBaseModel, ExternalConfigDict
from tests.conftest import CALL_LOGS


def define(url: str) -> tuple[type[ExternalBaseModel], type[ExternalBaseModel]]:
    class Leaf(ExternalBaseModel):
        n: int
        model_config = ExternalConfigDict(storage=url)

    class Branch(ExternalBaseModel):
        title: str
        leaves: list[Leaf]
        model_config = ExternalConfigDict(storage=url)

    return Leaf, Branch


def test_unchanged_redump_does_no_io(counting_url: str) -> None:
    """Dumping a saved or loaded instance again without changes makes no backend call."""
    leaf, _ = define(counting_url)
    item = leaf(n=1)
    reference = item.model_dump()
    assert item.external_revision == 1
    log = CALL_LOGS[counting_url]
    calls = len(log.calls)
    assert item.model_dump() == reference
    assert item.model_dump_json()
    loaded = leaf.model_validate(reference)
    calls = len(log.calls)
    assert loaded.model_dump() == reference
    assert pydantic_toast.dump([loaded, item]) == [reference, reference]
    assert len(log.calls) == calls
    loaded.n = 2  # type: ignore[attr-defined]
    loaded.model_dump()
    assert [c.size for c in log.calls[calls:]] == [1]
    assert loaded.external_revision == 2


def test_parent_unchanged_child_changed_writes_only_the_child(counting_url: str) -> None:
    """A changed child of an unchanged parent is the only record written."""
    leaf, branch = define(counting_url)
    tree = branch(title="t", leaves=[leaf(n=i) for i in range(3)])
    tree.model_dump()
    log = CALL_LOGS[counting_url]
    calls = len(log.calls)
    tree.leaves[1].n = 10  # type: ignore[attr-defined]
    tree.model_dump()
    assert [c.size for c in log.calls[calls:]] == [1]
    assert tree.external_revision == 1
    assert tree.leaves[1].external_revision == 2  # type: ignore[attr-defined]
    tree.leaves.append(leaf(n=3))  # type: ignore[attr-defined]
    tree.model_dump()  # the parent's JSON changed (a new reference) and the new child is new
    assert [c.size for c in log.calls[calls + 1 :]] == [2]
    assert tree.external_revision == 2


def test_force_writes_unchanged_models(counting_url: str) -> None:
    """asave(force=True) and last_write_wins() write even an unchanged instance."""
    leaf, _ = define(counting_url)
    item = leaf(n=1)
    item.model_dump()
    with pydantic_toast.last_write_wins():
        item.model_dump()
    assert item.external_revision == 2
    pydantic_toast.dump(item, force=True)
    assert item.external_revision == 3
    assert [c.size for c in CALL_LOGS[counting_url].of("save")] == [1, 1, 1]


def test_a_copy_is_a_new_record_and_conflicts_stay_per_instance(counting_url: str) -> None:
    """Two loaded instances of one record: the second writer gets the ConcurrencyError."""
    leaf, _ = define(counting_url)
    reference = leaf(n=1).model_dump()
    one, two = leaf.model_validate(reference), leaf.model_validate(reference)
    one.n = 2  # type: ignore[attr-defined]
    one.model_dump()
    two.n = 3  # type: ignore[attr-defined]
    with pytest.raises(ConcurrencyError):
        two.model_dump()
    copy = one.model_copy()
    assert copy.external_revision is None
    assert copy.model_dump() != reference


def test_unknown_concurrency_setting_is_refused() -> None:
    """A misspelt concurrency setting fails when the class is defined."""
    with pytest.raises(pydantic_toast.StorageConfigurationError, match="concurrency must be"):

        class Bad(ExternalBaseModel):
            n: int
            model_config = ExternalConfigDict(storage="memory://", concurrency="lww")  # type: ignore[typeddict-item]


def test_backend_without_revisions_needs_an_explicit_last_write_wins() -> None:
    """A model on a backend without Capability.REVISIONS must opt into last-write-wins."""
    from pydantic_toast import StorageBackend, register_backend

    class Plain(StorageBackend):
        async def connect(self) -> None: ...
        async def disconnect(self) -> None: ...
        async def save(self, id, class_name, data):  # type: ignore[no-untyped-def]
            ...
        async def load(self, id, class_name):  # type: ignore[no-untyped-def]
            return None

    register_backend("plainrev", Plain)
    with pytest.raises(pydantic_toast.StorageConfigurationError, match="last-write-wins"):

        class Checked(ExternalBaseModel):
            n: int
            model_config = ExternalConfigDict(storage="plainrev://x")

    class Relaxed(ExternalBaseModel):
        n: int
        model_config = ExternalConfigDict(storage="plainrev://x", concurrency="last-write-wins")

    assert Relaxed.__toast_settings__ is not None
    assert Relaxed.__toast_settings__.last_write_wins
