"""Dumping stores and returns a reference; validating a reference loads the model."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import pickle
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Annotated, Literal
from uuid import UUID, uuid4

import pytest
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Json, field_validator
from pydantic_core import PydanticCustomError, PydanticSerializationError

import pydantic_toast
from pydantic_toast import (
    ConcurrencyError,
    ExternalBaseModel,
    ExternalConfigDict,
    ExternalReference,
    RecordNotFoundError,
    StorageUsageError,
    StorageValidationError,
    StoredDataError,
)
from tests.conftest import memory_store_of as _store_for


def make_model(url: str) -> type[ExternalBaseModel]:
    class Foo(ExternalBaseModel):
        field: str
        field2: str = "b"
        model_config = ExternalConfigDict(storage=url)

    return Foo


def test_dump_returns_exactly_the_reference_in_every_mode(memory_url: str) -> None:
    """model_dump (python and json mode) and model_dump_json give {class_name, id} only."""
    foo = make_model(memory_url)(field="aaa", field2="bbb")
    reference = foo.model_dump()
    assert set(reference) == {"class_name", "id"}
    assert reference["class_name"] == "Foo"
    assert isinstance(reference["id"], str)
    UUID(reference["id"])
    assert foo.model_dump(mode="json") == reference
    assert json.loads(foo.model_dump_json()) == reference
    assert foo.model_dump_json() == json.dumps(reference, separators=(",", ":"))


def test_dump_is_durable_and_stores_fields_by_name(memory_url: str) -> None:
    """After model_dump returns, the record is in the store with all fields and metadata."""
    foo = make_model(memory_url)(field="aaa")
    reference = foo.model_dump()
    store = _store_for(memory_url)
    record = store.get(("Foo", UUID(reference["id"])))
    assert record is not None
    assert json.loads(record.data) == {"field": "aaa", "field2": "b"}
    assert record.schema_version == 1
    assert record.created_at.tzinfo is not None
    assert record.updated_at >= record.created_at


def test_a_first_dump_writes_the_time_it_created_the_record(memory_url: str) -> None:
    """A new record's updated_at is its created_at (one time for its creation and first write);
    the next write moves updated_at only."""
    foo = make_model(memory_url)(field="one")
    reference = foo.model_dump()
    first = _store_for(memory_url).get(("Foo", UUID(reference["id"])))
    assert first is not None
    assert first.updated_at == first.created_at
    foo.field = "two"
    foo.model_dump()
    second = _store_for(memory_url).get(("Foo", UUID(reference["id"])))
    assert second is not None
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at


def test_a_constructed_instance_is_created_when_first_dumped(memory_url: str) -> None:
    """model_construct() makes no record: the record's created_at is the time of its first
    dump, not of the construction."""
    foo = make_model(memory_url).model_construct(field="one")
    time.sleep(0.01)
    before = datetime.now(UTC)
    reference = foo.model_dump()
    record = _store_for(memory_url).get(("Foo", UUID(reference["id"])))
    assert record is not None
    assert record.created_at >= before
    assert record.updated_at == record.created_at


def test_a_dump_after_a_refused_one_is_written_at_its_own_time(memory_url: str) -> None:
    """A first dump refused before any write leaves the instance created then; the dump that
    writes it records its own time as updated_at, after that created_at."""
    foo = make_model(memory_url).model_construct(field=1)  # not a str: refused
    with pytest.raises(StorageValidationError):
        foo.model_dump()
    time.sleep(0.01)
    foo.field = "one"
    before = datetime.now(UTC)
    reference = foo.model_dump()
    record = _store_for(memory_url).get(("Foo", UUID(reference["id"])))
    assert record is not None
    assert record.created_at < before <= record.updated_at


def test_dumping_again_keeps_id_updates_record_and_keeps_created_at(memory_url: str) -> None:
    """The same instance keeps its id; its record is overwritten; created_at never moves."""
    foo = make_model(memory_url)(field="one")
    first = foo.model_dump()
    record_before = _store_for(memory_url).get(("Foo", UUID(first["id"])))
    foo.field = "two"
    second = foo.model_dump()
    assert second == first
    record_after = _store_for(memory_url).get(("Foo", UUID(first["id"])))
    assert record_before is not None
    assert record_after is not None
    assert json.loads(record_after.data)["field"] == "two"
    assert record_after.created_at == record_before.created_at
    assert record_after.updated_at > record_before.updated_at


def test_restored_instance_dumps_to_the_same_id(memory_url: str) -> None:
    """An instance loaded from a reference updates that record when dumped."""
    model = make_model(memory_url)
    reference = model(field="x").model_dump()
    restored = model.model_validate(reference)
    restored.field = "y"  # type: ignore[attr-defined]
    assert restored.model_dump() == reference
    assert model.model_validate(reference).field == "y"  # type: ignore[attr-defined]


def test_options_that_only_shape_the_reference_are_accepted(memory_url: str) -> None:
    """mode, by_alias, round_trip, warnings and indent never change what is stored."""

    class Aliased(ExternalBaseModel):
        name: str = Field(alias="Name")
        secret: str
        model_config = ExternalConfigDict(storage=memory_url, populate_by_name=True)

    item = Aliased(Name="n", secret="s")
    reference = item.model_dump(mode="json", by_alias=True, round_trip=True, warnings="error")
    assert item.model_dump_json(indent=2, by_alias=False) == json.dumps(reference, indent=2)
    record = _store_for(memory_url).get(("Aliased", UUID(reference["id"])))
    assert record is not None
    assert json.loads(record.data) == {"name": "n", "secret": "s"}
    assert Aliased.model_validate(reference) == item


@pytest.mark.parametrize(
    "option",
    [
        {"include": {"name"}},
        {"exclude": {"secret"}},
        {"exclude_unset": True},
        {"exclude_defaults": True},
        {"exclude_none": True},
        {"exclude_computed_fields": True},
        {"context": {"user": 1}},
        {"fallback": str},
        {"serialize_as_any": True},
        {"polymorphic_serialization": True},
    ],
)
def test_options_that_would_change_the_data_are_refused(
    memory_url: str, option: dict[str, object]
) -> None:
    """Options that shape a data dump raise StorageUsageError naming them; nothing is stored."""
    model = make_model(memory_url)
    item = model(field="a")
    (name,) = option
    for method in (item.model_dump, item.model_dump_json):
        with pytest.raises(StorageUsageError, match=f"cannot take {name}=.*from_attributes"):
            method(**option)  # type: ignore[operator]
    assert item.external_id is None


def test_unknown_mode_and_keyword_are_refused(memory_url: str) -> None:
    """A misspelt mode is a StorageUsageError and an unknown keyword a TypeError."""
    item = make_model(memory_url)(field="a")
    with pytest.raises(StorageUsageError, match="mode='jsn'"):
        item.model_dump(mode="jsn")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no_such_kwarg"):
        item.model_dump(no_such_kwarg=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="no_such_kwarg"):
        item.model_dump_json(no_such_kwarg=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        item.model_dump("json")  # type: ignore[misc]
    assert item.external_id is None


def test_validate_accepts_str_uuid_json_and_reference_objects(memory_url: str) -> None:
    """References load from a dict with a str or UUID id, from JSON and from ExternalReference."""
    model = make_model(memory_url)
    original = model(field="aaa", field2="bbb")
    reference = original.model_dump()
    as_uuid = {"class_name": "Foo", "id": UUID(reference["id"])}
    for loaded in (
        model.model_validate(reference),
        model.model_validate(as_uuid),
        model.model_validate_json(json.dumps(reference)),
        model.model_validate(ExternalReference("Foo", UUID(reference["id"]))),
    ):
        assert loaded == original
        assert loaded.external_id == UUID(reference["id"])


def test_full_data_still_constructs_normally(memory_url: str) -> None:
    """A dict of field values validates as in plain Pydantic, without touching storage."""
    model = make_model(memory_url)
    item = model.model_validate({"field": "a", "field2": "b"})
    assert item.external_id is None
    assert _store_for(memory_url).records() == []


def test_unknown_id_raises_record_not_found_with_details(memory_url: str) -> None:
    """A missing record raises RecordNotFoundError itself, carrying id and class_name."""
    model = make_model(memory_url)
    missing = uuid4()
    with pytest.raises(RecordNotFoundError) as info:
        model.model_validate({"class_name": "Foo", "id": str(missing)})
    assert info.value.id == missing
    assert info.value.class_name == "Foo"
    assert isinstance(info.value, LookupError)


def test_class_mismatch_and_malformed_references_are_storage_validation_errors(
    memory_url: str,
) -> None:
    """A reference to another class, or with a bad id, raises StorageValidationError."""
    model = make_model(memory_url)
    with pytest.raises(StorageValidationError, match="names class 'ExternalBar'"):
        model.model_validate({"class_name": "ExternalBar", "id": str(uuid4())})
    with pytest.raises(StorageValidationError, match="is not a UUID"):
        model.model_validate({"class_name": "Foo", "id": "nonexistent-uuid"})
    with pytest.raises(StorageValidationError, match="is not a UUID"):
        model.model_validate_json('{"class_name": "Foo", "id": 12}')
    with pytest.raises(StorageValidationError, match="non-empty string"):
        model.model_validate({"class_name": 5, "id": str(uuid4())})


class Color(Enum):
    RED = "red"
    BLUE = "blue"


class Inner(BaseModel):
    when: date
    ratio: float


def test_rich_types_round_trip_exactly_even_in_strict_models(memory_url: str) -> None:
    """Datetimes, Decimals, sets, enums, bytes, nested models and NaN come back as they went in."""

    class Rich(ExternalBaseModel):
        at: datetime
        naive: datetime
        money: Decimal
        tags: set[str]
        pair: tuple[int, str]
        color: Color
        blob: bytes
        inner: Inner
        mapping: dict[str, list[int]]
        nan: float
        inf: float
        duration: timedelta
        raw: Json[list[int]]
        model_config = ExternalConfigDict(storage=memory_url, strict=True)

    rich = Rich(
        at=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        naive=datetime(2024, 1, 1, 12, 0),
        money=Decimal("12.3400"),
        tags={"a", "b"},
        pair=(1, "x"),
        color=Color.BLUE,
        blob=b"\x00\x01bytes",
        inner=Inner(when=date(2020, 2, 29), ratio=0.1),
        mapping={"b": [1], "a": [2, 3]},
        nan=math.nan,
        inf=-math.inf,
        duration=timedelta(days=1, microseconds=5),
        raw="[1, 2]",  # type: ignore[arg-type]
    )
    loaded = Rich.model_validate(rich.model_dump())
    assert math.isnan(loaded.nan)
    assert loaded.inf == -math.inf
    expected = rich.__dict__ | {"nan": loaded.nan}
    assert loaded.__dict__ == expected
    assert loaded.money.as_tuple() == Decimal("12.3400").as_tuple()
    assert type(loaded.tags) is set
    assert loaded.naive.tzinfo is None


def test_models_with_different_validation_and_serialization_aliases(memory_url: str) -> None:
    """Data is stored under field names, so differing aliases still round-trip."""

    class Aliases(ExternalBaseModel):
        value: int = Field(validation_alias="in_value", serialization_alias="outValue")
        model_config = ExternalConfigDict(storage=memory_url, serialize_by_alias=True)

    item = Aliases(in_value=3)  # type: ignore[call-arg]
    assert Aliases.model_validate(item.model_dump()).value == 3


class Picklable(ExternalBaseModel):
    field: str
    model_config = ExternalConfigDict(storage="memory://pickle-tests")


def test_copies_are_new_records_and_pickles_are_the_same_record() -> None:
    """model_copy/copy/deepcopy drop the id; pickle keeps it."""
    model = Picklable
    original = model(field="orig")
    reference = original.model_dump()
    for duplicate in (
        original.model_copy(update={"field": "changed"}),
        copy.copy(original),
        copy.deepcopy(original),
    ):
        assert duplicate.external_id is None
        assert duplicate.model_dump()["id"] != reference["id"]
    assert model.model_validate(reference).field == "orig"
    unpickled = pickle.loads(pickle.dumps(original))
    assert unpickled.external_id == original.external_id
    assert unpickled.model_dump() == reference


def test_identity_does_not_affect_equality(memory_url: str) -> None:
    """A loaded model equals a fresh one with the same data."""
    model = make_model(memory_url)
    original = model(field="x")
    assert model.model_validate(original.model_dump()) == model(field="x")


def test_schema_version_is_stored_and_old_records_are_migrated(memory_url: str) -> None:
    """Records carry schema_version; older records pass through migrate_stored_data."""

    def deploy(version: int) -> type[ExternalBaseModel]:
        """The same class as two releases define it (one qualified name, so one owner)."""
        if version == 1:

            class Person(ExternalBaseModel):
                name: str
                model_config = ExternalConfigDict(storage=memory_url)

            return Person

        class Person(ExternalBaseModel):  # type: ignore[no-redef]
            first: str
            last: str
            model_config = ExternalConfigDict(storage=memory_url, schema_version=2)

            @classmethod
            def migrate_stored_data(
                cls, data: dict[str, object], from_version: int
            ) -> dict[str, object]:
                assert from_version == 1
                first, last = str(data["name"]).split()
                return {"first": first, "last": last}

        return Person

    Person = deploy(1)
    reference = Person(name="Ada Lovelace").model_dump()  # type: ignore[call-arg]
    person_v2 = deploy(2)
    migrated = person_v2.model_validate(reference)
    assert (migrated.first, migrated.last) == ("Ada", "Lovelace")  # type: ignore[attr-defined]
    migrated.model_dump()
    record = _store_for(memory_url).get(("Person", UUID(reference["id"])))
    assert record is not None
    assert record.schema_version == 2
    with pytest.raises(StoredDataError, match="newer than"):
        Person.model_validate(reference)


@pytest.mark.parametrize(
    ("mistake", "expected"),
    [
        ("no return", "returned NoneType, not the upgraded data as a dict"),
        ("raises", "raised KeyError; the record is left untouched"),
        ("wrong shape", r"Person after migrate_stored_data\(\): last: Field required"),
    ],
)
def test_a_migration_hook_that_fails_is_named_as_the_cause(
    memory_url: str, mistake: str, expected: str
) -> None:
    """A migrate_stored_data() that forgets to return, raises or returns the wrong shape is
    named (with the record and both versions), not blamed on an unchanged model; the record is
    left as it was and loads once the hook is fixed."""

    def deploy(hook: str | None) -> type[ExternalBaseModel]:
        if hook is None:

            class Person(ExternalBaseModel):
                name: str
                model_config = ExternalConfigDict(storage=memory_url)

            return Person

        class Person(ExternalBaseModel):  # type: ignore[no-redef]
            first: str
            last: str
            model_config = ExternalConfigDict(storage=memory_url, schema_version=2)

            @classmethod
            def migrate_stored_data(
                cls, data: dict[str, object], from_version: int
            ) -> dict[str, object]:
                first, _, last = str(data["name"]).partition(" ")
                if hook == "no return":
                    data.update(first=first, last=last)
                    return None  # type: ignore[return-value]
                if hook == "raises":
                    return {"first": first, "last": data["surname"]}
                if hook == "wrong shape":
                    return {"first": first}
                return {"first": first, "last": last}

        return Person

    reference = deploy(None)(name="Ada Lovelace").model_dump()  # type: ignore[call-arg]
    stored = _store_for(memory_url).get(("Person", UUID(reference["id"])))
    with pytest.raises(StoredDataError, match=expected) as caught:
        deploy(mistake).model_validate(reference)
    message = str(caught.value)
    assert "from schema_version 1 to 2" in message or "(schema_version 1)" in message
    assert "bump schema_version" not in message, "the model's version was bumped already"
    assert "Lovelace" not in message
    assert _store_for(memory_url).get(("Person", UUID(reference["id"]))) == stored
    fixed = deploy("right").model_validate(reference)
    assert (fixed.first, fixed.last) == ("Ada", "Lovelace")  # type: ignore[attr-defined]


def test_stored_data_that_no_longer_validates_is_refused_without_the_data(memory_url: str) -> None:
    """A record that fails validation raises StoredDataError, naming no values."""

    class Loose(ExternalBaseModel):
        value: str
        model_config = ExternalConfigDict(storage=memory_url, external_name="Shape")

    reference = Loose(value="top-secret-value").model_dump()
    del Loose  # the stored name is free for the changed model

    def define_strict() -> type[ExternalBaseModel]:
        class Strict(ExternalBaseModel):
            value: int
            model_config = ExternalConfigDict(storage=f"{memory_url}?v=2", external_name="Shape")

        return Strict

    with pytest.raises(StoredDataError, match="does not validate") as info:
        define_strict().model_validate(reference)
    assert "top-secret-value" not in str(info.value)
    assert "value:" in str(info.value)


class Settings(BaseModel):
    theme: str = "dark"
    model_config = ConfigDict(extra="forbid")


def test_a_field_removed_from_a_model_forbidding_extra_is_named_with_the_fix(
    memory_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A stored field that a model with extra='forbid' no longer has is named in the
    StoredDataError (a field of an older version of the model, not data: before, <key>), which
    says to drop it in migrate_stored_data() or let the model accept it; a key refused inside
    a field stays <key>, and the record loads once the field is dropped as the fix says."""

    def release(version: int) -> type[ExternalBaseModel]:
        if version == 0:

            class Account(ExternalBaseModel):
                owner: str
                legacy_flag: bool = False
                settings: dict[str, object] = {}
                model_config = ExternalConfigDict(storage=memory_url)

            return Account

        class Account(ExternalBaseModel):  # type: ignore[no-redef]  # legacy_flag removed, strict
            owner: str
            settings: Settings = Settings()
            model_config = ExternalConfigDict(
                storage=memory_url, extra="forbid", schema_version=version
            )

            @classmethod
            def migrate_stored_data(
                cls, data: dict[str, object], from_version: int
            ) -> dict[str, object]:
                data.pop("legacy_flag", None)
                data["settings"] = {}
                return data

        return Account

    old = release(0)
    reference = old(owner="ada", settings={"theme": "x"}).model_dump()
    nested = old(owner="bob", settings={"theme": "x", "alice@secret": 1}).model_dump()
    with caplog.at_level(logging.DEBUG, logger="pydantic_toast"):
        with pytest.raises(StoredDataError) as info:
            release(1).model_validate(reference)
        with pytest.raises(StoredDataError, match=r"settings\.<key>: Extra inputs") as inside:
            release(1).model_validate(nested)
    message = str(info.value)
    assert info.value.field == "legacy_flag"
    assert "legacy_flag: Extra inputs are not permitted (extra_forbidden)" in message
    assert "drop the field in migrate_stored_data()" in message
    assert "extra='ignore'" in message
    assert "legacy_flag: Extra inputs" in str(inside.value)
    assert "alice@secret" not in str(inside.value)
    assert "alice@secret" not in caplog.text
    assert release(2).model_validate(reference).owner == "ada"  # type: ignore[attr-defined]
    assert release(2).model_validate(nested).owner == "bob"  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["ValueError", "assert", "PydanticCustomError"])
def test_a_validators_message_quoting_stored_data_stays_out_of_errors_and_logs(
    memory_url: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A stored value a validator refuses (set by assignment, never validated) raises
    StoredDataError naming the field and the error type, not the validator's text, which may
    quote the value; the error log line neither."""

    class Account(ExternalBaseModel):
        email: str
        model_config = ExternalConfigDict(storage=memory_url)

        @field_validator("email")
        @classmethod
        def check(cls, value: str) -> str:
            if "@" not in value:
                if kind == "ValueError":
                    raise ValueError(f"{value!r} is not an email address")
                if kind == "PydanticCustomError":
                    raise PydanticCustomError("email", "{value} is no email", {"value": value})
                assert False, f"{value!r} is not an email address"  # noqa: B011, PT015
            return value

    account = Account(email="ok@example.com")
    account.email = "alice-private-data"
    reference = account.model_dump()
    refused = pytest.raises(StoredDataError, match="email: a validator refused")
    with caplog.at_level(logging.DEBUG, logger="pydantic_toast"), refused as info:
        Account.model_validate(reference)
    assert info.value.field == "email"
    assert "alice-private-data" not in str(info.value)
    assert "alice-private-data" not in caplog.text
    assert "does not validate" in caplog.text


def test_dict_keys_in_a_stored_errors_location_stay_out_of_errors_and_logs(
    memory_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A dict's keys are the application's data: a StoredDataError's location shows them as
    <key> (field names, list positions and Pydantic's labels as they are), in the error, its
    field and the log line. Stored values a validator refuses (assigned, never validated)."""

    def short(value: str) -> str:
        if len(value) > 3:
            raise ValueError("too long")
        return value

    checked = Annotated[str, AfterValidator(short)]

    class Profile(BaseModel):
        nick: checked

    class Team(ExternalBaseModel):
        members: dict[str, Profile]
        scores: dict[str, list[checked]]
        ids: dict[checked, int]
        model_config = ExternalConfigDict(storage=memory_url)

    team = Team(members={"alice@secret": Profile(nick="al")}, scores={}, ids={})
    team.members["alice@secret"].nick = "alice"
    team.scores = {"bob@secret": ["b", "bobby"]}
    team.ids = {"carol@secret": 1}
    reference = team.model_dump()
    refused = pytest.raises(StoredDataError)
    with caplog.at_level(logging.DEBUG, logger="pydantic_toast"), refused as info:
        Team.model_validate(reference)
    message = str(info.value)
    assert info.value.field == "members.<key>.nick"
    assert "scores.<key>.1: a validator refused" in message
    assert "ids.<key>.[key]: a validator refused" in message
    for secret in ("alice@secret", "bob@secret", "carol@secret"):
        assert secret not in message
        assert secret not in caplog.text


@pytest.mark.parametrize(
    "value",
    [(1, 2), {1: 2}, datetime(2020, 1, 1), {"at": {date(2020, 1, 1)}}],
    ids=["tuple", "int-keys", "datetime", "nested-set"],
)
def test_extra_fields_are_checked_as_any_values_are(memory_url: str, value: object) -> None:
    """An extra field (extra="allow") is read back as an Any value is: a value JSON would not
    give back as itself is refused before anything is written, as in an Any field (before:
    stored, and read back as a list, a str key or an ISO string)."""

    class Open(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=memory_url, extra="allow")
        name: str

    with pytest.raises(StorageValidationError, match=r"extra field 'extra'.*nothing was written"):
        Open(name="x", extra=value).model_dump()
    assert _store_for(memory_url).records() == []
    plain = {"list": [1, 2.5, None], "text": "é", "nested": {"k": [True]}}
    loaded = Open.model_validate(Open(name="x", extra=plain).model_dump())
    assert loaded.model_extra == {"extra": plain}


def test_an_external_model_in_an_extra_field_is_refused(memory_url: str) -> None:
    """An external model in an extra field would be stored as its reference and read back as
    a plain dict: refused, and neither it nor its holder is written."""

    class Child(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=memory_url)
        v: int

    class Open(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=memory_url, extra="allow")

    with pytest.raises(StorageValidationError, match=r"extra field 'child' holds a .*Child"):
        Open(child=Child(v=7)).model_dump()
    assert _store_for(memory_url).records() == []


def test_extra_forbid_models_round_trip(memory_url: str) -> None:
    """Models forbidding extra keys load their own stored data."""

    class Closed(ExternalBaseModel):
        a: int
        model_config = ExternalConfigDict(storage=memory_url, extra="forbid")

    assert Closed.model_validate(Closed(a=1).model_dump()).a == 1


def test_config_dict_subclass_keeps_pydantic_options(memory_url: str) -> None:
    """Pydantic options set through ExternalConfigDict still apply."""

    class Frozen(ExternalBaseModel):
        a: int
        model_config = ExternalConfigDict(storage=memory_url, frozen=True)

    item = Frozen.model_validate(Frozen(a=1).model_dump())
    with pytest.raises(Exception, match="frozen"):
        item.a = 2  # type: ignore[misc]
    assert isinstance(Frozen.model_config, dict)
    assert ConfigDict  # the base class of ExternalConfigDict


def test_records_are_written_and_read_without_the_root_hooks(memory_url: str) -> None:
    """Storing and loading use the fields' own serializer and validator, not the root hooks."""
    from pydantic_toast._data_schema import data_schema

    class Leaf(ExternalBaseModel):
        name: str
        model_config = ExternalConfigDict(storage=memory_url)

    class Tree(ExternalBaseModel):
        leaves: list[Leaf]
        model_config = ExternalConfigDict(storage=memory_url)

    fast = data_schema(Tree)
    assert fast is not None
    tree = Tree(leaves=[Leaf(name="a")])
    data = fast.serializer.to_json(tree, round_trip=True)
    assert data == b'{"leaves":[' + Leaf.model_dump_json(tree.leaves[0]).encode() + b"]}"
    assert Tree.model_validate(tree.model_dump()) == tree


def test_a_models_own_validators_run_once_per_load(memory_url: str) -> None:
    """A subclass's own after-validator runs exactly once per load, sync or async."""
    from pydantic import model_validator

    from pydantic_toast._data_schema import data_schema

    class Checked(ExternalBaseModel):
        value: int
        model_config = ExternalConfigDict(storage=memory_url)

        @model_validator(mode="after")
        def double(self) -> Checked:
            object.__setattr__(self, "value", self.value * 2)
            return self

    fast = data_schema(Checked)
    assert fast is not None
    assert not fast.hook_at_root
    reference = Checked(value=1).model_dump()  # stored as 2
    # As in plain Pydantic's model_validate(model_dump()): the validator runs once per load.
    assert Checked.model_validate(reference).value == 4
    assert asyncio.run(Checked.aload(reference)).value == 4


def test_a_plain_values_storage_errors_come_as_they_are_through_pydantic_toast_dump(
    memory_url: str,
) -> None:
    """As docs/concepts.md says: Pydantic wraps an error raised while a plain model's
    ``model_dump()`` saves an external model in its ``PydanticSerializationError`` (the
    library's error as ``__cause__`` in Python mode); ``pydantic_toast.dump()`` raises the
    library's error itself, in both modes, and writes nothing."""

    class Ticket(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=memory_url)
        seats: int

    class Envelope(BaseModel):
        ticket: Ticket

    reference = Ticket(seats=1).model_dump()
    first, stale = Ticket.model_validate(reference), Ticket.model_validate(reference)
    first.seats = 2
    first.model_dump()
    stale.seats = 3
    with pytest.raises(PydanticSerializationError) as wrapped:
        Envelope(ticket=stale).model_dump()
    assert isinstance(wrapped.value.__cause__, ConcurrencyError)
    for mode in ("python", "json"):
        with pytest.raises(ConcurrencyError):
            pydantic_toast.dump(Envelope(ticket=stale), mode=mode)
    assert Ticket.model_validate(reference).seats == 2


def test_a_top_key_not_spelt_as_a_field_stays_hidden_under_extra_forbid(memory_url: str) -> None:
    """A record's top key that is no field name (one a model with extra='allow' took from its
    users, say an e-mail address) is not named by the StoredDataError of a model that now
    forbids extras: it may be the user's data."""

    def release(extra: Literal["allow", "forbid"]) -> type[ExternalBaseModel]:
        class Guestbook(ExternalBaseModel):
            model_config = ExternalConfigDict(storage=memory_url, extra=extra)
            title: str

        return Guestbook

    reference = release("allow")(title="t", **{"alice@example.com": "hello"}).model_dump()
    with pytest.raises(StoredDataError, match=r"<key>: Extra inputs") as info:
        release("forbid").model_validate(reference)
    assert "alice@example.com" not in str(info.value)
