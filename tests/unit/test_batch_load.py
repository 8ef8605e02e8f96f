"""Batch loads of a list of references: one read, the instances and errors validation gives."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import threading
from typing import Any
from uuid import UUID, uuid4

import pytest
from pydantic import BaseModel, TypeAdapter, field_serializer, field_validator, model_validator

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    ExternalReference,
    RecordNotFoundError,
    StorageValidationError,
    StoredDataError,
)
from pydantic_toast._codecs import is_encoded
from pydantic_toast._collector import PAUSE_FROM, CollectorPause, collector_paused
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


def _noting_collector(url: str, seen: list[bool]) -> Any:
    class Noting(ExternalBaseModel):
        n: int
        model_config = ExternalConfigDict(storage=url)

        @field_validator("n")
        @classmethod
        def note(cls, value: int) -> int:
            seen.append(gc.isenabled())
            return value

    return Noting


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_large_batch_is_built_with_the_collector_paused(memory_url: str, api: str) -> None:
    """From PAUSE_FROM records, instances are built with the garbage collector paused, and it
    runs again after; a smaller batch leaves it running."""
    seen: list[bool] = []
    noting = _noting_collector(memory_url, seen)
    references = pydantic_toast.dump([noting(n=i) for i in range(PAUSE_FROM)])
    for size, paused in ((PAUSE_FROM, True), (PAUSE_FROM - 1, False)):
        seen.clear()
        if api == "sync":
            loaded = pydantic_toast.validate(list[noting], references[:size])
        else:
            loaded = asyncio.run(pydantic_toast.avalidate(list[noting], references[:size]))
        assert [m.n for m in loaded] == list(range(size))
        assert seen == [not paused] * size
        assert gc.isenabled()


def _noting_serializer(url: str, seen: list[bool]) -> Any:
    class Noted(ExternalBaseModel):
        n: int
        model_config = ExternalConfigDict(storage=url)

        @field_serializer("n")
        def note(self, value: int) -> int:
            seen.append(gc.isenabled())
            return value

    return Noted


class Holder(BaseModel):
    """A plain model holding a batch: its dump is one batch too."""

    items: list[Any]


@pytest.mark.parametrize("shape", ["list", "held", "parent"])
@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_large_batch_is_serialized_with_the_collector_paused(
    memory_url: str, api: str, shape: str
) -> None:
    """From PAUSE_FROM models met, a save serializes them with the garbage collector paused (a
    list dumped, one a plain model holds, or the children of one external model: PAUSE_FROM - 1
    of them and their parent), and it runs again after; a smaller batch leaves it running."""
    seen: list[bool] = []
    noted = _noting_serializer(memory_url, seen)

    class Parent(ExternalBaseModel):
        items: list[noted]  # type: ignore[valid-type]
        model_config = ExternalConfigDict(storage=memory_url)

    first = PAUSE_FROM - 1 if shape == "parent" else PAUSE_FROM  # (the parent counts too)
    for size, paused in ((first, True), (first - 1, False)):
        value: Any = [noted(n=i) for i in range(size)]
        if shape != "list":
            value = (Holder if shape == "held" else Parent)(items=value)
        seen.clear()
        if api == "sync":
            dumped = pydantic_toast.dump(value)
        else:
            dumped = asyncio.run(pydantic_toast.adump(value))
        assert seen == [not paused] * size
        assert gc.isenabled()
        if shape == "parent":  # the children's references, as stored
            references = [item.model_dump() for item in Parent.model_validate(dumped).items]
        else:
            references = dumped if shape == "list" else dumped["items"]
        assert pydantic_toast.validate(list[noted], references) == [noted(n=i) for i in range(size)]


def test_the_pause_ends_when_a_batch_save_is_refused(memory_url: str) -> None:
    """A model that cannot be stored ends the batch's serialization with the collector running
    again, and nothing of the batch is written."""
    item = item_on(memory_url)
    batch = [item(n=i) for i in range(PAUSE_FROM)]
    batch[-1].label = 5  # type: ignore[assignment]  # not of its field's type: refused
    with pytest.raises(StorageValidationError):
        pydantic_toast.dump(batch)
    assert gc.isenabled()
    assert memory_store_of(memory_url).records() == []


def test_the_pause_ends_when_the_build_raises(memory_url: str) -> None:
    """A record that does not validate ends the build with the collector running again."""
    item = item_on(memory_url)
    references = pydantic_toast.dump([item(n=i) for i in range(PAUSE_FROM)])
    _damage(memory_url, references[-1])
    with pytest.raises(StoredDataError):
        pydantic_toast.validate(list[item], references)
    assert gc.isenabled()


def test_a_collector_the_application_disabled_stays_disabled(memory_url: str) -> None:
    """The pause restores the state it found: disabled before the load, disabled after."""
    item = item_on(memory_url)
    references = pydantic_toast.dump([item(n=i) for i in range(PAUSE_FROM)])
    gc.disable()
    try:
        assert len(pydantic_toast.validate(list[item], references)) == PAUSE_FROM
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_pauses_in_several_threads_end_with_the_last() -> None:
    """Overlapping pauses (two threads' builds) keep the collector paused until both end."""
    pause = CollectorPause()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    states: list[bool] = []

    def first() -> None:
        with pause:
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with pause:
            second_in.set()
            first_out.wait(5)
            states.append(gc.isenabled())
        states.append(gc.isenabled())

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert states == [False, True]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork only")
def test_a_process_forked_during_a_pause_runs_its_collector() -> None:
    """A child forked while a build holds the pause starts with the collector running (the
    thread that would end the pause does not run in the child); the parent's ends as usual."""
    with collector_paused:
        assert not gc.isenabled()
        pid = os.fork()
        if pid == 0:  # the child: report, and leave at once
            os._exit(0 if gc.isenabled() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert gc.isenabled()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork only")
def test_a_process_forked_by_the_pausing_thread_pauses_its_own_builds() -> None:
    """A child forked by the very thread that holds the pause (a validator that forks) leaves
    that pause, already ended for it, without spoiling the count: its next build pauses the
    collector and resumes it."""
    with collector_paused:
        pid = os.fork()
    if pid == 0:  # the child, out of the parent's pause: report, and leave at once
        try:
            with collector_paused:
                paused = not gc.isenabled()
            os._exit(0 if paused and gc.isenabled() else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert gc.isenabled()


_SPELLINGS_NOT_CANONICAL = [
    pytest.param(lambda text: text.upper(), id="upper case"),
    pytest.param(lambda text: "{" + text + "}", id="braces"),
    pytest.param(lambda text: text.replace("-", ""), id="no hyphens"),
    pytest.param(lambda text: text.replace("-", "") + "----", id="hyphens moved to the end"),
    pytest.param(lambda text: text[:8] + text[9] + "-" + text[10:], id="a hyphen moved"),
    pytest.param(lambda text: "+" + text[1:], id="a sign"),
    pytest.param(lambda text: text[:-2] + "_1", id="an underscore"),
    pytest.param(lambda text: text[:-1] + " ", id="a space"),
    pytest.param(lambda text: text[:-1] + "g", id="not hex"),
    pytest.param(lambda text: text[:-1] + "\u0663", id="a non-ASCII digit"),
    pytest.param(lambda text: text[:-1], id="one digit short"),
    pytest.param(lambda text: text + "0", id="one digit more"),
    pytest.param(lambda text: "", id="empty"),
]


@pytest.mark.parametrize("spelling", _SPELLINGS_NOT_CANONICAL)
@pytest.mark.parametrize("at", [0, 1, 4])
def test_ids_are_read_a_list_at_a_time_only_when_every_text_is_str_of_its_id(
    spelling: Any, at: int
) -> None:
    """One text not spelled as str(UUID) spells it, anywhere in the list, makes the whole
    list unreadable at once (it is then read item by item, as UUID() reads each)."""
    from pydantic_toast._reference import all_canonical, uuids_from_canonical

    texts = [str(uuid4()) for _ in range(5)]
    texts[at] = spelling(texts[at])
    assert uuids_from_canonical(texts) is None
    assert all_canonical(texts) is False


def test_an_id_cannot_borrow_characters_from_the_next_one(memory_url: str) -> None:
    """Two malformed ids whose texts join into two canonical ones (35 and 37 characters) were
    read as those two: a batch load then answered other records, where a single load refuses
    each. Each text is measured first now, and the batch refuses them as a single load does."""
    from pydantic_toast import InvalidReferenceError
    from pydantic_toast._reference import all_canonical, uuids_from_canonical

    first, second = str(uuid4()), str(uuid4())
    texts = [first[:35], first[35] + second]
    assert (uuids_from_canonical(texts), all_canonical(texts)) == (None, False)

    class Memo(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=memory_url)

    stored = [Memo(text="a"), Memo(text="b")]
    references = pydantic_toast.dump(stored)
    a, b = (reference["id"] for reference in references)
    borrowed = [{"class_name": "Memo", "id": a[:35]}, {"class_name": "Memo", "id": a[35] + b}]
    with pytest.raises(InvalidReferenceError):
        pydantic_toast.validate(list[Memo], borrowed)


def test_ids_read_a_list_at_a_time_are_the_uuids_uuid_makes() -> None:
    """Each id equals UUID(text), is a plain UUID of unknown safety, hashes and prints the
    same, and pickles: the extremes of the range too."""
    import pickle

    from pydantic_toast._reference import all_canonical, uuids_from_canonical

    texts = [str(uuid4()) for _ in range(300)]
    texts += [str(UUID(int=0)), str(UUID(int=(1 << 128) - 1)), str(UUID(int=1 << 64))]
    ids = uuids_from_canonical(texts)
    assert ids is not None
    assert all_canonical(texts)
    for id, text in zip(ids, texts, strict=True):
        expected = UUID(text)
        assert type(id) is UUID
        assert (id, id.int, hash(id), str(id)) == (expected, expected.int, hash(expected), text)
        assert id.is_safe is expected.is_safe
        assert pickle.loads(pickle.dumps(id)) == expected
    assert uuids_from_canonical([]) == []


def test_repeated_canonical_references_are_read_once_and_share_one_instance(
    counting_url: str,
) -> None:
    """The same id text twice or more in a list is one key read and one instance."""
    item = item_on(counting_url)
    first, second = pydantic_toast.dump([item(n=1), item(n=2)])
    CALL_LOGS[counting_url].calls.clear()
    loaded = pydantic_toast.validate(list[item], [first, second, dict(first), first])
    assert [m.n for m in loaded] == [1, 2, 1, 1]
    assert loaded[0] is loaded[2] is loaded[3]
    assert loaded[1] is not loaded[0]
    assert [(c.method, c.size) for c in CALL_LOGS[counting_url].calls] == [("load", 2)]


class _Text(str):
    """A str subclass: not a plain str, so a batch reads it item by item."""


@pytest.mark.parametrize(
    "respell",
    [
        pytest.param(lambda ref: {**ref, "extra": 1}, id="a third key"),
        pytest.param(lambda ref: {"class_name": ref["class_name"]}, id="no id"),
        pytest.param(lambda ref: {**ref, "id": _Text(ref["id"])}, id="a str subclass id"),
        pytest.param(
            lambda ref: {**ref, "class_name": _Text(ref["class_name"])},
            id="a str subclass class name",
        ),
        pytest.param(lambda ref: {**ref, "class_name": "Other"}, id="another class"),
        pytest.param(lambda ref: {**ref, "id": UUID(ref["id"])}, id="a UUID id"),
        pytest.param(lambda ref: {**ref, "id": 7}, id="an int id"),
        pytest.param(lambda ref: {**ref, "id": "not-a-uuid"}, id="a malformed id"),
    ],
)
def test_a_batch_with_one_unusual_item_validates_as_pydantic_validates_it(
    memory_url: str, respell: Any
) -> None:
    """One item that is not a plain two-key reference with a str(UUID) id, anywhere in the
    list, gives what validating the list through Pydantic gives: the same instances, or the
    same error."""
    item = item_on(memory_url)
    references = pydantic_toast.dump([item(n=i) for i in range(4)])
    references[2] = respell(references[2])
    try:
        expected: Any = TypeAdapter(list[item]).validate_python(references)
    except Exception as error:
        expected = error
    try:
        got: Any = pydantic_toast.validate(list[item], references)
    except Exception as error:
        got = error
    if isinstance(expected, Exception):
        assert type(got) is type(expected)
        assert str(got) == str(expected)
    else:
        assert [(m.n, m.external_id) for m in got] == [(m.n, m.external_id) for m in expected]


def test_a_batch_of_external_references_loads_them(memory_url: str) -> None:
    """ExternalReference items, alone or mixed with plain dicts, load as their records."""
    item = item_on(memory_url)
    references = pydantic_toast.dump([item(n=i) for i in range(3)])
    typed = [
        ExternalReference(r["class_name"], r["id"]) if i != 1 else dict(r)
        for i, r in enumerate(references)
    ]
    assert [m.n for m in pydantic_toast.validate(list[item], typed)] == [0, 1, 2]


def test_a_batch_loaded_list_field_is_tracked_like_a_single_load(counting_url: str) -> None:
    """A class of one list field (its fingerprint taken inline by the batch): unchanged
    instances are not written again, one whose list changed in place is, and the fingerprint
    is the one a single load takes."""

    class Tagged(ExternalBaseModel):
        n: int
        tags: list[int]
        label: str = "x"
        model_config = ExternalConfigDict(storage=counting_url)

    references = pydantic_toast.dump([Tagged(n=i, tags=[i, i + 1]) for i in range(3)])
    loaded = pydantic_toast.validate(list[Tagged], references)
    single = Tagged.model_validate(references[1])
    fingerprints = [m._toast_identity.fingerprint for m in (loaded[1], single)]
    assert fingerprints[0] is not None
    assert fingerprints[0] == fingerprints[1]
    CALL_LOGS[counting_url].calls.clear()
    pydantic_toast.dump(loaded)
    assert [c.method for c in CALL_LOGS[counting_url].calls] == []
    loaded[2].tags.append(9)
    pydantic_toast.dump(loaded)
    assert [(c.method, c.size) for c in CALL_LOGS[counting_url].calls] == [("save", 1)]
    assert Tagged.model_validate(references[2]).tags == [2, 3, 9]
