"""Exactly what went in: the cases the property test found, pinned on every backend."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import math
import re
from collections import Counter, OrderedDict, deque
from collections.abc import Hashable, Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Annotated, Any, Literal
from uuid import uuid4
from zoneinfo import ZoneInfo

import pydantic.dataclasses
import pytest
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    FutureDate,
    FutureDatetime,
    PastDate,
    PastDatetime,
    PlainSerializer,
    Secret,
    SecretBytes,
    SecretStr,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    WrapSerializer,
    field_serializer,
    model_serializer,
    model_validator,
)
from typing_extensions import TypedDict

from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    RecordNotFoundError,
    StorageConfigurationError,
    StorageValidationError,
    StoredDataError,
    to_data,
)
from pydantic_toast._records import StoredRecord
from pydantic_toast._saving import Identity, identity_of
from pydantic_toast._url import StorageURL
from pydantic_toast.runtime.storage import current_storage


class Wide(enum.IntEnum):
    SMALL = 1
    HUGE = 2**64


def model(url: str, **annotations: Any) -> type[ExternalBaseModel]:
    """A model with the given fields on ``url``, under a class name of its own."""
    return type(
        "Sample",
        (ExternalBaseModel,),
        {
            "__annotations__": annotations,
            "model_config": ExternalConfigDict(storage=url, external_name=f"Sample{uuid4().hex}"),
        },
    )


def stored_name(cls: type[ExternalBaseModel]) -> str:
    settings = cls.__toast_settings__
    assert settings is not None
    return settings.external_name


def assert_not_written(
    cls: type[ExternalBaseModel], instance: ExternalBaseModel, identity: Identity | None = None
) -> None:
    """No record of ``instance`` (under ``identity``'s id when given) is stored."""
    id = instance.external_id if identity is None else identity.id
    with pytest.raises(RecordNotFoundError):
        cls.model_validate({"class_name": stored_name(cls), "id": str(id)})


def test_numbers_jsonb_would_rewrite_come_back_with_their_types(storage_url: str) -> None:
    """-0.0, 1e16 and exponent-form floats in Any, int | float and dicts keep type and sign."""
    cls = model(storage_url, number=int | float, anything=Any, mapping=dict[str, Any])
    values = {"number": 1e16, "anything": [-0.0, 1e22, 5e-324, 10**20], "mapping": {"a": 1.5e300}}
    loaded = cls.model_validate(cls(**values).model_dump())
    assert type(loaded.number) is float  # type: ignore[attr-defined]
    assert loaded.number == 1e16  # type: ignore[attr-defined]
    anything = loaded.anything  # type: ignore[attr-defined]
    assert [type(v) for v in anything] == [float, float, float, int]
    assert str(anything[0]) == "-0.0"
    assert anything[1:] == [1e22, 5e-324, 10**20]
    assert type(loaded.mapping["a"]) is float  # type: ignore[attr-defined]


def test_integers_over_4300_digits_are_refused_naming_the_field(storage_url: str) -> None:
    """An int the JSON parser could not read back is refused before the write; 4,300 digits pass."""
    cls = model(storage_url, count=int, extra=Any)
    fine = cls(count=10**4300 - 1, extra=None)
    assert cls.model_validate(fine.model_dump()).count == 10**4300 - 1  # type: ignore[attr-defined]
    for values, field in (
        ({"count": 10**4300, "extra": None}, "count"),
        ({"count": 1, "extra": {"deep": [1, -(10**4301)]}}, "extra.<key>.1"),  # a key: data
    ):
        huge = cls(**values)
        with pytest.raises(StorageValidationError, match="nothing was written") as info:
            huge.model_dump()
        assert info.value.field == field
        assert "4,300 digits" in str(info.value)
        assert_not_written(cls, huge)


def test_intenum_members_beyond_64_bits_are_refused(storage_url: str) -> None:
    """An IntEnum member Pydantic cannot validate back (2**64 beside 1) is refused, unwritten."""
    cls = model(storage_url, level=Wide)
    assert cls.model_validate(cls(level=Wide.SMALL).model_dump()).level is Wide.SMALL  # type: ignore[attr-defined]
    huge = cls(level=Wide.HUGE)
    with pytest.raises(StorageValidationError, match="64-bit") as info:
        huge.model_dump()
    assert info.value.field == "level"
    assert_not_written(cls, huge)


async def test_refusal_in_a_nested_model_writes_nothing_of_the_tree(storage_url: str) -> None:
    """A child that cannot be read back stops the tree: neither parent nor child is written."""
    child_cls = model(storage_url, value=int)
    parent_cls = model(storage_url, child=child_cls, note=str)
    child = child_cls(value=10**5000)
    parent = parent_cls(child=child, note="p")
    with pytest.raises(StorageValidationError) as info:
        await parent.asave()
    assert info.value.field == "value"
    assert info.value.class_name == stored_name(child_cls)
    for cls, instance in ((parent_cls, parent), (child_cls, child)):
        if instance.external_id is not None:
            with pytest.raises(RecordNotFoundError):
                await cls.aload(instance.external_id)


def test_lone_surrogates_are_refused_naming_the_field(storage_url: str) -> None:
    """A str Pydantic cannot encode as UTF-8 is a StorageValidationError naming the field."""
    cls = model(storage_url, name=str, other=str)
    bad = cls(name="ok", other="a\ud800b")
    with pytest.raises(StorageValidationError, match="surrogate") as info:
        bad.model_dump()
    assert info.value.field == "other"
    assert "\ud800" not in str(info.value)
    child_cls = model(storage_url, name=str)
    parent_cls = model(storage_url, child=child_cls)
    with pytest.raises(StorageValidationError) as nested:
        parent_cls(child=child_cls(name="\udfff")).model_dump()
    assert nested.value.field == "name"


class Tagged(BaseModel):
    tags: dict[str, int] = {}


def test_dict_keys_with_lone_surrogates_are_refused_naming_where(storage_url: str) -> None:
    """A dict key holding a lone surrogate, which Pydantic writes as U+FFFD characters (it came
    back changed, and two keys could come back as one, a value lost), is refused before
    anything is written, at any depth, naming where but not the key; keys of U+FFFD characters
    of the data's own are stored as they are."""
    cls: Any = model(
        storage_url,
        plain=dict[str, Any],
        rows=list[dict[str, int]],
        inner=Tagged,
        counts=Counter[str],
    )
    empty = {"plain": {}, "rows": [], "inner": Tagged(), "counts": Counter()}
    replaced = "\ufffd\ufffd\ufffd"  # how the surrogate was written
    for values, field in (
        ({"plain": {"\udfff": 1, "ok": 2}}, "plain.<key>"),
        ({"plain": {"\udfff": "first", replaced: "second"}}, "plain.<key>"),
        ({"rows": [{}, {"a\ud800b": 1}]}, "rows.1.<key>"),
        ({"inner": Tagged(tags={"\udc80": 1})}, "inner.tags.<key>"),
        ({"counts": Counter({"\udfff": 2})}, "counts.<key>"),
    ):
        bad = cls(**{**empty, **values})
        with pytest.raises(StorageValidationError, match="lone surrogate") as info:
            bad.model_dump()
        assert info.value.field == field
        assert "nothing was written" in str(info.value)
        assert not re.search("[\ud800-\udfff\ufffd]", str(info.value))
        assert_not_written(cls, bad)
    fine = cls(**{**empty, "plain": {replaced: "kept", "ok": 2}, "rows": [{replaced: 1}]})
    loaded = cls.model_validate(fine.model_dump())
    assert (loaded.plain, loaded.rows) == ({replaced: "kept", "ok": 2}, [{replaced: 1}])


def test_bytes_not_utf8_are_refused_naming_the_fix(storage_url: str) -> None:
    """bytes that are not UTF-8 are refused naming the field and the base64 settings, and
    stored exactly with them."""
    cls = model(storage_url, name=str, blob=bytes)
    with pytest.raises(StorageValidationError, match="ser_json_bytes='base64'") as info:
        cls(name="ok", blob=b"a\xffb").model_dump()
    assert info.value.field == "blob"
    assert "surrogate" not in str(info.value)

    class Blob(ExternalBaseModel):
        blob: bytes
        model_config = ExternalConfigDict(
            storage=storage_url, ser_json_bytes="base64", val_json_bytes="base64"
        )

    assert Blob.model_validate(Blob(blob=b"a\xffb").model_dump()).blob == b"a\xffb"


class Point(BaseModel):
    x: float
    y: float | None = None


class Spelled(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="strings")
    value: float | str


@dataclasses.dataclass
class Span:
    width: float


class Box(TypedDict):
    side: float


def same_float(a: object, b: object) -> bool:
    return (
        type(a) is type(b) is float and ((math.isnan(a) and math.isnan(b)) or a == b)  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
def test_nan_and_infinities_in_nested_plain_models_come_back_or_are_refused(
    storage_url: str, value: float
) -> None:
    """A plain model, dataclass or TypedDict writes NaN and infinities as null by default
    (ser_json_inf_nan): stored, they were unreadable (float) or came back None (float | None).
    Now they round-trip where the store keeps them, and PostgreSQL refuses them unwritten."""
    cls = model(
        storage_url,
        point=Point,
        points=list[Point],
        maybe=Point | None,
        spelled=Spelled,
        span=Span,
        box=Box,
    )
    instance = cls(
        point=Point(x=value, y=value),
        points=[Point(x=1.0, y=value)],
        maybe=Point(x=value),
        spelled=Spelled(value=value),
        span=Span(width=value),
        box={"side": value},
    )
    if storage_url.startswith("postgresql"):
        with pytest.raises(StorageValidationError, match="NaN or Infinity") as info:
            instance.model_dump()
        assert info.value.field == "point.x"
        assert_not_written(cls, instance)
        return
    loaded: Any = cls.model_validate(instance.model_dump())
    assert same_float(loaded.point.x, value)
    assert same_float(loaded.point.y, value)
    assert same_float(loaded.points[0].y, value)
    assert same_float(loaded.maybe.x, value)
    assert loaded.maybe.y is None
    assert same_float(loaded.spelled.value, value)
    assert same_float(loaded.span.width, value)
    assert same_float(loaded.box["side"], value)
    # The models' own JSON keeps their setting.
    assert Point(x=value).model_dump_json() == '{"x":null,"y":null}'


def test_nan_in_a_plain_model_under_a_custom_model_serializer_comes_back(
    storage_url: str,
) -> None:
    """An external model with its own (wrap) model serializer stores nested NaN faithfully too."""

    class Custom(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=storage_url, external_name=f"C{uuid4().hex}")
        point: Point

        @model_serializer(mode="wrap")
        def _keep(self, handler: Any) -> Any:
            return handler(self)

    instance = Custom(point=Point(x=1.0, y=-math.inf))
    if storage_url.startswith("postgresql"):
        with pytest.raises(StorageValidationError, match="NaN or Infinity"):
            instance.model_dump()
        return
    loaded = Custom.model_validate(instance.model_dump())
    assert same_float(loaded.point.y, -math.inf)


def test_a_refusal_names_a_dicts_keys_as_key_never_as_they_are(storage_url: str) -> None:
    """The field path of a refusal found by scanning the JSON (NaN and NUL on PostgreSQL, too
    long an integer everywhere) shows a dict's keys, which are data, as <key>; field names and
    list positions as they are."""
    cls = model(storage_url, scores=dict[str, list[float]], count=dict[str, Any])
    bad = cls(scores={"alice@example.com": [1.0, math.nan]}, count={})
    if storage_url.startswith("postgresql"):
        with pytest.raises(StorageValidationError, match="NaN or Infinity") as info:
            bad.model_dump()
        assert info.value.field == "scores.<key>.1"
        assert "alice@example.com" not in str(info.value)
    huge = cls(scores={}, count={"bob@example.com": 10**4301})
    with pytest.raises(StorageValidationError, match="4,300 digits") as info:
        huge.model_dump()
    assert info.value.field == "count.<key>"
    assert "bob@example.com" not in str(info.value)


def test_unvalidated_values_not_of_their_fields_type_are_refused_naming_the_field(
    storage_url: str,
) -> None:
    """model_construct() (and model_copy's update) validates nothing: an int or a dict in a str
    field, a str in a datetime field, a tuple in a list field were saved, and every load then
    failed (or came back as another type). Now the save refuses them naming the field, without
    quoting the value, and writes nothing; values of the fields' types save and load back."""
    cls: Any = model(storage_url, name=str, count=int, at=datetime, items=list[int], point=Point)
    fine = {"name": "n", "count": 1, "at": datetime(2024, 1, 1), "items": [1], "point": Point(x=1)}
    for field, wrong in (
        ("name", 5),
        ("name", {"secret": "s3cr3t"}),
        ("count", "12345"),
        ("at", "2024-01-01"),
        ("items", (1, 2)),
        ("point", {"x": 1.0}),
    ):
        instance = cls.model_construct(**{**fine, field: wrong})
        with pytest.raises(StorageValidationError, match="nothing was written") as info:
            instance.model_dump()
        assert info.value.field == field
        assert "s3cr3t" not in str(info.value)
        assert "12345" not in str(info.value)
        assert instance.external_id is None  # nothing written, the id is not yet its own
        assert_not_written(cls, instance, identity_of(instance))
        setattr(instance, field, fine[field])  # fixed, it saves
        assert cls.model_validate(instance.model_dump()).name == "n"
    loaded = cls.model_validate(cls.model_construct(**fine).model_dump())
    assert (loaded.count, loaded.items, loaded.point) == (1, [1], Point(x=1))
    copied = cls(**fine).model_copy(update={"count": 1.5})  # model_copy validates no update
    with pytest.raises(StorageValidationError, match="type float where int") as info:
        copied.model_dump()
    assert info.value.field == "count"
    assert_not_written(cls, copied, identity_of(copied))


def test_values_assigned_not_of_their_fields_type_are_refused_naming_the_field(
    storage_url: str,
) -> None:
    """A validated instance given a value of another type afterwards (an assignment without
    validate_assignment, a __dict__ write, an append to a list) or a copy of an unvalidated one
    was saved, and every load then failed: the save refuses it naming the field, the stored
    record stays as it was."""
    cls: Any = model(storage_url, name=str, count=int, items=list[int])
    saved = cls(name="n", count=1, items=[1])
    reference = saved.model_dump()
    for field, change in (
        ("count", lambda m: setattr(m, "count", "12345")),
        ("name", lambda m: m.__dict__.__setitem__("name", 5)),
        ("items", lambda m: m.items.append("12345")),
    ):
        instance = cls.model_validate(reference)
        change(instance)
        with pytest.raises(StorageValidationError, match="nothing was written") as info:
            instance.model_dump()
        assert info.value.field == field
        assert "12345" not in str(info.value)
        stored = cls.model_validate(reference)
        assert (stored.name, stored.count, stored.items, stored.external_revision) == (
            "n",
            1,
            [1],
            1,
        )
    copied = cls.model_construct(name="n", count="12345", items=[1]).model_copy()
    with pytest.raises(StorageValidationError, match="nothing was written") as info:
        copied.model_dump()
    assert info.value.field == "count"
    assert_not_written(cls, copied, identity_of(copied))


class Choice(BaseModel):
    kind: Literal["x", "y"] = "x"


def test_values_outside_their_fields_constraints_are_refused_naming_the_field(
    storage_url: str,
) -> None:
    """Pydantic's serializers check a value's type, not its constraints: a Literal's other
    value, -1 under gt=0, a too long str or list, a naive datetime in an AwareDatetime, a str
    that to_lower would change, given by model_construct() or an assignment, were saved and
    every load then failed (or changed them). The save refuses them naming the field, never the
    value, and writes nothing; a value another member of a union allows is stored."""
    cls: Any = model(
        storage_url,
        mode=Literal["fast", "slow"],
        count=Annotated[int, Field(gt=0)],
        code=Annotated[str, StringConstraints(max_length=8, to_lower=True)],
        at=AwareDatetime,
        items=Annotated[list[Annotated[int, Field(gt=0)]], Field(max_length=2)],
        either=Literal["a"] | Literal["b"],
        choice=Choice,
    )
    fine = {
        "mode": "fast",
        "count": 1,
        "code": "abc",
        "at": datetime(2024, 1, 1, tzinfo=UTC),
        "items": [1],
        "either": "b",
        "choice": Choice(),
    }
    for field, wrong in (
        ("mode", "s3cr3t"),
        ("count", -12345),
        ("code", "s3cr3t-too-long"),
        ("code", "S3CR3T"),
        ("at", datetime(2024, 1, 1)),
        ("items", [-12345]),
        ("items", [1, 2, 3]),
        ("either", "s3cr3t"),
        ("choice", Choice.model_construct(kind="s3cr3t")),  # type: ignore[arg-type]
    ):
        instance = cls.model_construct(**{**fine, field: wrong})
        with pytest.raises(StorageValidationError, match="constraints refuse") as info:
            instance.model_dump()
        assert info.value.field == field
        assert "s3cr3t" not in str(info.value).lower()
        assert "12345" not in str(info.value)
        assert_not_written(cls, instance, identity_of(instance))
    loaded = cls.model_validate(cls.model_construct(**fine).model_dump())
    assert {name: getattr(loaded, name) for name in fine} == fine
    saved = cls(**fine)
    reference = saved.model_dump()
    saved.mode = "s3cr3t"  # no validate_assignment
    with pytest.raises(StorageValidationError, match="constraints refuse") as info:
        saved.model_dump()
    assert info.value.field == "mode"
    assert cls.model_validate(reference).mode == "fast"


def test_a_value_of_another_type_in_a_constrained_field_is_stored_as_in_a_plain_one(
    storage_url: str,
) -> None:
    """A bound is no reason to refuse a value its type accepts: an int assigned to a float
    field with gt=0, within the bound, is stored as in a plain float field (read back as the
    float the model holds once validated); a str in an int field with gt=0 is still refused,
    naming the field."""
    cls: Any = model(
        storage_url,
        plain=float,
        bounded=Annotated[float, Field(gt=0)],
        count=Annotated[int, Field(gt=0)],
    )
    instance = cls(plain=1.0, bounded=1.0, count=1)
    instance.plain = 5  # no validate_assignment
    instance.bounded = 5
    loaded = cls.model_validate(instance.model_dump())
    assert (loaded.plain, loaded.bounded, type(loaded.bounded)) == (5.0, 5.0, float)
    instance.count = "12345"
    with pytest.raises(StorageValidationError, match="nothing was written") as info:
        instance.model_dump()
    assert info.value.field == "count"
    assert "12345" not in str(info.value)
    assert cls.model_validate(loaded.model_dump()).count == 1


class Cat(BaseModel):
    kind: Literal["cat"] = "cat"
    lives: Annotated[int, Field(ge=0, le=9)] = 9


class Dog(BaseModel):
    kind: Literal["dog"] = "dog"


def test_a_union_member_refused_for_what_it_holds_is_named_so(storage_url: str) -> None:
    """A Cat in a Cat | Dog field whose own field is outside its bound is refused naming the
    field and saying the Cat holds the value, not "a value of type Cat where Cat is
    expected"."""
    cls: Any = model(storage_url, pet=Annotated[Cat | Dog, Field(discriminator="kind")])
    instance = cls(pet=Cat())
    instance.pet.lives = 12345  # no validate_assignment
    with pytest.raises(StorageValidationError, match="nothing was written") as info:
        instance.model_dump()
    assert info.value.field == "pet"
    assert "a Cat holding a value of another type, or one its type's constraints" in str(info.value)
    assert "where Cat is expected" not in str(info.value)
    assert "12345" not in str(info.value)
    assert_not_written(cls, instance)


def test_under_serializers_of_the_users_the_library_changes_nothing_itself(
    storage_url: str,
) -> None:
    """A model serializer, a field serializer and a PlainSerializer of the user's write what
    they return; what the store would change on its own is still kept or refused: -0.0, 1e16 and
    1e22 keep type and sign (PostgreSQL's jsonb would rewrite them), an int of more than 4,300
    digits is refused naming its field, nothing written."""
    kept = Annotated[Any, PlainSerializer(lambda value: value)]

    class Own(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=storage_url, external_name=f"O{uuid4().hex}")
        number: int | float
        anything: Any = None
        passed: kept = None
        doubled: list[float] = []

        @field_serializer("doubled")
        def _same(self, value: list[float]) -> list[float]:
            return value

        @model_serializer(mode="wrap")
        def _keep(self, handler: Any) -> Any:
            return handler(self)

    original = Own(number=1e16, anything=[-0.0, 1e16, 1e22], passed=-0.0, doubled=[1e16, -0.0])
    loaded = Own.model_validate(original.model_dump())
    assert type(loaded.number) is float
    assert loaded.number == 1e16
    assert [str(v) for v in loaded.anything] == ["-0.0", "1e+16", "1e+22"]
    assert str(loaded.passed) == "-0.0"
    assert [str(v) for v in loaded.doubled] == ["1e+16", "-0.0"]
    for values, field in (
        ({"number": 1, "anything": [10**4400]}, "anything.0"),
        ({"number": 1, "passed": -(10**4301)}, "passed"),
    ):
        huge = Own(**values)
        with pytest.raises(StorageValidationError, match="4,300 digits") as info:
            huge.model_dump()
        assert info.value.field == field
        assert_not_written(Own, huge)


async def test_huge_int_in_a_child_is_refused_naming_its_field_when_the_parent_is_checked_too(
    storage_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The parent (a 20-digit int) and its child (4,301 digits) both need the read-back check:
    the parent's was run first and loaded the child, raising StoredDataError (and logging an
    alert) instead of refusing. Now the child is refused, naming its field, nothing written."""
    child_cls = model(storage_url, value=int | float, note=str)
    parent_cls = model(storage_url, child=child_cls, count=int)
    child = child_cls(value=10**4301 - 1, note="c")
    parent = parent_cls(child=child, count=10**20)
    with (
        caplog.at_level(logging.ERROR, logger="pydantic_toast"),
        pytest.raises(StorageValidationError, match="nothing was written") as info,
    ):
        await parent.asave()
    assert (info.value.class_name, info.value.field) == (stored_name(child_cls), "value")
    assert not caplog.records
    for cls, instance in ((parent_cls, parent), (child_cls, child)):
        with pytest.raises(RecordNotFoundError):
            await cls.aload(instance.external_id)  # type: ignore[arg-type]


async def test_huge_int_in_a_shared_child_is_refused_naming_its_field(
    storage_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A child held by its parent and by a sibling that needs the check itself: the sibling's
    check loads the child from the batch, and that is a refusal too, not a StoredDataError."""
    leaf_cls = model(storage_url, value=int)
    middle_cls = model(storage_url, leaf=leaf_cls, count=int)
    top_cls = model(storage_url, middle=middle_cls, leaf=leaf_cls)
    leaf = leaf_cls(value=-(10**4400))
    middle = middle_cls(leaf=leaf, count=10**30)
    top = top_cls(middle=middle, leaf=leaf)
    with (
        caplog.at_level(logging.ERROR, logger="pydantic_toast"),
        pytest.raises(StorageValidationError, match="nothing was written") as info,
    ):
        top.model_dump()
    assert (info.value.class_name, info.value.field) == (stored_name(leaf_cls), "value")
    assert not caplog.records
    for cls, instance in ((top_cls, top), (middle_cls, middle), (leaf_cls, leaf)):
        with pytest.raises(RecordNotFoundError):
            await cls.aload(instance.external_id)  # type: ignore[arg-type]


class Base(BaseModel):
    a: int = 1


class Derived(Base):
    b: int = 2


def test_a_subclass_in_a_union_with_its_base_keeps_its_type_and_fields(storage_url: str) -> None:
    """``Base | Derived`` holding a Derived: Pydantic picks the member of the exact type. The
    stored-data serializer (its stand-in classes answer instance checks only) wrote it as a
    Base, dropping ``b``, until members shadowed by a subclass member were narrowed. In
    ``Base | None``, which names no Derived, it would come back a Base without ``b`` (as plain
    Pydantic writes it): refused."""
    cls = model(storage_url, first=Base | Derived, second=Derived | Base, maybe=Base | None)
    loaded: Any = cls.model_validate(
        cls(first=Derived(b=5), second=Derived(b=7), maybe=Base(a=9)).model_dump()
    )
    assert type(loaded.first) is Derived
    assert loaded.first.b == 5
    assert type(loaded.second) is Derived
    assert loaded.second.b == 7
    assert type(loaded.maybe) is Base
    with pytest.raises(StorageValidationError, match="holds a Derived where Base") as refused:
        cls(first=Base(), second=Base(), maybe=Derived(b=9)).model_dump()
    assert refused.value.field == "maybe"


class When(BaseModel):
    at: datetime | None = None


def test_datetimes_with_offsets_of_seconds_are_refused_naming_the_field(storage_url: str) -> None:
    """Pydantic writes UTC offsets as +HH:MM: Amsterdam's local mean time in 1900 (+00:19:32)
    came back as +00:19, silently. Refused now, in fields, unions, containers and plain models;
    offsets of whole minutes (and a zone's modern offsets) still round-trip."""
    amsterdam = ZoneInfo("Europe/Amsterdam")
    cls = model(storage_url, at=datetime | str, many=list[datetime], clock=time | None, when=When)
    fine = cls(
        at=datetime(2024, 7, 1, 12, tzinfo=amsterdam),
        many=[datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=-9, minutes=-30)))],
        clock=time(8, tzinfo=timezone(timedelta(minutes=45))),
        when=When(at=datetime(2000, 1, 1)),
    )
    loaded: Any = cls.model_validate(fine.model_dump())
    assert loaded.at.utcoffset() == timedelta(hours=2)
    assert loaded.many[0].utcoffset() == timedelta(hours=-9, minutes=-30)
    assert loaded.clock.utcoffset() == timedelta(minutes=45)
    lmt = datetime(1900, 1, 1, tzinfo=amsterdam)
    assert lmt.utcoffset() == timedelta(minutes=19, seconds=32)
    for values, field in (
        ({"at": lmt}, "at"),
        ({"many": [datetime(2024, 1, 1), lmt]}, "many"),
        ({"clock": time(1, tzinfo=timezone(timedelta(seconds=-61)))}, "clock"),
        ({"when": When(at=lmt)}, "when"),
    ):
        bad = cls(**{"at": "-", "many": [], "clock": None, "when": When(), **values})
        with pytest.raises(StorageValidationError, match="offset has seconds") as info:
            bad.model_dump()
        assert info.value.field == field
        assert_not_written(cls, bad)


@pytest.mark.parametrize(
    "offset",
    [
        timedelta(microseconds=-1),  # written as Z
        timedelta(microseconds=500_000),  # written as +00:00
        timedelta(seconds=-30),  # written as -00:00
        timedelta(hours=5, minutes=30, microseconds=500_000),  # written as +05:30
        timedelta(hours=-5, seconds=-1),  # written as -05:00
    ],
    ids=str,
)
def test_offsets_with_a_fraction_of_a_second_are_refused(
    storage_url: str, offset: timedelta
) -> None:
    """An offset of seconds or a fraction of one is written rounded, minus a microsecond even
    as Z, which no byte scan can tell from UTC: refused, naming the field, in a datetime field,
    a time field and a nested plain model; nothing written."""
    zone = timezone(offset)
    cls = model(storage_url, at=datetime | None, clock=time | None, when=When)
    for values, field in (
        ({"at": datetime(2024, 1, 1, tzinfo=zone)}, "at"),
        ({"clock": time(8, tzinfo=zone)}, "clock"),
        ({"when": When(at=datetime(2024, 1, 1, tzinfo=zone))}, "when"),
    ):
        bad = cls(**{"at": None, "clock": None, "when": When(), **values})
        with pytest.raises(StorageValidationError, match="offset has seconds") as info:
            bad.model_dump()
        assert info.value.field == field
        assert_not_written(cls, bad)


def test_utc_and_whole_minute_offsets_round_trip_exactly(storage_url: str) -> None:
    """UTC (the singleton, a timezone(0) and a loaded datetime's zone) and whole-minute offsets
    come back with the same offset."""
    cls = model(storage_url, at=datetime, others=list[datetime])
    zones = [UTC, timezone(timedelta(0)), timezone(timedelta(hours=-3, minutes=-15))]
    original = cls(
        at=datetime(2024, 1, 1, tzinfo=UTC),
        others=[datetime(2024, 1, 1, 12, tzinfo=zone) for zone in zones],
    )
    loaded: Any = cls.model_validate(original.model_dump())
    again: Any = cls.model_validate(type(loaded)(**dict(loaded)).model_dump())
    for each in (loaded, again):
        assert each.at.utcoffset() == timedelta(0)
        assert [d.utcoffset() for d in each.others] == [z.utcoffset(None) for z in zones]


class Stamped(BaseModel):
    model_config = ConfigDict(ser_json_temporal="milliseconds", ser_json_timedelta="float")
    at: datetime
    took: timedelta


@pytest.mark.parametrize("unit", ["seconds", "milliseconds"])
def test_temporal_config_as_numbers_keeps_offsets_and_naive_datetimes(
    storage_url: str, unit: str
) -> None:
    """ser_json_temporal="seconds"/"milliseconds" wrote datetimes as numbers: an offset of +02:00
    came back UTC and a naive datetime came back aware; ser_json_timedelta="float" dropped the
    microseconds of a long duration. Stored JSON is ISO 8601 whatever the config (in the
    external model and in a plain model inside it); the models' own JSON keeps their setting."""
    config = ExternalConfigDict(
        storage=storage_url,
        external_name=f"Temporal{uuid4().hex}",
        ser_json_temporal=unit,  # type: ignore[typeddict-item]
        ser_json_timedelta="float",
    )
    cls: Any = type(
        "Temporal",
        (ExternalBaseModel,),
        {
            "__annotations__": {
                "aware": datetime,
                "naive": datetime,
                "took": timedelta,
                "stamped": Stamped,
            },
            "model_config": config,
        },
    )
    plus_two = timezone(timedelta(hours=2))
    long = timedelta(days=999_999, microseconds=1)
    original = cls(
        aware=datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=plus_two),
        naive=datetime(2024, 1, 1, 12, 0, 0, 123456),
        took=long,
        stamped=Stamped(at=datetime(2024, 1, 1, tzinfo=plus_two), took=long),
    )
    loaded = cls.model_validate(original.model_dump())
    assert loaded.aware == original.aware
    assert loaded.aware.utcoffset() == timedelta(hours=2)
    assert loaded.naive == original.naive
    assert loaded.naive.tzinfo is None
    assert loaded.took == long
    assert loaded.stamped.at.utcoffset() == timedelta(hours=2)
    assert loaded.stamped.took == long
    assert Stamped.model_validate_json(original.stamped.model_dump_json()).took != long


class Loose(BaseModel):
    extra: Any = None


def test_values_json_cannot_keep_inside_any_are_refused_naming_the_field(
    storage_url: str,
) -> None:
    """A datetime inside an Any field came back a str (a tuple a list, an int key a str key):
    refused now, naming the field, in Any, dict[str, Any], list[Any] and a nested plain model's
    Any field; nothing written."""
    cls = model(storage_url, anything=Any, mapping=dict[str, Any], items=list[Any], inner=Loose)
    now = datetime(2024, 1, 1, tzinfo=UTC)
    for values, field, what in (
        ({"anything": now}, "anything", "a datetime"),
        ({"anything": {"when": [1, now]}}, "anything", "a datetime"),
        ({"mapping": {"when": now.date()}}, "mapping", "a date"),
        ({"items": [(1, 2)]}, "items", "a tuple"),
        ({"anything": {1: "a"}}, "anything", "a dict with keys that are not str"),
        ({"inner": Loose(extra=uuid4())}, "inner", "a UUID"),
    ):
        bad = cls(**{"anything": None, "mapping": {}, "items": [], "inner": Loose(), **values})
        with pytest.raises(StorageValidationError, match=f"holds {what} inside a value") as info:
            bad.model_dump()
        assert info.value.field == field
        assert_not_written(cls, bad)


def _dates_back(value: Any) -> Any:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def test_any_under_a_validator_of_the_users_is_theirs_to_rebuild(storage_url: str) -> None:
    """An Any field with a validator function of the user's (which may rebuild what JSON
    changed) is not refused: here the validator turns the string back into a datetime."""
    cls = model(storage_url, when=Annotated[Any, AfterValidator(_dates_back)])
    now = datetime(2024, 1, 1, 12, tzinfo=UTC)
    loaded: Any = cls.model_validate(cls(when=now).model_dump())
    assert loaded.when == now
    assert type(loaded.when) is datetime


def test_json_values_inside_any_come_back_exactly(storage_url: str) -> None:
    """None, bools, ints, floats, strings, lists and str-keyed dicts in Any fields come back
    equal and of the same types."""
    cls = model(storage_url, anything=Any, mapping=dict[str, Any])
    value = [None, True, 7, 2.5, "2024-01-01T00:00:00Z", {"a": [1, {"b": False}]}]
    loaded: Any = cls.model_validate(cls(anything=value, mapping={"k": value}).model_dump())
    for each in (loaded.anything, loaded.mapping["k"]):
        assert each == value
        assert [type(item) for item in each] == [type(item) for item in value]


def raw_record(cls: type[ExternalBaseModel], data: bytes) -> StoredRecord:
    """A record of ``cls`` holding ``data`` as written by something else."""
    settings = cls.__toast_settings__
    assert settings is not None
    now = datetime.now(UTC)
    return StoredRecord(
        class_name=settings.external_name,
        id=uuid4(),
        data=data,
        schema_version=settings.schema_version,
        created_at=now,
        updated_at=now,
    )


async def test_unreadable_stored_data_raises_the_library_error(storage_url: str) -> None:
    """A stored record with a too-long integer fails to load naming class, id and field."""
    cls = model(storage_url, count=int)
    holder_cls = model(storage_url, child=cls)
    bad = raw_record(cls, b'{"count":' + b"9" * 4301 + b"}")
    reference = {"class_name": bad.class_name, "id": str(bad.id)}
    holder = raw_record(holder_cls, json.dumps({"child": reference}).encode())
    backend = await current_storage().connected(StorageURL.parse(storage_url))
    await backend.save_records([bad, holder])
    for load in (
        lambda: asyncio.to_thread(cls.model_validate, reference),
        lambda: cls.aload(bad.id),
    ):
        with pytest.raises(StoredDataError) as info:
            await load()
        assert (info.value.class_name, info.value.id, info.value.field) == (
            bad.class_name,
            bad.id,
            "count",
        )
    with pytest.raises(StoredDataError) as nested:
        await holder_cls.aload(holder.id)
    assert (nested.value.id, nested.value.field) == (bad.id, "count")


class Blob(BaseModel):
    model_config = ConfigDict(ser_json_bytes="hex")

    data: bytes


@pytest.mark.parametrize(
    ("ser", "val"),
    [("base64", "utf8"), ("hex", "utf8"), ("utf8", "base64"), ("base64", "hex"), ("hex", "hex")],
)
def test_bytes_come_back_whatever_ser_json_bytes_says(storage_url: str, ser: str, val: str) -> None:
    """ser_json_bytes="base64" (or "hex") without the matching val_json_bytes brought bytes back
    as the bytes of their base64 (hex) text. Stored JSON writes bytes as the class reads them
    (val_json_bytes), in the external model and in a plain model inside it; the models' own
    model_dump_json keeps their setting."""
    config = ExternalConfigDict(
        storage=storage_url,
        external_name=f"Bytes{uuid4().hex}",
        ser_json_bytes=ser,  # type: ignore[typeddict-item]
        val_json_bytes=val,  # type: ignore[typeddict-item]
    )
    cls: Any = type(
        "Bytes",
        (ExternalBaseModel,),
        {"__annotations__": {"data": bytes, "blob": Blob}, "model_config": config},
    )
    data = b"\x01 text \xc3\xa9" if val == "utf8" else bytes(range(256))
    original = cls(data=data, blob=Blob(data=b"inner"))
    loaded = cls.model_validate(original.model_dump())
    assert loaded.data == data
    assert loaded.blob.data == b"inner"
    assert json.loads(original.blob.model_dump_json())["data"] == b"inner".hex()


class Hidden(BaseModel):
    shown: int
    hidden: str = Field(default="", exclude=True)


class Handle:
    """Not data: a client, a cache (no JSON form)."""


@pydantic.dataclasses.dataclass
class HiddenRow:
    shown: int
    hidden: str = Field(default="", exclude=True)


def test_fields_excluded_from_dumps_are_stored(storage_url: str) -> None:
    """Field(exclude=True) on a required field and exclude_if hide a field from the models'
    own dumps (an API's responses), not from the store (a required one made every load fail,
    one with a default came back as the default), in the external model and in plain models
    inside it. exclude=True on a field with a default says it is not data: not stored."""
    config = ExternalConfigDict(storage=storage_url, external_name=f"Hidden{uuid4().hex}")
    cls: Any = type(
        "Account",
        (ExternalBaseModel,),
        {
            "__annotations__": {
                "password_hash": str,
                "note": str,
                "zero": int,
                "inner": Hidden,
                "row": HiddenRow,
            },
            "password_hash": Field(exclude=True),
            "note": Field(default="", exclude=True),
            "zero": Field(default=5, exclude_if=lambda value: value == 0),
            "model_config": config,
        },
    )
    original = cls(
        password_hash="h",
        note="n",
        zero=0,
        inner=Hidden(shown=1, hidden="i"),
        row=HiddenRow(shown=2, hidden="r"),
    )
    loaded = cls.model_validate(original.model_dump())
    assert (loaded.password_hash, loaded.note, loaded.zero) == ("h", "", 0)
    assert (loaded.inner.hidden, loaded.row.hidden) == ("", "")
    assert to_data(loaded) == {"inner": {"shown": 1}, "row": {"shown": 2}}


def test_a_field_excluded_with_a_default_is_not_data(storage_url: str) -> None:
    """Field(default=..., exclude=True) on a value with no JSON form (a client, a cache): the
    record is stored without it and it comes back as the default (storing it failed every
    save with "cannot be written as JSON")."""
    config = ExternalConfigDict(
        storage=storage_url,
        external_name=f"Handled{uuid4().hex}",
        arbitrary_types_allowed=True,
    )
    cls: Any = type(
        "Service",
        (ExternalBaseModel,),
        {
            "__annotations__": {"name": str, "client": Handle | None},
            "client": Field(default=None, exclude=True),
            "model_config": config,
        },
    )
    loaded = cls.model_validate(cls(name="svc", client=Handle()).model_dump())
    assert (loaded.name, loaded.client) == ("svc", None)


class Pair(enum.Enum):
    ONE = 1
    ONE_TEXT = "1"


class Grid(BaseModel):
    cells: dict[tuple[int, int], str]


@pytest.mark.parametrize(
    ("annotation", "value", "read"),
    [
        (dict[tuple[int, int], str], {(1, 2): "a"}, ""),
        (dict[int | None, str], {None: "a"}, ""),
        (dict[Literal[1, 2], str], {2: "a"}, ""),
        (dict[str | int, str], {1: "a"}, "a str"),
        (dict[Pair, str], {Pair.ONE: "a", Pair.ONE_TEXT: "b"}, "another Pair"),
        (list[Grid], [Grid(cells={(0, 0): "a"})], ""),
    ],
)
def test_dict_keys_json_would_not_give_back_are_refused_naming_the_field(
    storage_url: str, annotation: Any, value: Any, read: str
) -> None:
    """A JSON object's keys are strings: a tuple key was written "1,2" and None "None", which
    every load then refused; an int key of str | int came back a str, two members of an enum
    whose values are 1 and "1" came back one. Such a key is refused, naming the field."""
    cls: Any = model(storage_url, mapping=annotation)
    instance = cls(mapping=value)
    with pytest.raises(StorageValidationError) as info:
        instance.model_dump()
    assert info.value.field == "mapping"
    assert "dict key" in str(info.value)
    assert (f"read back as {read}" if read else "not read back as itself") in str(info.value)
    assert_not_written(cls, instance)


def test_dict_keys_that_json_gives_back_round_trip(storage_url: str) -> None:
    """Keys of types that read back from a string are stored and come back exactly."""
    cls: Any = model(
        storage_url,
        numbers=dict[int | str, int],
        flags=dict[Literal["a", "b"], bool],
        members=dict[Pair, int],
        small=dict[Wide, int],
        empty=dict[tuple[int, int], str],
    )
    values = {
        "numbers": {"1": 1, "x": 2},
        "flags": {"b": True},
        "members": {Pair.ONE_TEXT: 1},
        "small": {Wide.SMALL: 1},
        "empty": {},
    }
    loaded = cls.model_validate(cls(**values).model_dump())
    assert {name: getattr(loaded, name) for name in values} == values


class Credentials(BaseModel):
    token: SecretStr


def test_secret_values_are_stored_and_stay_masked_in_dumps(storage_url: str) -> None:
    """SecretStr, SecretBytes and Secret[T] write "**********" as JSON: the record held the
    mask and the secret was lost on every backend. Stored JSON holds the secret, in plain
    models inside too; to_data and the models' own dumps keep masking it."""
    cls: Any = model(
        storage_url,
        password=SecretStr,
        key=SecretBytes,
        pin=Secret[int],
        tokens=list[SecretStr],
        credentials=Credentials,
    )
    original = cls(
        password="hunter2",
        key=b"raw key",
        pin=1234,
        tokens=["a"],
        credentials=Credentials(token="tok"),
    )
    loaded = cls.model_validate(original.model_dump())
    assert loaded.password.get_secret_value() == "hunter2"
    assert loaded.key.get_secret_value() == b"raw key"
    assert loaded.pin.get_secret_value() == 1234
    assert [token.get_secret_value() for token in loaded.tokens] == ["a"]
    assert loaded.credentials.token.get_secret_value() == "tok"
    shown = json.dumps(to_data(loaded, mode="json"))
    for secret in ("hunter2", "raw key", "1234", '"tok"'):
        assert secret not in shown
    assert "hunter2" not in Credentials(token="hunter2").model_dump_json()


class Stream(BaseModel):
    values: Iterable[int]


def _handed_on(value: Any, handler: Any) -> Any:
    return handler(value)


def test_iterable_fields_are_refused_and_left_unconsumed(storage_url: str) -> None:
    """An Iterable field holds a one-pass iterator: the first save consumed it and the next
    one stored it empty. Such a field is refused when the class is defined, in a plain model
    inside too; under a wrap serializer of the user's that hands it on, at the save, naming
    it, its iterator left as it was."""
    for fields in ({"values": Iterable[int]}, {"stream": Stream}):
        with pytest.raises(StorageConfigurationError, match="one-pass iterator"):
            model(storage_url, **fields)
    cls: Any = model(storage_url, stream=Annotated[Stream, WrapSerializer(_handed_on)])
    instance = cls(stream=Stream(values=[3]))
    with pytest.raises(StorageValidationError, match="one-pass iterator") as info:
        instance.model_dump()
    assert info.value.field == "stream"
    assert list(instance.stream.values) == [3]
    assert_not_written(cls, instance)


def _as_iterator(value: Any, handler: Any) -> Any:
    return handler(iter(value))


def test_an_iterable_its_validator_makes_a_list_saves_through_the_users_serializer(
    storage_url: str,
) -> None:
    """An Iterable field whose validator makes it a list, under a wrap serializer of the user's
    handing the handler an iterator of that list, is saved (twice: the list is not consumed)
    and loads back; it was refused at the save as a one-pass iterator (422 in FastAPI). The
    field's own iterator handed on (a nullable Iterable) is still refused, left unconsumed."""
    listed = Annotated[Iterable[int], AfterValidator(list), WrapSerializer(_as_iterator)]
    cls: Any = model(storage_url, values=listed)
    instance = cls(values=[1, 2])
    instance.model_dump()
    reference = instance.model_dump()
    assert cls.model_validate(reference).values == [1, 2]
    own: Any = model(
        storage_url, values=Annotated[Iterable[int] | None, WrapSerializer(_handed_on)]
    )
    kept = own(values=[3])
    with pytest.raises(StorageValidationError, match="one-pass iterator") as info:
        kept.model_dump()
    assert info.value.field == "values"
    assert list(kept.values) == [3]


def test_a_hashable_field_holding_a_tuple_is_refused(storage_url: str) -> None:
    """A Hashable field writes its value as an Any's: a tuple came back a list, which every load
    then refused as unhashable. It is refused naming the field; a str round trips."""
    cls: Any = model(storage_url, key=Hashable)
    bad = cls(key=(1, 2))
    with pytest.raises(StorageValidationError, match="holds a tuple inside a value") as info:
        bad.model_dump()
    assert info.value.field == "key"
    assert_not_written(cls, bad)
    assert cls.model_validate(cls(key="k").model_dump()).key == "k"


def test_values_nested_deeper_than_json_reads_are_refused(storage_url: str) -> None:
    """Pydantic writes values nested up to about 300 levels but reads 200 at most: a value 250
    levels deep was written and every load failed. Such a record is refused; 150 levels round
    trip."""
    cls: Any = model(storage_url, tree=Any)

    def nested(depth: int) -> list[Any]:
        root: list[Any] = []
        inner = root
        for _ in range(depth):
            inner.append([])
            inner = inner[0]
        return root

    bad = cls(tree=nested(250))
    with pytest.raises(StorageValidationError, match="recursion limit") as info:
        bad.model_dump()
    assert "200 levels" in str(info.value)
    assert_not_written(cls, bad)
    with pytest.raises(StorageValidationError, match="200 levels"):
        cls(tree=nested(350)).model_dump()
    assert cls.model_validate(cls(tree=nested(150)).model_dump()).tree == nested(150)


class Rule(BaseModel):
    match: re.Pattern[str]


def test_compiled_patterns_with_flags_are_refused_inline_flags_round_trip(
    storage_url: str,
) -> None:
    """Pydantic writes a compiled pattern as its text: flags given to re.compile came back
    lost (re.IGNORECASE dropped). Such a pattern is refused naming the field, in a plain model
    inside too; flags written inline in the text round trip."""
    cls: Any = model(storage_url, match=re.Pattern[str], rule=Rule | None)
    for instance, field in (
        (cls(match=re.compile("a", re.IGNORECASE), rule=None), "match"),
        (cls(match=re.compile("a"), rule=Rule(match=re.compile("b", re.MULTILINE))), "rule"),
    ):
        with pytest.raises(StorageValidationError, match="compiled pattern with flags") as info:
            instance.model_dump()
        assert info.value.field == field
        assert_not_written(cls, instance)
    inline = cls(match=re.compile("(?i)a"), rule=None)
    assert cls.model_validate(inline.model_dump()).match == inline.match


class Slot(TypedDict):
    opens: FutureDatetime


class Meeting(ExternalBaseModel):
    __abstract__ = True
    starts: FutureDatetime
    day: FutureDate
    born: PastDatetime
    signed: PastDate
    slots: list[Slot] = []


def _meeting(url: str, *, own: str | None) -> type[Meeting]:
    """A Meeting on ``url``; ``own``: with a model validator or serializer of its own."""
    namespace: dict[str, Any] = {
        "model_config": ExternalConfigDict(storage=url, external_name=f"Meeting{uuid4().hex}")
    }
    if own == "model_validator":  # around the hook
        namespace["checked"] = model_validator(mode="after")(lambda self: self)
    if own == "model_serializer":  # no fields' own validator: the class's full one loads
        namespace["kept"] = model_serializer(mode="wrap")(lambda self, handler: handler(self))
    return type("Meeting", (Meeting,), namespace)


@pytest.mark.parametrize("own", [None, "model_validator", "model_serializer"])
async def test_time_constrained_fields_load_after_their_time_passed(
    storage_url: str, own: str | None
) -> None:
    """A FutureDatetime held when its record was written; once past, every load of the record
    failed. Loads leave time constraints out (by reference, aload, a batch, a model holding
    it), a record whose time passed saves again, and construction still enforces them."""
    cls = _meeting(storage_url, own=own)
    holder_cls = model(storage_url, meeting=cls)
    past, yesterday = datetime(2020, 5, 1, 9, 30, tzinfo=UTC), date(2020, 5, 1)
    data = {
        "starts": past.isoformat(),
        "day": yesterday.isoformat(),
        "born": past.isoformat(),
        "signed": yesterday.isoformat(),
        "slots": [{"opens": past.isoformat()}],
    }
    record = raw_record(cls, json.dumps(data).encode())  # written when it was still to come
    reference = {"class_name": record.class_name, "id": str(record.id)}
    holder = raw_record(holder_cls, json.dumps({"meeting": reference}).encode())
    backend = await current_storage().connected(StorageURL.parse(storage_url))
    await backend.save_records([record, holder])
    loads = [
        await asyncio.to_thread(cls.model_validate, reference),
        await cls.aload(record.id),
        *await asyncio.to_thread(TypeAdapter(list[cls]).validate_python, [reference]),  # type: ignore[valid-type]
        (await holder_cls.aload(holder.id)).meeting,  # type: ignore[attr-defined]
    ]
    for loaded in loads:
        assert (loaded.starts, loaded.day, loaded.slots) == (past, yesterday, [{"opens": past}])
    again = loads[0]
    again.signed = date(2020, 1, 1)
    await again.asave()
    assert (await cls.aload(record.id)).signed == date(2020, 1, 1)
    soon = datetime.now(UTC) + timedelta(days=1)
    with pytest.raises(ValidationError, match="in the future"):
        cls(starts=past, day=soon.date(), born=past, signed=yesterday)
    fresh = cls(starts=soon, day=soon.date(), born=past, signed=yesterday)
    assert await cls.aload(await fresh.asave()) == fresh


class Bounded(BaseModel):
    recent: deque[int]


def test_deques_with_a_maxlen_are_refused_naming_the_field(storage_url: str) -> None:
    """A deque's maxlen is not written: a bounded deque came back unbounded (== says equal,
    but appends no longer drop the oldest items). Refused naming the field, in a plain model
    inside too; a bound restored by a validator, and a deque without one, round trip."""
    cls: Any = model(
        storage_url,
        recent=deque[int],
        inner=Bounded | None,
        kept=Annotated[deque[int], AfterValidator(lambda d: deque(d, maxlen=2))],
    )
    for instance, field in (
        (cls(recent=deque([1], maxlen=3), inner=None, kept=[]), "recent"),
        (cls(recent=[], inner=Bounded(recent=deque([1], maxlen=3)), kept=[]), "inner"),
    ):
        with pytest.raises(StorageValidationError, match="deque with a maxlen") as info:
            instance.model_dump()
        assert info.value.field == field
        assert_not_written(cls, instance)
    fine = cls(recent=deque([1, 2]), inner=Bounded(recent=[3]), kept=[1, 2, 3])
    loaded = cls.model_validate(fine.model_dump())
    assert loaded == fine
    assert (loaded.recent.maxlen, loaded.kept, loaded.kept.maxlen) == (None, deque([2, 3]), 2)


class Listed(BaseModel):
    numbers: Sequence[int]


def test_a_sequence_field_holding_a_tuple_comes_back_a_list(storage_url: str) -> None:
    """A Sequence field holding a tuple (its default here) saves and comes back a list, as
    documented: the declared type promises a sequence, and a list is one; tuple[int, ...]
    keeps tuples."""

    class Tagged(ExternalBaseModel):
        tags: Sequence[str] = ()
        inner: Listed | None = None
        model_config = ExternalConfigDict(storage=storage_url, external_name=f"T{uuid4().hex}")

    cls: Any = Tagged
    default = cls()
    loaded = cls.model_validate(default.model_dump())
    assert (loaded.tags, loaded.inner) == ([], None)
    held = cls(tags=("a", "b"), inner=Listed(numbers=deque([1])))
    loaded = cls.model_validate(held.model_dump())
    assert (loaded.tags, loaded.inner.numbers) == (["a", "b"], [1])
    pair: Any = model(storage_url, pair=tuple[int, ...])
    assert type(pair.model_validate(pair(pair=(4, 5)).model_dump()).pair) is tuple


def test_zoneinfo_datetimes_come_back_as_the_same_instant_at_a_fixed_offset(
    storage_url: str,
) -> None:
    """As in Pydantic's own JSON, a datetime in a ZoneInfo zone comes back at the fixed UTC
    offset it had (documented in concepts.md): == and the instant are the same, the zone and
    its daylight saving time rules are not."""
    cls: Any = model(storage_url, at=datetime)
    paris = datetime(2026, 3, 1, 12, tzinfo=ZoneInfo("Europe/Paris"))
    loaded = cls.model_validate(cls(at=paris).model_dump()).at
    assert loaded == paris
    assert loaded.utcoffset() == paris.utcoffset() == timedelta(hours=1)
    assert not isinstance(loaded.tzinfo, ZoneInfo)
    summer = timedelta(days=60)
    assert (loaded + summer).utcoffset() == timedelta(hours=1)
    assert (paris + summer).utcoffset() == timedelta(hours=2)


def _handed(value: Any, handler: Any) -> Any:
    return handler(value)


def test_a_one_pass_value_under_the_users_serializer_is_refused(storage_url: str) -> None:
    """A serializer of the user's over an Iterable is handed the field's value: a one-pass one
    (Pydantic's own iterator, a map its validator made, an iterator assigned later) would be
    consumed, and the next save stored it empty. It is refused, left unconsumed; a list the
    validator made still saves, twice."""
    mapped: Any = model(
        storage_url,
        values=Annotated[
            Iterable[int], AfterValidator(lambda v: map(abs, v)), WrapSerializer(_handed)
        ],
    )
    direct: Any = model(storage_url, values=Annotated[Iterable[int], WrapSerializer(_handed)])
    listed: Any = model(
        storage_url,
        values=Annotated[Iterable[int], AfterValidator(list), WrapSerializer(_as_iterator)],
    )
    for cls in (mapped, direct):
        instance = cls(values=[1, -2])
        with pytest.raises(StorageValidationError, match="one-pass iterator") as info:
            instance.model_dump()
        assert info.value.field == "values"
        assert list(instance.values) in ([1, -2], [1, 2])  # not consumed
    assigned = listed(values=[3])
    assert listed.model_validate(assigned.model_dump()).values == [3]
    assigned.values = iter([4, 5])  # not validated: assignment
    with pytest.raises(StorageValidationError, match="one-pass iterator"):
        assigned.model_dump()
    assert list(assigned.values) == [4, 5]
    kept = listed(values=[6])
    kept.model_dump()
    assert listed.model_validate(kept.model_dump()).values == [6]


@dataclasses.dataclass
class Setlist:
    sets: list[OrderedDict[str, int]]


def test_ordered_dicts_come_back_in_their_key_order(storage_url: str) -> None:
    """An OrderedDict, whose == compares key order, comes back in its order on every backend
    (PostgreSQL's jsonb sorts keys its own way), nested or not, saved alone, in a batch of
    records and again after a change."""

    class Track(ExternalBaseModel):
        lengths: OrderedDict[str, int]
        setlist: Setlist | None = None
        model_config = ExternalConfigDict(storage=storage_url, external_name=f"T{uuid4().hex}")

    class Album(ExternalBaseModel):
        tracks: list[Track]
        model_config = ExternalConfigDict(storage=storage_url, external_name=f"A{uuid4().hex}")

    order = OrderedDict([("zebra", 1), ("apple", 2), ("mango", 3), ("b", 4)])
    track = Track(lengths=order, setlist=Setlist(sets=[OrderedDict(reversed(order.items()))]))
    loaded = Track.model_validate(track.model_dump())
    assert loaded == track
    assert list(loaded.lengths) == ["zebra", "apple", "mango", "b"]
    assert loaded.setlist is not None
    assert list(loaded.setlist.sets[0]) == ["b", "mango", "apple", "zebra"]
    loaded.lengths.move_to_end("zebra")
    again = Track.model_validate(loaded.model_dump())
    assert list(again.lengths) == ["apple", "mango", "b", "zebra"]
    album = Album(
        tracks=[Track(lengths=OrderedDict(reversed(order.items()))), Track(lengths=order)]
    )
    back = Album.model_validate(album.model_dump())
    assert back == album  # a batch of two records
    assert [list(item.lengths) for item in back.tracks] == [
        ["b", "mango", "apple", "zebra"],
        ["zebra", "apple", "mango", "b"],
    ]
