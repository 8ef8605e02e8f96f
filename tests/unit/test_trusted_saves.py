"""Trusted saves: values found of their fields' exact types skip Pydantic's check and the scan.

A save that sees every value of an exact type its field writes as is, and every integer of at
most 18 digits, serializes without ``warnings="error"`` and skips the scan for long integers
(``_fingerprint.fingerprint``). Anything else must still be refused, scanned and tracked as
before: these tests pin that down.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import Field

from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageValidationError
from pydantic_toast._data_schema import data_schema
from pydantic_toast._fingerprint import fingerprint
from tests.conftest import CALL_LOGS, count_scans, count_serializations

HUGE = 10**4300  # Pydantic's JSON parser refuses it


class Colour(Enum):
    RED = "red"
    BLUE = "blue"


class Size(Enum):
    BIG = 10**20  # an int value: may be long, so never trusted


class Typed(ExternalBaseModel):
    name: str = "a"
    count: int = 1
    maybe: int | None = None
    ratio: float = 0.5
    flag: bool = True
    when: datetime = datetime(2026, 1, 2, tzinfo=UTC)
    colour: Colour = Colour.RED
    tags: list[str] = ["x"]
    sizes: list[int] = [1, 2]
    scores: dict[str, int] = {"a": 1}
    model_config = ExternalConfigDict(storage="memory://trusted-saves")


def _trusted(model: ExternalBaseModel) -> bool:
    schema = data_schema(type(model))
    assert schema is not None
    return fingerprint(model, schema.tracking)[1]


def test_validated_values_are_trusted_and_not_scanned(monkeypatch: pytest.MonkeyPatch) -> None:
    """A validated instance of simple fields is trusted: saved without the scan, read back."""
    scanned = count_scans(monkeypatch)
    item = Typed(maybe=7, sizes=[-(10**18) + 1, 10**18 - 1], scores={"b": 10**18 - 1})
    assert _trusted(item)
    reference = item.model_dump()
    assert scanned == []
    assert Typed.model_validate(reference).model_dump_json() == item.model_dump_json()


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"count": HUGE}, "count"),
        ({"sizes": [1, HUGE]}, "sizes.1"),
        ({"scores": {"a": -HUGE}}, "scores.<key>"),  # a dict key is data: not shown
    ],
    ids=["int", "list-item", "dict-value"],
)
def test_long_integers_are_scanned_and_refused(
    monkeypatch: pytest.MonkeyPatch, values: dict[str, Any], field: str
) -> None:
    """An int of 19 digits or more makes the save scan its record; one Pydantic cannot read
    back is refused, naming the field, and nothing is written."""
    scanned = count_scans(monkeypatch)
    item = Typed(**values)
    assert not _trusted(item)
    with pytest.raises(StorageValidationError) as info:
        item.model_dump()
    assert info.value.field == field
    assert len(scanned) == 1
    assert item.external_revision is None  # nothing written


def test_an_int_of_nineteen_digits_is_scanned_and_reads_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """10**18 (19 digits) is not trusted: the record is scanned, checked and written."""
    scanned = count_scans(monkeypatch)
    item = Typed(count=10**18, sizes=[10**18])
    reference = item.model_dump()
    assert len(scanned) == 1
    loaded = Typed.model_validate(reference)
    assert (loaded.count, loaded.sizes) == (10**18, [10**18])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda m: m.tags.append(1), "tags"),
        (lambda m: m.scores.__setitem__("b", "x"), "scores"),
        (lambda m: m.scores.__setitem__(1, 1), "scores"),
        (lambda m: setattr(m, "name", 1), "name"),
        (lambda m: setattr(m, "count", True), None),  # a bool is not an int: checked
        (lambda m: setattr(m, "ratio", 1), None),  # an int in a float field: Pydantic's call
        (lambda m: setattr(m, "colour", "red"), "colour"),
        (lambda m: m.__dict__.pop("name"), None),
    ],
    ids=[
        "int-in-list-of-str",
        "str-in-dict-of-int",
        "int-key",
        "int-for-str",
        "bool-for-int",
        "int-for-float",
        "str-for-enum",
        "missing-field",
    ],
)
def test_values_of_other_types_get_pydantics_check(change: Any, field: str | None) -> None:
    """A value not of its field's exact type (an append, an assignment, a __dict__ write) is
    not trusted: Pydantic's check refuses what it would write changed, as before."""
    item = Typed()
    item.model_dump()
    change(item)
    assert not _trusted(item)
    if field is None:  # written as Pydantic writes it, or refused: either way, never changed
        try:
            reference = item.model_dump()
        except StorageValidationError:
            return
        assert Typed.model_validate(reference).model_dump_json() == item.model_dump_json()
        return
    with pytest.raises(StorageValidationError) as info:
        item.model_dump()
    assert (info.value.field or "").split(".")[0] == field
    assert item.external_revision == 1  # nothing written


def test_fields_are_matched_by_name_not_by_dict_order() -> None:
    """Values swapped between two list fields, and the dict reordered to match their types,
    are still checked against their own fields' types and refused."""
    item = Typed()
    item.model_dump()
    fields = item.__dict__
    tags, sizes = fields.pop("tags"), fields.pop("sizes")
    fields["sizes"], fields["tags"] = tags, sizes  # an order where the types would fit
    assert not _trusted(item)
    with pytest.raises(StorageValidationError):
        item.model_dump()


class Title(str):
    """A str subclass: may carry state a serializer reads."""


class Zone(tzinfo):
    """A tzinfo of the user's: its offset is its own to change."""

    def __init__(self) -> None:
        self.hours = 1

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=self.hours)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)


def test_a_str_subclass_is_written_and_compared_by_its_json(
    counting_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A str subclass in a str field is checked by Pydantic, written, and its re-dumps are
    serialized and compared (identity cannot vouch for it), not written again."""

    class Named(ExternalBaseModel):
        name: str = "a"
        model_config = ExternalConfigDict(storage=counting_url)

    item = Named()
    item.name = Title("b")
    assert not _trusted(item)
    reference = item.model_dump()
    seen = count_serializations(monkeypatch)
    item.model_dump()
    item.model_dump()
    assert len(seen) == 2
    assert [c.size for c in CALL_LOGS[counting_url].of("save")] == [1]
    assert Named.model_validate(reference).name == "b"


def test_a_users_tzinfo_is_trusted_but_not_fingerprinted(
    counting_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A datetime with a tzinfo of the user's is of its field's type (no check needed), but its
    offset may change under the same object: re-dumps serialize, and a change is written."""

    class Meeting(ExternalBaseModel):
        at: datetime
        model_config = ExternalConfigDict(storage=counting_url)

    zone = Zone()
    item = Meeting(at=datetime(2026, 1, 2, 9, 0, tzinfo=zone))
    schema = data_schema(Meeting)
    assert schema is not None
    assert fingerprint(item, schema.tracking) == (None, True)
    item.model_dump()
    seen = count_serializations(monkeypatch)
    item.model_dump()
    assert len(seen) == 1
    zone.hours = 2
    item.model_dump()
    assert item.external_revision == 2
    assert Meeting.model_validate(item.model_dump()).at.utcoffset() == timedelta(hours=2)


def test_an_equal_but_new_value_is_serialized_once_and_not_written(
    counting_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A field reassigned to an equal but new object is serialized (identity differs), found
    unchanged (no write), and the next re-dump is back on the fast path."""

    class Named(ExternalBaseModel):
        name: str = "a"
        tags: list[str] = ["x"]
        model_config = ExternalConfigDict(storage=counting_url)

    item = Named(name="abc")
    item.model_dump()
    seen = count_serializations(monkeypatch)
    item.name = "".join(["ab", "c"])
    item.tags = list(item.tags)
    item.model_dump()
    item.model_dump()
    assert len(seen) == 1
    assert [c.size for c in CALL_LOGS[counting_url].of("save")] == [1]


def test_classes_with_other_fields_are_not_trusted() -> None:
    """Constrained, Literal, Any, tuple, nested-list, int-valued enum fields and model
    serializers keep Pydantic's check and the scan: their classes get no field types."""
    from typing import Literal

    from pydantic import field_serializer

    def types_of(annotation: Any, default: Any) -> object:
        cls = type(
            "Odd",
            (ExternalBaseModel,),
            {
                "__annotations__": {"value": annotation},
                "value": default,
                "model_config": ExternalConfigDict(storage="memory://trusted-saves"),
            },
        )
        schema = data_schema(cls)
        assert schema is not None
        return schema.tracking.types

    assert types_of(int, 1) is not None
    assert types_of(list[UUID] | None, None) is not None
    assert types_of(dict[str, Decimal], {}) is not None
    for annotation, default in (
        (int, Field(1, gt=0)),
        (list[str], Field([], max_length=3)),
        (Literal["a", "b"], "a"),
        (Any, None),
        (tuple[int, int], (1, 2)),
        (list[list[int]], []),
        (Size, Size.BIG),
        (dict[int, str], {}),
        (int | str, 1),
    ):
        assert types_of(annotation, default) is None, annotation

    class Serialized(ExternalBaseModel):
        value: int = 1
        model_config = ExternalConfigDict(storage="memory://trusted-saves")

        @field_serializer("value")
        def double(self, value: int) -> int:
            return value * 2

    schema = data_schema(Serialized)
    assert schema is not None
    assert schema.tracking.types is None


def test_a_constraint_outside_its_bound_is_still_refused() -> None:
    """A value breaking its field's constraint (checked only in Pydantic's strict mode of
    warnings) is refused: such classes are never trusted."""

    class Bounded(ExternalBaseModel):
        count: int = Field(1, gt=0)
        model_config = ExternalConfigDict(storage="memory://trusted-saves")

    item = Bounded()
    item.count = -1
    with pytest.raises(StorageValidationError) as info:
        item.model_dump()
    assert info.value.field == "count"


_VALUES = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.booleans(),
    st.none(),
    st.floats(),
    st.text(max_size=5),
    st.just(Colour.BLUE),
    st.just(Size.BIG),
    st.just(Title("t")),
    st.just(uuid4()),
    st.just(datetime(2026, 1, 2, tzinfo=UTC)),
)
_ITEMS = st.lists(_VALUES, max_size=3)
_FIELDS = {
    "name": _VALUES,
    "count": _VALUES,
    "maybe": _VALUES,
    "ratio": _VALUES,
    "flag": _VALUES,
    "when": _VALUES,
    "colour": _VALUES,
    "tags": _VALUES | _ITEMS,
    "sizes": _VALUES | _ITEMS,
    "scores": _VALUES | st.dictionaries(_VALUES, _VALUES, max_size=2),
}


@given(st.fixed_dictionaries({}, optional=_FIELDS))
def test_trusted_values_pass_pydantics_check_and_hold_no_long_integer(
    assigned: dict[str, Any],
) -> None:
    """Whatever values are put in the fields (of their types or not), a save that trusts
    them is right to: Pydantic's check passes, and the JSON holds no integer of 19 digits."""
    item = Typed()
    item.__dict__.update(assigned)
    if not _trusted(item):
        return
    schema = data_schema(Typed)
    assert schema is not None
    data = schema.serializer.to_json(item, round_trip=True, warnings="error")
    digits = 0

    def parse_int(text: str) -> int:
        nonlocal digits
        digits = max(digits, len(text.lstrip("-")))
        return 0

    json.loads(data, parse_int=parse_int)
    assert digits < 19


def test_field_types_follow_the_field_names_not_the_schema_order() -> None:
    """Each field's types are found by its name: a schema listing the fields in another order
    than the values are read in gives them in the names' order; other fields give none."""
    from pydantic_toast._field_types import save_types

    def field(kind: str) -> dict[str, Any]:
        return {"type": "model-field", "schema": {"type": kind}}

    schema = {
        "type": "model",
        "schema": {"type": "model-fields", "fields": {"a": field("str"), "b": field("int")}},
    }
    nothing: frozenset[type] = frozenset()
    assert save_types(schema, ("b", "a"), ()) == (
        (frozenset({int}), nothing, nothing),
        (frozenset({str}), nothing, nothing),
    )
    assert save_types(schema, ("a",), ()) is None
    assert save_types(schema, ("a", "c"), ()) is None
