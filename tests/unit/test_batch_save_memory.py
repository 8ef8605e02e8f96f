"""What a batch save holds while it writes: its records, not the indexes built to collect them."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import Any

import pytest

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from pydantic_toast._records import StoredRecord
from pydantic_toast._saving import identity_of
from pydantic_toast.backends.memory import MemoryBackend


def test_a_batch_holds_its_models_and_identities_in_no_index_while_it_writes(
    memory_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the store is called, no dict of the batch refers to a model (the instances met)
    nor to its identity (those the dump stamped): a batch of 10-field records held 0.6x its
    JSON in them through the write. Once written, the models hold their new identities."""

    class Item(ExternalBaseModel):
        n: int
        model_config = ExternalConfigDict(storage=memory_url)

    items = [Item(n=i) for i in range(3)]
    identities: list[Any] = []
    held: list[list[type]] = []
    save_records = MemoryBackend.save_records

    async def watched(self: MemoryBackend, records: Sequence[StoredRecord]) -> list[int]:
        gc.collect()
        for item in items:
            identity = identity_of(item)
            identities.append(identity)
            held.append([type(r) for r in gc.get_referrers(item, identity) if type(r) is dict])
        return await save_records(self, records)

    monkeypatch.setattr(MemoryBackend, "save_records", watched)
    references = pydantic_toast.dump(items)
    assert held == [[], [], []]
    replaced = zip(items, identities, strict=True)
    assert [identity_of(item) is not old for item, old in replaced] == [True] * 3
    assert [item.external_revision for item in items] == [1, 1, 1]
    assert [Item.model_validate(reference).n for reference in references] == [0, 1, 2]
