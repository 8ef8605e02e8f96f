"""Change tracking: an unchanged instance is not written again, nested or not."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum
from typing import Literal
from uuid import UUID

import pytest

import pydantic_toast
from pydantic_toast import ConcurrencyError, ExternalBaseModel, ExternalConfigDict
from pydantic_toast._saving import identity_of
from tests.conftest import CALL_LOGS, count_serializations


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


def test_saving_a_deleted_record_says_to_drop_or_force_not_to_reload(counting_url: str) -> None:
    """The conflict for a record another writer deleted does not say to load it again (that
    raises RecordNotFoundError): it says to drop the instance or save with force=True."""
    leaf, _ = define(counting_url)
    reference = leaf(n=1).model_dump()
    kept = leaf.model_validate(reference)
    pydantic_toast.delete(leaf, reference)
    kept.n = 2  # type: ignore[attr-defined]
    with pytest.raises(ConcurrencyError, match="was deleted, but") as info:
        kept.model_dump()
    assert "Load it again" not in str(info.value)
    assert "Drop this instance, or save it with force=True" in str(info.value)
    assert info.value.current is None
    assert leaf.model_validate(pydantic_toast.dump(kept, force=True)).n == 2  # type: ignore[attr-defined]


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


# -- the fast path: fields still the objects of the last write are not even serialized ------------


def test_unchanged_redump_is_not_serialized_again(
    counting_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saved, or found unchanged once, an instance's re-dumps neither write nor serialize."""
    import asyncio
    from datetime import UTC, datetime
    from decimal import Decimal
    from enum import Enum
    from uuid import uuid4

    class Colour(Enum):
        RED = "red"

    class Flat(ExternalBaseModel):
        name: str = "a"
        count: int = 1
        ratio: float = 0.5
        when: datetime = datetime(2026, 1, 2, tzinfo=UTC)
        price: Decimal = Decimal("1.10")
        key: str = str(uuid4())
        colour: Colour = Colour.RED
        tags: list[str] = ["x", "y"]
        scores: dict[str, int] = {"a": 1}
        pair: tuple[int, str] = (1, "one")
        model_config = ExternalConfigDict(storage=counting_url)

    seen = count_serializations(monkeypatch)
    item = Flat()
    reference = item.model_dump()
    assert len(seen) == 1
    assert item.model_dump() == reference
    assert asyncio.run(item.asave()) == reference
    assert pydantic_toast.dump(item) == reference
    assert len(seen) == 1  # no serialization after the write
    assert [c.size for c in CALL_LOGS[counting_url].of("save")] == [1]
    loaded = Flat.model_validate(reference)
    loaded.model_dump()  # first dump after a load: serialized and compared, not written
    loaded.model_dump()
    assert len(seen) == 2
    assert [c.size for c in CALL_LOGS[counting_url].of("save")] == [1]


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.tags.append("z"),
        lambda m: m.tags.__setitem__(0, "w"),
        lambda m: m.tags.reverse(),
        lambda m: m.scores.__setitem__("b", 2),
        lambda m: m.scores.update(a=3),
        lambda m: setattr(m, "ratio", -0.0),  # equal to 0.0, serialized differently
        lambda m: setattr(m, "count", True),  # equal to 1, serialized differently
        lambda m: setattr(m, "count", 2),
        lambda m: m.__pydantic_extra__.__setitem__("more", 1),
    ],
    ids=[
        "list-append",
        "list-item",
        "list-order",
        "dict-new-key",
        "dict-value",
        "negative-zero",
        "bool-for-int",
        "new-value",
        "extra-field",
    ],
)
def test_every_change_is_written(counting_url: str, change: object) -> None:
    """In-place changes of lists and dicts, equal-but-different values and extras are written."""
    from pydantic import ConfigDict

    class Loose(ExternalBaseModel):
        ratio: float = 0.0
        count: int | bool = 1
        tags: list[str] = ["x", "y"]
        scores: dict[str, int] = {"a": 1}
        model_config = ExternalConfigDict(storage=counting_url) | ConfigDict(extra="allow")  # type: ignore[operator]

    item = Loose()
    item.model_dump()
    item.model_dump()
    assert item.external_revision == 1
    change(item)  # type: ignore[operator]
    item.model_dump()
    assert item.external_revision == 2
    stored = Loose.model_validate(item.model_dump())
    assert stored.model_dump_json() == item.model_dump_json()
    assert Loose.model_validate(item.model_dump()).__dict__ == item.__dict__


_STATE = {"suffix": "1"}  # module level: the annotation below is evaluated here


def test_serializers_reading_other_state_are_always_asked(counting_url: str) -> None:
    """A serializer function may read state outside the fields: it is asked on every dump."""
    from typing import Annotated

    from pydantic import PlainSerializer, field_serializer

    state = _STATE

    class Method(ExternalBaseModel):
        n: int = 1
        model_config = ExternalConfigDict(storage=counting_url)

        @field_serializer("n")
        def _n(self, value: int) -> str:
            return f"{value}-{state['suffix']}"

    class Annotation(ExternalBaseModel):
        n: Annotated[int, PlainSerializer(lambda v: f"{v}-{_STATE['suffix']}")] = 1
        model_config = ExternalConfigDict(storage=counting_url)

    for cls in (Method, Annotation):
        state["suffix"] = "1"
        item = cls()
        item.model_dump()
        item.model_dump()
        assert item.external_revision == 1
        state["suffix"] = "2"
        item.model_dump()
        assert item.external_revision == 2, cls.__name__


def test_mutable_values_are_compared_by_their_json(
    counting_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nested plain models and lists of lists: serialized and compared on every dump."""
    from pydantic import BaseModel

    class Inner(BaseModel):
        n: int = 1

    class Deep(ExternalBaseModel):
        inner: Inner = Inner()
        grid: list[list[int]] = [[1]]
        model_config = ExternalConfigDict(storage=counting_url)

    seen = count_serializations(monkeypatch)
    item = Deep()
    item.model_dump()
    item.model_dump()
    assert len(seen) == 2
    assert item.external_revision == 1
    item.inner.n = 2
    item.model_dump()
    item.grid[0].append(2)
    item.model_dump()
    assert item.external_revision == 3


class Pickled(ExternalBaseModel):
    n: int = 1
    model_config = ExternalConfigDict(storage="memory://change-tracking-pickle")


def test_a_pickled_instance_compares_its_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unpickled, an instance keeps its record and revision, not the other process's objects."""
    import pickle

    item = Pickled()
    reference = item.model_dump()
    seen = count_serializations(monkeypatch)
    copy = pickle.loads(pickle.dumps(item))
    assert copy._toast_identity.fingerprint is None
    assert copy.model_dump() == reference  # serialized, found unchanged: not written
    assert len(seen) == 1
    assert copy.external_revision == 1
    copy.model_dump()
    assert len(seen) == 1
    assert Pickled.model_validate(reference).external_revision == 1


def test_wide_models_compare_their_json(counting_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past 32 fields the fast path would slow every save: dumps serialize, still no I/O."""
    wide: type[ExternalBaseModel] = type(
        "Wide",
        (ExternalBaseModel,),
        {
            "__annotations__": {f"f{i}": int for i in range(40)},
            **{f"f{i}": i for i in range(40)},
            "model_config": ExternalConfigDict(storage=counting_url),
        },
    )
    seen = count_serializations(monkeypatch)
    item = wide()
    item.model_dump()
    item.model_dump()
    assert len(seen) == 2
    assert [c.size for c in CALL_LOGS[counting_url].of("save")] == [1]


# -- every kind of change is seen, the fast path or not -----------------------------------------


def _saves(url: str) -> int:
    return len(CALL_LOGS[url].of("save"))


# Changes to str, list and dict fields: a class of only those takes the fast path (no
# serialization on an unchanged re-dump); the others make a class compare its JSON.
FAST_PATH_CHANGES = {
    "assign": lambda m: setattr(m, "name", "b"),
    "assign-equal-value": lambda m: setattr(m, "name", "".join(["a"])),  # not written
    "delete-and-assign": lambda m: delattr(m, "note") or setattr(m, "note", "changed"),
    "list-append": lambda m: m.tags.append("z"),
    "list-pop": lambda m: m.tags.pop(),
    "list-sort": lambda m: m.tags.sort(reverse=True),
    "dict-new-key": lambda m: m.scores.__setitem__("b", 2),
    "dict-pop": lambda m: m.scores.pop("a"),
    "dict-rebuilt-same": lambda m: m.scores.clear() or m.scores.update(a=1),  # same key, value
}
SERIALIZED_CHANGES = {
    **FAST_PATH_CHANGES,
    "set-add": lambda m: m.members.add(3),
    "list-in-list": lambda m: m.grid[0].append(9),
    "list-in-dict": lambda m: m.groups["g"].append(9),
    "list-in-tuple": lambda m: m.pair[1].append(9),
    "nested-plain-model-attribute": lambda m: setattr(m.inner, "n", 5),
    "nested-plain-model-list": lambda m: m.inner.items.append(5),
    "extra-assigned": lambda m: setattr(m, "more", 1),
    "extra-in-place": lambda m: m.__pydantic_extra__.__setitem__("more", 1),
}


def _assert_change_is_written(
    item: ExternalBaseModel, change: Callable[[ExternalBaseModel], object]
) -> None:
    """``change`` to a saved, re-dumped ``item`` is written by the next dump, or found equal."""
    cls = type(item)
    assert item.external_revision == 1
    before = item.model_dump_json()
    stored_before = cls.model_validate(item.model_dump()).__dict__.copy()
    change(item)
    item.model_dump()
    changed = cls.model_validate(item.model_dump())
    assert changed.__dict__ == item.__dict__
    assert changed.__pydantic_extra__ == item.__pydantic_extra__
    expected = 1 if item.__dict__ == stored_before and not item.__pydantic_extra__ else 2
    assert item.external_revision == expected
    assert item.model_dump_json() == before  # the reference: same record either way


@pytest.mark.parametrize("change", FAST_PATH_CHANGES.values(), ids=FAST_PATH_CHANGES.keys())
def test_every_kind_of_change_is_seen_on_the_fast_path(
    counting_url: str,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[ExternalBaseModel], object],
) -> None:
    """On the fast path (re-dumps compare the fields by identity), each change is written."""

    class Narrow(ExternalBaseModel):
        name: str = "a"
        note: str = "n"
        tags: list[str] = ["x", "y"]
        scores: dict[str, int] = {"a": 1}
        model_config = ExternalConfigDict(storage=counting_url)

    item = Narrow()
    item.model_dump()
    seen = count_serializations(monkeypatch)
    item.model_dump()
    assert seen == []  # the fast path: an unchanged re-dump serialized nothing
    _assert_change_is_written(item, change)


@pytest.mark.parametrize("change", SERIALIZED_CHANGES.values(), ids=SERIALIZED_CHANGES.keys())
def test_every_kind_of_change_is_seen_after_a_redump(
    counting_url: str,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[ExternalBaseModel], object],
) -> None:
    """Off the fast path (re-dumps compare JSON), each kind of change is written, or equal."""
    from pydantic import BaseModel, ConfigDict

    class Inner(BaseModel):
        n: int = 1
        items: list[int] = [1]

    class Everything(ExternalBaseModel):
        name: str = "a"
        note: str = "n"
        tags: list[str] = ["x", "y"]
        scores: dict[str, int] = {"a": 1}
        members: set[int] = {1, 2}
        grid: list[list[int]] = [[1]]
        groups: dict[str, list[int]] = {"g": [1]}
        pair: tuple[int, list[int]] = (1, [2])
        inner: Inner = Inner()
        model_config = ExternalConfigDict(storage=counting_url) | ConfigDict(extra="allow")  # type: ignore[operator]

    item = Everything()
    item.model_dump()
    seen = count_serializations(monkeypatch)
    item.model_dump()
    assert seen == [item]  # sets, nested lists and plain models: this class compares JSON
    _assert_change_is_written(item, change)


def test_the_fast_path_skips_serializing_only_while_nothing_was_assigned(
    counting_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-dumps of a flat model skip serializing until a field is assigned, then resume."""

    class Flat(ExternalBaseModel):
        name: str = "a"
        tags: list[str] = ["x"]
        model_config = ExternalConfigDict(storage=counting_url)

    seen = count_serializations(monkeypatch)
    item = Flat()
    item.model_dump()
    item.model_dump()
    assert len(seen) == 1
    name = item.name
    item.name = "b"
    item.name = name  # the very same object back: compared field by field, nothing written
    item.model_dump()
    item.model_dump()
    assert len(seen) == 1
    assert _saves(counting_url) == 1
    item.tags.append("y")  # a list changed in place: serialized and written
    item.model_dump()
    assert len(seen) == 2
    assert _saves(counting_url) == 2
    item.model_dump()
    assert len(seen) == 2


def test_private_attributes_do_not_count_as_changes(
    counting_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Setting or deleting a private attribute neither writes nor serializes the model again."""
    from pydantic import PrivateAttr

    class WithPrivate(ExternalBaseModel):
        name: str = "a"
        _cache: int = PrivateAttr(default=0)
        _seen: list[int]
        model_config = ExternalConfigDict(storage=counting_url)

    seen = count_serializations(monkeypatch)
    item = WithPrivate()
    item.model_dump()
    item._cache = 5
    item._seen = [1]
    item._seen.append(2)
    del item._cache
    item.model_dump()
    assert len(seen) == 1
    assert _saves(counting_url) == 1
    assert item.external_revision == 1


def test_validate_assignment_models_are_tracked(counting_url: str) -> None:
    """With validate_assignment, an assigned (coerced) value and what validators set are written."""
    from pydantic import ConfigDict, model_validator

    class Order(ExternalBaseModel):
        price: int = 1
        quantity: int = 1
        total: int = 1
        model_config = ExternalConfigDict(storage=counting_url) | ConfigDict(  # type: ignore[operator]
            validate_assignment=True
        )

        @model_validator(mode="after")
        def _total(self) -> Order:
            self.__dict__["total"] = self.price * self.quantity  # bypasses __setattr__
            return self

    item = Order()
    item.model_dump()
    item.model_dump()
    item.quantity = "3"  # type: ignore[assignment]
    reference = item.model_dump()
    assert item.external_revision == 2
    stored = Order.model_validate(reference)
    assert (stored.quantity, stored.total) == (3, 3)
    item.model_dump()
    assert item.external_revision == 2


def test_model_construct_instances_are_tracked(counting_url: str) -> None:
    """An instance built without validation is written once, then only when changed."""

    class Built(ExternalBaseModel):
        name: str = "a"
        tags: list[str] = []
        model_config = ExternalConfigDict(storage=counting_url)

    item = Built.model_construct(name="b", tags=["x"])
    item.model_dump()
    item.model_dump()
    assert item.external_revision == 1
    item.tags.append("y")
    item.model_dump()
    item.name = "c"
    reference = item.model_dump()
    assert item.external_revision == 3
    assert Built.model_validate(reference).__dict__ == {"name": "c", "tags": ["x", "y"]}


def test_writes_around_setattr_are_written(counting_url: str) -> None:
    """Fields written around ``__setattr__`` (``object.__setattr__``, ``__dict__``, ``__init__``
    run again, a frozen model's fields) are written by the next dump, after a save or a load."""
    from pydantic import ConfigDict

    class Flat(ExternalBaseModel):
        name: str = "a"
        count: int = 1
        model_config = ExternalConfigDict(storage=counting_url)

    class Frozen(ExternalBaseModel):
        name: str = "a"
        model_config = ExternalConfigDict(storage=counting_url) | ConfigDict(frozen=True)  # type: ignore[operator]

    item = Flat()
    item.model_dump()
    item.model_dump()  # unchanged: the fast path from now on
    object.__setattr__(item, "name", "b")
    item.model_dump()
    assert item.external_revision == 2
    item.__dict__["name"] = "c"
    item.model_dump()
    assert item.external_revision == 3
    item.__dict__.update(count=5)
    item.model_dump()
    assert item.external_revision == 4
    item.__init__(name="d", count=6)  # type: ignore[misc]
    reference = item.model_dump()
    assert item.external_revision == 5
    assert Flat.model_validate(reference).__dict__ == {"name": "d", "count": 6}
    loaded = Flat.model_validate(reference)
    loaded.model_dump()
    loaded.model_dump()
    loaded.__dict__["count"] = 7
    assert Flat.model_validate(loaded.model_dump()).__dict__ == {"name": "d", "count": 7}
    frozen = Frozen()
    frozen.model_dump()
    frozen.model_dump()
    object.__setattr__(frozen, "name", "b")
    assert Frozen.model_validate(frozen.model_dump()).name == "b"
    assert _saves(counting_url) == 8  # and nothing else: the unchanged re-dumps wrote nothing


def test_a_change_during_an_async_save_is_seen_by_the_next_dump(counting_url: str) -> None:
    """A field assigned while a save awaits its write is written by the next save."""
    import asyncio

    class Flat(ExternalBaseModel):
        name: str = "a"
        model_config = ExternalConfigDict(storage=counting_url)

    item = Flat()

    async def main() -> None:
        first = asyncio.ensure_future(item.asave())
        await asyncio.sleep(0)  # the save has serialized "a" and awaits its write
        item.name = "b"
        await first
        await item.asave()

    asyncio.run(main())
    assert item.external_revision == 2
    assert Flat.model_validate(item.model_dump()).name == "b"


def test_a_large_record_keeps_its_fingerprint_not_its_json(
    counting_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above KEEP_JSON_UP_TO the written JSON is dropped: re-dumps stay free, changes written."""
    from pydantic_toast._saving import KEEP_JSON_UP_TO

    class Big(ExternalBaseModel):
        body: str
        lines: list[str] = []
        model_config = ExternalConfigDict(storage=counting_url)

    seen = count_serializations(monkeypatch)
    item = Big(body="x" * (KEEP_JSON_UP_TO + 1))
    item.model_dump()
    assert item._toast_identity.data is None
    item.model_dump()
    assert (len(seen), _saves(counting_url)) == (1, 1)
    item.lines.append("a")  # in place: serialized, and written (no JSON to compare with)
    item.model_dump()
    assert (len(seen), _saves(counting_url)) == (2, 2)
    item.body = "".join(["x"] * (KEEP_JSON_UP_TO + 1))  # equal value, new object: written too
    item.model_dump()
    assert (len(seen), _saves(counting_url)) == (3, 3)
    item.model_dump()
    assert Big.model_validate(item.model_dump()).lines == ["a"]
    small = Big(body="x")
    small.model_dump()
    assert small._toast_identity.data is not None


def test_a_large_owner_keeps_its_json(counting_url: str) -> None:
    """A model owning children keeps its JSON however large: replaced children are found in it."""
    from typing import Annotated

    from pydantic_toast import Owned
    from pydantic_toast._saving import KEEP_JSON_UP_TO

    class Child(ExternalBaseModel):
        n: int = 1
        model_config = ExternalConfigDict(storage=counting_url)

    class Owner(ExternalBaseModel):
        body: str
        child: Annotated[Child | None, Owned] = None
        model_config = ExternalConfigDict(storage=counting_url)

    item = Owner(body="x" * (KEEP_JSON_UP_TO + 1))  # no child now: a fingerprint vouches
    item.model_dump()
    assert item._toast_identity.fingerprint is not None
    assert item._toast_identity.data is not None


class Shade(Enum):
    DARK = "dark"


def _loadable(url: str) -> type[ExternalBaseModel]:
    """A class whose fields a fingerprint taken at load vouches for (atoms, lists, dicts)."""

    class Loaded(ExternalBaseModel):
        name: str = "a"
        note: str = "n"
        count: int = 1
        ratio: float = 0.5
        when: datetime = datetime(2026, 1, 2, tzinfo=UTC)
        maybe: str | None = None
        kind: Literal["x", "y"] = "x"
        shade: Shade = Shade.DARK
        tags: list[str] = ["x", "y"]
        scores: dict[str, int] = {"a": 1}
        model_config = ExternalConfigDict(storage=url)

    return Loaded


def test_a_loaded_unchanged_instance_redumps_without_serializing(
    counting_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loaded instance whose fields are all plain values, lists and dicts of them re-dumps
    on the fast path from its load on (no serialization, no write), as a saved one does."""
    cls = _loadable(counting_url)
    reference = cls().model_dump()
    seen = count_serializations(monkeypatch)
    loaded = cls.model_validate(reference)
    assert loaded.model_dump() == reference
    assert pydantic_toast.dump([loaded]) == [reference]
    assert seen == []
    assert _saves(counting_url) == 1
    assert loaded.external_revision == 1


@pytest.mark.parametrize("change", FAST_PATH_CHANGES.values(), ids=FAST_PATH_CHANGES.keys())
def test_every_kind_of_change_after_a_load_is_seen(
    counting_url: str, change: Callable[[ExternalBaseModel], object]
) -> None:
    """Each change to a loaded instance (on the fast path from its load) is written."""
    cls = _loadable(counting_url)
    loaded = cls.model_validate(cls().model_dump())
    _assert_change_is_written(loaded, change)


@pytest.mark.parametrize("change", FAST_PATH_CHANGES.values(), ids=FAST_PATH_CHANGES.keys())
def test_every_kind_of_change_after_a_batch_load_is_seen(
    counting_url: str, change: Callable[[ExternalBaseModel], object]
) -> None:
    """Each change to an instance of a batch load (a list appended to, a dict item set, a
    field assigned) is written by its next dump; the other instances of the batch are not."""
    cls = _loadable(counting_url)
    references = pydantic_toast.dump([cls(name=str(i)) for i in range(3)])
    loaded = pydantic_toast.validate(list[cls], references)  # type: ignore[valid-type]
    _assert_change_is_written(loaded[1], change)
    assert [item.external_revision for item in (loaded[0], loaded[2])] == [1, 1]
    assert pydantic_toast.dump([loaded[0], loaded[2]]) == [references[0], references[2]]
    assert [item.external_revision for item in (loaded[0], loaded[2])] == [1, 1]


def test_a_batch_loaded_instance_adds_two_tracked_objects_to_pydantics(counting_url: str) -> None:
    """Per record, a batch load keeps two objects for the garbage collector beyond what
    Pydantic's own validation keeps: the identity, and one flat fingerprint whatever the
    instance's lists and dicts (each would be a tuple or two more, and the collector's work
    grows with what it tracks)."""
    import gc

    from pydantic import BaseModel

    cls = _loadable(counting_url)

    class Plain(BaseModel):
        name: str = "a"
        note: str = "n"
        count: int = 1
        ratio: float = 0.5
        when: datetime = datetime(2026, 1, 2, tzinfo=UTC)
        maybe: str | None = None
        kind: Literal["x", "y"] = "x"
        shade: Shade = Shade.DARK
        tags: list[str] = ["x", "y"]
        scores: dict[str, int] = {"a": 1}

    size = 500
    references = pydantic_toast.dump([cls(name=str(i)) for i in range(size)])
    texts = [Plain(name=str(i)).model_dump_json() for i in range(size)]
    pydantic_toast.validate(list[cls], references)  # type: ignore[valid-type]  # warm up

    def tracked_after(load: Callable[[], object]) -> int:
        gc.collect()
        gc.disable()
        try:
            before = len(gc.get_objects())
            kept = load()
            found = len(gc.get_objects()) - before
            del kept
            return found
        finally:
            gc.enable()

    ours = tracked_after(lambda: pydantic_toast.validate(list[cls], references))  # type: ignore[valid-type]
    plain = tracked_after(lambda: [Plain.model_validate_json(text) for text in texts])
    assert ours - plain <= 2 * size + 10
    assert all(
        identity_of(item).fingerprint is not None  # type: ignore[union-attr]
        for item in pydantic_toast.validate(list[cls], references)  # type: ignore[valid-type]
    )


def test_writes_around_setattr_after_a_load_are_written(counting_url: str) -> None:
    """Fields of a loaded instance written around ``__setattr__`` are written by its next dump."""
    cls = _loadable(counting_url)
    reference = cls().model_dump()
    for write in (
        lambda m: object.__setattr__(m, "name", "b"),
        lambda m: m.__dict__.__setitem__("count", 7),
        lambda m: m.__dict__.update(maybe="c"),
    ):
        loaded = cls.model_validate(reference)
        write(loaded)
        reference = loaded.model_dump()
        assert cls.model_validate(reference).__dict__ == loaded.__dict__
    assert cls.model_validate(reference).external_revision == 4


def test_loads_that_may_differ_from_the_stored_json_are_compared(counting_url: str) -> None:
    """A value a validator of the user's rebuilt at load, or a field the stored JSON lacked
    (filled by its default), is not what is stored: the first dump after the load (single or
    in a batch) writes it."""
    import asyncio
    import gc
    from uuid import uuid4

    from pydantic import Field, field_validator, model_validator

    class Stripped(ExternalBaseModel):
        name: str = "a"
        model_config = ExternalConfigDict(storage=counting_url)

        @field_validator("name")
        @classmethod
        def _strip(cls, value: str) -> str:
            return value.strip()

    class Trimmed(ExternalBaseModel):
        name: str = "a"
        model_config = ExternalConfigDict(storage=counting_url)

        @model_validator(mode="after")
        def _trim(self) -> Trimmed:
            self.__dict__["name"] = self.name.strip()
            return self

    for cls in (Stripped, Trimmed):
        for load in (cls.model_validate, lambda ref: asyncio.run(cls.aload(ref))):  # noqa: B023
            reference = cls.model_construct(name=" b ").model_dump()
            loaded = load(reference)
            loaded.model_dump()
            assert loaded.external_revision == 2
            assert cls.model_validate(reference).model_dump_json() == loaded.model_dump_json()

    class Before(ExternalBaseModel):
        name: str = "a"
        model_config = ExternalConfigDict(storage=counting_url, external_name="Grown")

    reference, batched = Before().model_dump(), Before().model_dump()
    del Before  # the class that wrote the record is gone before the next one takes its name
    gc.collect()

    class After(ExternalBaseModel):
        name: str = "a"
        token: str = Field(default_factory=lambda: uuid4().hex)
        model_config = ExternalConfigDict(storage=counting_url, external_name="Grown")

    grown = After.model_validate(reference)
    grown.model_dump()
    assert grown.external_revision == 2
    assert After.model_validate(reference).token == grown.token
    # The same through a batch load (avalidate of a list: its own loop, see _flat_loading).
    (in_batch,) = asyncio.run(pydantic_toast.avalidate(list[After], [batched]))
    in_batch.model_dump()
    assert in_batch.external_revision == 2
    assert After.model_validate(batched).token == in_batch.token


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(lambda ref: ref, id="the reference"),
        pytest.param(lambda ref: dict(ref), id="a plain dict"),
        pytest.param(lambda ref: ref["id"], id="the id"),
        pytest.param(lambda ref: ref["id"].upper(), id="upper case"),
        pytest.param(lambda ref: "{" + ref["id"] + "}", id="braces"),
        pytest.param(lambda ref: ref["id"].replace("-", ""), id="no hyphens"),
        pytest.param(lambda ref: UUID(ref["id"]), id="a UUID"),
        # int(text, 16) reads a sign: "+" for a leading "0" parses into the same id
        pytest.param(lambda ref: "+" + ref["id"][1:], id="a sign for a leading zero"),
    ],
)
def test_an_unchanged_redump_after_aload_returns_the_canonical_reference(
    counting_url: str, spelling: Callable[[dict[str, str]], object]
) -> None:
    """aload() keeps the id text it was given for the next unchanged dump only when that
    text is str(id): any other spelling still dumps to the reference a save returns."""
    leaf, _ = define(counting_url)
    reference = leaf(n=1).model_dump()
    while not reference["id"].startswith("0"):  # 1 in 16
        reference = leaf(n=1).model_dump()
    asked = spelling(reference)

    async def load_and_redump() -> tuple[object, object]:
        loaded = await leaf.aload(asked)  # type: ignore[arg-type]
        identity = identity_of(loaded)
        assert identity is not None
        kept = identity.text
        assert await loaded.asave() == reference
        return kept, identity.text

    kept, after = asyncio.run(load_and_redump())
    canonical = (type(asked) is str and asked == reference["id"]) or isinstance(asked, dict)
    assert (kept == reference["id"]) if canonical else kept is None
    assert after == reference["id"]


@pytest.mark.parametrize("after", ["save", "load"])
def test_fields_deleted_and_set_again_with_swapped_values_are_written(
    memory_url: str, after: str
) -> None:
    """A field deleted and set again comes last in ``__dict__``: values swapped between two
    fields that way are written by the next dump, not taken for unchanged."""

    class Pair(ExternalBaseModel):
        first: str
        second: str
        model_config = ExternalConfigDict(storage=memory_url)

    one, two = "one" * 3, "two" * 3
    item = Pair(first=one, second=two)
    reference = item.model_dump()
    if after == "load":
        item = Pair.model_validate(reference)
        one, two = item.first, item.second
    del item.first
    item.second = one
    item.first = two
    assert list(item.__dict__) == ["second", "first"]
    item.model_dump()
    stored = Pair.model_validate(reference)
    assert (stored.first, stored.second) == (two, one)
    assert item.external_revision == 2


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(lambda ref: ref, id="the reference"),
        pytest.param(lambda ref: dict(ref), id="a plain dict"),
        pytest.param(lambda ref: {**ref, "id": ref["id"].upper()}, id="upper case"),
    ],
)
def test_an_unchanged_redump_after_model_validate_returns_the_canonical_reference(
    counting_url: str, spelling: Callable[[dict[str, str]], object]
) -> None:
    """model_validate(reference) keeps the reference's id text for the next unchanged dump, as
    aload() does, only when that text is str(id)."""
    leaf, _ = define(counting_url)
    reference = leaf(n=1).model_dump()
    asked = spelling(reference)
    loaded = leaf.model_validate(asked)
    identity = identity_of(loaded)
    assert identity is not None
    kept = identity.text
    assert loaded.model_dump() == reference
    assert kept is (asked["id"] if asked["id"] == reference["id"] else None)  # type: ignore[index]
    assert identity.text == reference["id"]
