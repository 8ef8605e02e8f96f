"""Batch loads of a list of references: one read, the instances and errors validation gives."""

from __future__ import annotations

import dataclasses
from typing import Any
from uuid import UUID

import pytest
from pydantic import TypeAdapter, model_validator

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    RecordNotFoundError,
    StoredDataError,
)
from pydantic_toast._codecs import is_encoded
from tests.conftest import CALL_LOGS, memory_store_of


def item_on(url: str, **config: Any) -> Any:
    class Item(ExternalBaseModel):
        n: int
        label: str = "x"
        model_config = ExternalConfigDict(storage=url, **config)

    return Item


def test_a_list_of_references_loads_with_one_read_in_list_order(counting_url: str) -> None:
    """Records come back in the order asked, with their revisions, from one load_records call."""
    item = item_on(counting_url)
    references = pydantic_toast.dump([item(n=i) for i in range(5)])
    CALL_LOGS[counting_url].calls.clear()
    loaded = pydantic_toast.validate(list[item], list(reversed(references)))
    assert [m.n for m in loaded] == [4, 3, 2, 1, 0]
    assert {m.external_revision for m in loaded} == {1}
    assert [(c.method, c.size) for c in CALL_LOGS[counting_url].calls] == [("load", 5)]


async def test_repeated_references_share_one_instance(counting_url: str) -> None:
    """The same id, however spelled (text, upper case, UUID), is one record and one instance."""
    item = item_on(counting_url)
    first, second = await pydantic_toast.adump([item(n=1), item(n=2)])
    spelled = [
        first,
        second,
        {"class_name": first["class_name"], "id": first["id"].upper()},
        {"class_name": first["class_name"], "id": UUID(first["id"])},
        dict(first),
    ]
    CALL_LOGS[counting_url].calls.clear()
    loaded = await pydantic_toast.avalidate(list[item], spelled)
    assert [m.n for m in loaded] == [1, 2, 1, 1, 1]
    assert loaded[0] is loaded[2] is loaded[3] is loaded[4]
    assert [(c.method, c.size) for c in CALL_LOGS[counting_url].calls] == [("load", 2)]


def test_the_batch_gives_what_pydantic_validation_gives(memory_url: str) -> None:
    """Field values, ids and revisions equal those of a TypeAdapter validation of the list."""
    item = item_on(memory_url)
    items = [item(n=i, label=f"l{i}") for i in range(4)]
    references = pydantic_toast.dump(items)
    items[1].n = 10
    pydantic_toast.dump(items)
    batch = pydantic_toast.validate(list[item], references)
    one_by_one = TypeAdapter(list[item]).validate_python(references)
    assert batch == one_by_one == items
    assert [m.external_id for m in batch] == [m.external_id for m in items]
    assert [m.external_revision for m in batch] == [1, 2, 1, 1]
    batch[0].n = 7
    pydantic_toast.dump(batch)  # revision-checked against what the batch read
    assert batch[0].external_revision == 2


def _damage(url: str, reference: dict[str, str]) -> None:
    """Overwrite a stored record's data with JSON its model refuses."""
    store = memory_store_of(url)
    key = (reference["class_name"], UUID(reference["id"]))
    with store.lock:
        record = store.get(key)
        assert record is not None
        store.put(dataclasses.replace(record, data=b'{"n": "not a number"}'), None)


def test_the_first_failure_in_list_order_is_raised(memory_url: str) -> None:
    """A damaged record before a missing one: StoredDataError; the other way round: not found."""
    item = item_on(memory_url)
    kept, damaged = pydantic_toast.dump([item(n=1), item(n=2)])
    _damage(memory_url, damaged)
    missing = {"class_name": kept["class_name"], "id": "00000000-0000-4000-8000-000000000000"}
    with pytest.raises(StoredDataError) as bad:
        pydantic_toast.validate(list[item], [kept, damaged, missing])
    assert bad.value.id == UUID(damaged["id"])
    with pytest.raises(RecordNotFoundError) as gone:
        pydantic_toast.validate(list[item], [kept, missing, damaged])
    assert gone.value.id == UUID(missing["id"])


def test_full_data_and_references_mixed_validate_as_before(memory_url: str) -> None:
    """An item of full data makes the list take Pydantic's path: data validates, refs load."""
    item = item_on(memory_url)
    (reference,) = pydantic_toast.dump([item(n=1)])
    loaded = pydantic_toast.validate(list[item], [reference, {"n": 5}])
    assert [m.n for m in loaded] == [1, 5]
    assert loaded[0].external_revision == 1
    assert loaded[1].external_id is None  # never stored


def test_a_model_validator_of_a_subclass_runs_on_each_loaded_item(memory_url: str) -> None:
    """Validators wrapping the reference hook still run once per item of a batch load."""
    seen: list[int] = []

    class Base(ExternalBaseModel):
        __abstract__ = True
        n: int

    class Checked(Base):
        model_config = ExternalConfigDict(storage=memory_url)

        @model_validator(mode="after")
        def note(self) -> Checked:
            seen.append(self.n)
            return self

    references = pydantic_toast.dump([Checked(n=1), Checked(n=2)])
    seen.clear()
    loaded = pydantic_toast.validate(list[Checked], references)
    assert [m.n for m in loaded] == [1, 2]
    assert seen == [1, 2]


def test_compressed_records_decode_in_a_batch(memory_url: str) -> None:
    """Encoded records of a batch are decoded (and checked) before they validate."""
    item = item_on(memory_url, compression="zstd", compress_above=10)
    items = [item(n=i, label="y" * 100) for i in range(3)]
    references = pydantic_toast.dump(items)
    stored = memory_store_of(memory_url).records()
    assert len(stored) == 3
    assert all(is_encoded(record.data) for record in stored)
    assert pydantic_toast.validate(list[item], references) == items


def test_an_empty_list_connects_to_nothing(counting_url: str) -> None:
    """No reference, no I/O: the store is not even connected."""
    item = item_on(counting_url)
    assert pydantic_toast.validate(list[item], []) == []
    assert CALL_LOGS.get(counting_url) is None or not CALL_LOGS[counting_url].connects


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(str, id="str(id)"),
        pytest.param(lambda id: str(id).upper(), id="upper case"),
        pytest.param(lambda id: "{" + str(id) + "}", id="braces"),
        pytest.param(lambda id: id.hex, id="no hyphens"),
        # int(text, 16) reads a sign: "+" for a leading "0" parses into the same id
        pytest.param(lambda id: "+" + str(id)[1:], id="a sign for a leading zero"),
    ],
)
def test_a_batch_reads_its_ids_texts_as_keys_only_when_they_are_str_of_the_ids(
    spelling: Any,
) -> None:
    """A batch's id texts stand for str(id) (a Redis key is built from them) exactly when a
    loaded instance keeps its id text for the next dump: both take one canonical spelling."""
    from pydantic_toast._records import ClassKeys
    from pydantic_toast._saving import _CANONICAL_ID

    id = UUID(int=0x0123456789ABCDEF0123456789ABCDEF)
    text = spelling(id)
    assert UUID(text) == id
    canonical = ClassKeys("Item", [id, id], [str(id), text]).as_str() is not None
    assert canonical is (text == str(id))
    assert canonical is (_CANONICAL_ID.fullmatch(text) is not None)


def test_records_of_a_batch_decode_when_only_some_are_encoded(memory_url: str) -> None:
    """A batch mixing plain and compressed records decodes the compressed ones only."""
    item = item_on(memory_url, compression="zstd", compress_above=200)
    items = [item(n=i, label="y" * (300 if i % 2 else 1)) for i in range(4)]
    references = pydantic_toast.dump(items)
    stored = memory_store_of(memory_url).records()
    assert sorted(is_encoded(record.data) for record in stored) == [False, False, True, True]
    assert pydantic_toast.validate(list[item], references) == items
