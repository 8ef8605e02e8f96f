"""Class definition: storage configuration is checked at the class statement."""

from __future__ import annotations

import dataclasses
import enum
import gc
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import uuid4

import pytest
from pydantic import (
    BaseModel,
    Field,
    FutureDatetime,
    PastDate,
    PlainSerializer,
    PlainValidator,
)
from typing_extensions import TypedDict

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    RecordNotFoundError,
    StorageConfigurationError,
    StorageValidationError,
    UnknownSchemeError,
)
from tests.conftest import CALL_LOGS


def test_missing_storage_names_the_class_and_the_fix() -> None:
    """A concrete model without storage fails at the class statement, saying what to add."""
    with pytest.raises(StorageConfigurationError, match=r"NoStorage has no storage") as info:
        _ = type("NoStorage", (ExternalBaseModel,), {"__annotations__": {"x": int}})
    assert "ExternalConfigDict(storage=" in str(info.value)
    assert "__abstract__ = True" in str(info.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "is not a URL"),
        ("postgresql://app:s3cret@db:99999/shop", "invalid port"),
        ("nosuchscheme://host/x", "no storage backend is registered for scheme 'nosuchscheme'"),
        ("", "is not a URL"),
    ],
)
def test_bad_urls_fail_at_definition(url: str, expected: str) -> None:
    """Malformed URLs, bad ports and unknown schemes fail when the class is defined."""
    with pytest.raises(StorageConfigurationError, match=expected) as info:

        class Bad(ExternalBaseModel):
            x: int
            model_config = ExternalConfigDict(storage=url)

    assert "Bad" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_abstract_base_needs_no_storage_and_subclasses_inherit_it(memory_url: str) -> None:
    """An explicitly abstract base defines without storage; concrete subclasses are checked."""

    class Base(ExternalBaseModel):
        __abstract__ = True
        created_by: str = "me"

    class Concrete(Base):
        x: int
        model_config = ExternalConfigDict(storage=memory_url)

    reference = Concrete(x=1).model_dump()
    assert Concrete.model_validate(reference).created_by == "me"
    with pytest.raises(StorageConfigurationError, match="is abstract"):
        Base().model_dump()
    with pytest.raises(StorageConfigurationError, match="has no storage"):

        class StillNoStorage(Base):
            y: int


def test_storage_from_environment_is_read_at_first_use(
    monkeypatch: pytest.MonkeyPatch, memory_url: str
) -> None:
    """storage='env:NAME' defines without the variable and fails clearly until it is set."""
    monkeypatch.delenv("TOAST_TEST_STORAGE", raising=False)

    class FromEnv(ExternalBaseModel):
        x: int
        model_config = ExternalConfigDict(storage="env:TOAST_TEST_STORAGE")

    with pytest.raises(StorageConfigurationError, match="TOAST_TEST_STORAGE is not set"):
        FromEnv(x=1).model_dump()
    monkeypatch.setenv("TOAST_TEST_STORAGE", memory_url)
    reference = FromEnv(x=2).model_dump()
    assert FromEnv.model_validate(reference).x == 2


def test_env_spec_must_name_a_variable() -> None:
    """A malformed env: setting fails at definition."""
    with pytest.raises(StorageConfigurationError, match="does not name an environment variable"):

        class BadEnv(ExternalBaseModel):
            x: int
            model_config = ExternalConfigDict(storage="env:1-not-a-name")


def test_env_url_with_unknown_scheme_fails_at_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """The URL read from the environment is checked like a literal one, with the password masked."""
    monkeypatch.setenv("TOAST_TEST_BAD", "nope://u:hunter2@host/x")

    class EnvBad(ExternalBaseModel):
        x: int
        model_config = ExternalConfigDict(storage="env:TOAST_TEST_BAD")

    with pytest.raises(StorageConfigurationError, match="scheme 'nope'") as info:
        EnvBad(x=1).model_dump()
    assert "hunter2" not in str(info.value)


def test_class_name_field_is_rejected(memory_url: str) -> None:
    """A field named or aliased class_name would make data look like a reference."""
    with pytest.raises(StorageConfigurationError, match="'class_name'"):

        class Ambiguous(ExternalBaseModel):
            class_name: str
            model_config = ExternalConfigDict(storage=memory_url)

    with pytest.raises(StorageConfigurationError, match="'class_name'"):

        class Aliased(ExternalBaseModel):
            kind: str = Field(alias="class_name")
            model_config = ExternalConfigDict(storage=memory_url)


def test_a_field_called_id_is_fine(memory_url: str) -> None:
    """Models may have their own id field: only the exact reference shape is a reference."""

    class WithId(ExternalBaseModel):
        id: int
        model_config = ExternalConfigDict(storage=memory_url)

    reference = WithId(id=7).model_dump()
    assert WithId.model_validate(reference).id == 7
    assert WithId.model_validate({"id": 8}).id == 8


def test_same_stored_name_on_same_storage_is_rejected_unless_renamed(memory_url: str) -> None:
    """Two classes stored under one name on one storage collide; external_name separates them."""

    class Item(ExternalBaseModel):
        x: int
        model_config = ExternalConfigDict(storage=memory_url)

    first = Item

    def define_another_item() -> None:
        class Item(ExternalBaseModel):
            y: int
            model_config = ExternalConfigDict(storage=memory_url)

    with pytest.raises(StorageConfigurationError, match="external_name") as info:
        define_another_item()

    assert "already stored under that name" in str(info.value)

    class Item2(ExternalBaseModel):
        x: int
        model_config = ExternalConfigDict(storage=memory_url, external_name="shop.Item")

    second = Item2
    a, b = first(x=1).model_dump(), second(x=2).model_dump()
    assert b["class_name"] == "shop.Item"
    assert first.model_validate(a).x == 1
    assert second.model_validate(b).x == 2
    with pytest.raises(StorageValidationError, match=r"stored as 'shop\.Item'"):
        second.model_validate(a)


def test_ttl_only_where_the_backend_expires_records() -> None:
    """A ttl on a backend without expiry fails at definition; invalid ttls too."""
    from pydantic_toast import StorageBackend, register_backend

    class NoExpiry(StorageBackend):
        async def connect(self) -> None: ...
        async def disconnect(self) -> None: ...
        async def save(self, id, class_name, data):  # type: ignore[no-untyped-def]
            ...
        async def load(self, id, class_name):  # type: ignore[no-untyped-def]
            return None

    register_backend("noexpiry", NoExpiry)
    with pytest.raises(StorageConfigurationError, match="does not expire records"):

        class Expiring(ExternalBaseModel):
            x: int
            model_config = ExternalConfigDict(storage="noexpiry://x", ttl=timedelta(seconds=5))

    with pytest.raises(StorageConfigurationError, match="ttl must be a positive"):

        class NegativeTtl(ExternalBaseModel):
            x: int
            model_config = ExternalConfigDict(storage="memory://", ttl=-1)

    # Accepted before, then every save on PostgreSQL and SQLite failed with an OverflowError
    # that named neither the ttl nor the fix.
    for endless in (float("inf"), 10**12, timedelta(days=999_999)):
        with pytest.raises(StorageConfigurationError, match="at most 1,000 years"):

            class EndlessTtl(ExternalBaseModel):
                x: int
                model_config = ExternalConfigDict(storage="memory://", ttl=endless)


def test_schema_version_must_be_positive_int(memory_url: str) -> None:
    """schema_version is checked at definition."""
    with pytest.raises(StorageConfigurationError, match="schema_version"):

        class Versioned(ExternalBaseModel):
            x: int
            model_config = ExternalConfigDict(storage=memory_url, schema_version=0)


def test_unknown_config_key_names_it_a_close_match_and_the_valid_keys(memory_url: str) -> None:
    """A typo in model_config (Pydantic ignores unknown keys) fails at the class statement,
    naming the key, the key it resembles and the library's keys; abstract bases too."""
    with pytest.raises(StorageConfigurationError) as info:

        class Typo(ExternalBaseModel):
            model_config = ExternalConfigDict(storage=memory_url, storge=memory_url)  # type: ignore[typeddict-unknown-key]

    message = str(info.value)
    assert "Typo: unknown model_config key 'storge'" in message
    assert "did you mean 'storage'?" in message
    assert "schema_version, external_name, ttl, concurrency" in message
    with pytest.raises(StorageConfigurationError, match=r"unknown model_config key 'tll'"):

        class Base(ExternalBaseModel):
            __abstract__ = True
            model_config = ExternalConfigDict(tll=5)  # type: ignore[typeddict-unknown-key]


def test_pydantic_config_keys_are_accepted(memory_url: str) -> None:
    """Every key of Pydantic's own ConfigDict still passes (model_config stays compatible)."""

    class Strict(ExternalBaseModel):
        model_config = ExternalConfigDict(
            storage=memory_url, strict=True, frozen=False, str_strip_whitespace=True
        )
        name: str

    assert Strict(name=" a ").name == "a"


def test_unknown_scheme_is_a_validation_and_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """T062: an unknown scheme is an UnknownSchemeError: a StorageValidationError, no ValueError."""
    with pytest.raises(StorageValidationError, match="scheme 'postgressql'") as info:

        class Typo(ExternalBaseModel):
            x: int
            model_config = ExternalConfigDict(storage="postgressql://db/x")

    assert type(info.value) is UnknownSchemeError
    assert isinstance(info.value, StorageConfigurationError)
    assert not isinstance(info.value, ValueError)
    assert info.value.scheme == "postgressql"
    assert "Typo: " in str(info.value)
    assert "did you mean 'postgresql'" in str(info.value)
    monkeypatch.setenv("TOAST_TEST_TYPO", "postgressql://u:hunter2@db/x")

    class EnvTypo(ExternalBaseModel):
        x: int
        model_config = ExternalConfigDict(storage="env:TOAST_TEST_TYPO")

    with pytest.raises(UnknownSchemeError, match="scheme 'postgressql'") as at_use:
        EnvTypo(x=1).model_dump()
    assert "hunter2" not in str(at_use.value)


def test_reference_under_a_name_no_class_claims_suggests_external_name(memory_url: str) -> None:
    """After a rename, the old references say how to keep reading them."""
    # A name no other test or docs example registers in this process (the registry is shared).
    old_name = f"Ticket{uuid4().hex[:8]}"

    class SupportTicket(ExternalBaseModel):
        title: str
        model_config = ExternalConfigDict(storage=memory_url)

    old_reference = {"class_name": old_name, "id": "0b6f3b0e-0000-4000-8000-000000000000"}
    with pytest.raises(StorageValidationError) as info:
        SupportTicket.model_validate(old_reference)
    message = str(info.value)
    assert f"no model class in this process is stored as '{old_name}'" in message
    assert f"ExternalConfigDict(external_name='{old_name}')" in message

    class Renamed(ExternalBaseModel):
        title: str
        model_config = ExternalConfigDict(storage=memory_url, external_name=old_name)

    reference = Renamed(title="t").model_dump()
    with pytest.raises(StorageValidationError, match=r"validate it with .*Renamed") as claimed:
        SupportTicket.model_validate(reference)
    assert "ExternalConfigDict" not in str(claimed.value)


@pytest.mark.usefixtures("blocking_calls_allowed")
async def test_missing_record_of_a_class_with_no_records_hints_at_a_rename(
    counting_url: str,
) -> None:
    """Not found under a name with no record at all suggests external_name=; probed once."""

    class Ticket(ExternalBaseModel):
        title: str
        model_config = ExternalConfigDict(storage=counting_url)

    reference = await Ticket(title="old").asave()

    class SupportTicket(ExternalBaseModel):  # the same class after a rename
        title: str
        model_config = ExternalConfigDict(storage=counting_url)

    with pytest.raises(RecordNotFoundError, match=r"external_name='<old class name>'"):
        await SupportTicket.aload(reference["id"])
    with pytest.raises(RecordNotFoundError, match="no SupportTicket record exists there at all"):
        SupportTicket.model_validate({"class_name": "SupportTicket", "id": reference["id"]})
    log = CALL_LOGS[counting_url]
    assert log.listings == 2  # each miss probed: still no SupportTicket record
    await SupportTicket(title="new").asave()
    for _ in range(3):
        with pytest.raises(RecordNotFoundError) as info:
            await SupportTicket.aload(uuid4())
        assert "external_name" not in str(info.value)
    assert log.listings == 3  # probed once more, then known to have records


class Handle:
    """A class Pydantic has no schema for (arbitrary_types_allowed)."""


class Event(BaseModel):
    when: FutureDatetime


@dataclasses.dataclass
class Stamp:
    day: PastDate


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (Iterable[int], "is an Iterable .*one-pass iterator.*list\\[...\\]"),
        (Callable[[], int], "no JSON form .*\\(a Callable\\)"),
        (Handle, "no JSON form .*\\(any instance of Handle\\).*PlainSerializer"),
        (type[Handle], "no JSON form .*\\(type\\[Handle\\]\\)"),
        (list[Handle] | Callable[[], int], "any instance of Handle"),
        (Event, "holds Event, whose own validator checks a time constraint"),
        (dict[str, Stamp], "holds Stamp, whose own validator.*ExternalBaseModel"),
        (Event | None, "holds Event, whose own validator"),
    ],
    ids=["iterable", "callable", "arbitrary", "type", "every-member", "future", "past", "timed"],
)
def test_fields_no_value_of_which_can_be_stored_are_refused_at_definition(
    memory_url: str, annotation: Any, expected: str
) -> None:
    """A field type whose every value would be refused at save (or load back changed, or not
    at all) fails at the class statement, naming the class and the field."""
    with pytest.raises(StorageConfigurationError, match=expected) as info:
        type(
            "Unstorable",
            (ExternalBaseModel,),
            {
                "__annotations__": {"name": str, "field": annotation},
                "model_config": ExternalConfigDict(
                    storage=memory_url, arbitrary_types_allowed=True
                ),
            },
        )
    assert str(info.value).startswith("Unstorable cannot be stored: field 'field' ")


def test_a_field_that_can_hold_a_storable_value_is_left_to_the_save(memory_url: str) -> None:
    """A nullable field, or a union with a storable member, is accepted at definition: an
    instance holding None (or the storable member) saves and loads back equal, one holding an
    unstorable value is refused at save, naming the field."""

    class Hooked(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=memory_url, arbitrary_types_allowed=True)
        hook: Callable[[], int] | None = None
        items: Iterable[int] | None = None
        handles: list[Handle] | None = None
        either: int | Callable[[], int] = 1

    fine = Hooked()
    assert Hooked.model_validate(fine.model_dump()) == fine
    for field, value, expected in (
        ("hook", lambda: 1, "cannot be written as JSON"),
        ("items", [1], "one-pass iterator"),
        ("handles", [Handle()], "cannot be written as JSON .*Handle"),
        ("either", lambda: 1, "cannot be written as JSON"),
    ):
        with pytest.raises(StorageValidationError, match=expected) as info:
            Hooked(**{field: value}).model_dump()
        assert info.value.field == field


class Dated(ExternalBaseModel):
    """Time constraints in an external model's own fields load: it is stored by reference."""

    model_config = ExternalConfigDict(storage="memory://dated")
    when: FutureDatetime


def test_what_the_user_converts_or_excludes_is_theirs(memory_url: str) -> None:
    """A field under a serializer and validator of the user's, one excluded with a default (not
    data), and an external model with a time constraint are accepted; so is an abstract base."""

    class Mine(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=memory_url)
        answer: Annotated[
            Callable[[], int],
            PlainValidator(lambda v: v if callable(v) else lambda: v),
            PlainSerializer(lambda f: f()),
        ]
        callback: Callable[[], None] = Field(default=print, exclude=True)
        dated: Dated | None = None

    class Base(ExternalBaseModel):
        __abstract__ = True
        values: Iterable[int] = ()

    loaded = Mine.model_validate(Mine(answer=lambda: 42).model_dump())
    assert (loaded.answer(), loaded.callback) == (42, print)
    assert Base.__abstract__


def test_a_forward_reference_is_checked_when_it_resolves(memory_url: str) -> None:
    """A field type known only once a forward reference resolves is refused at the rebuild."""

    class Pending(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=memory_url)
        entries: Later  # type: ignore[name-defined]

    Later = Iterable[int]  # resolved from this frame by model_rebuild()
    assert Later
    with pytest.raises(StorageConfigurationError, match="field 'entries' is an Iterable"):
        Pending.model_rebuild()
    # Used all the same, it says why it cannot be stored (it said "abstract").
    with pytest.raises(StorageConfigurationError, match="field 'entries' is an Iterable"):
        Pending(entries=[1]).model_dump()
    with pytest.raises(StorageConfigurationError, match="field 'entries' is an Iterable"):
        pydantic_toast.delete(Pending, "00000000-0000-0000-0000-000000000001")
    del Pending
    gc.collect()  # the refused class, off ExternalBaseModel.__subclasses__() (orphan scans)


class Shape(enum.Enum):
    POINT = (0, 0)
    UNIT = (1, 1)


class Epoch(enum.Enum):
    START = datetime(1970, 1, 1, tzinfo=UTC)


class Price(enum.Enum):
    TEN = Decimal("10.00")


class Mixed(enum.Enum):
    ONE = 1
    PAIR = (1, 2)


@dataclasses.dataclass
class Drawing:
    shape: Shape


class Sketch(TypedDict):
    shapes: list[Shape]


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (Shape, r"the enum Shape, whose value <Shape.POINT: \(0, 0\)> is written as \[0,0\]"),
        (Epoch, 'the enum Epoch, .* is written as "1970-01-01T00:00:00Z"'),
        (Price, r"the enum Price, whose value <Price.TEN: Decimal\('10.00'\)> is written as"),
        (Mixed, r"the enum Mixed, whose value <Mixed.PAIR: \(1, 2\)>"),
        (Literal[((1, 2),)], r"a Literal, whose value \(1, 2\) is written as \[1,2\]"),
        (Literal["a", b"b"], "a Literal, whose value b'b' is written as \"b\""),
        (Literal[Shape.UNIT], "a Literal, whose value <Shape.UNIT"),
        (list[Shape], "the enum Shape"),
        (Shape | None, "the enum Shape"),
        (dict[str, int | Shape], "the enum Shape"),
        (Drawing, "the enum Shape"),
        (Sketch, "the enum Shape"),
    ],
    ids=[
        "tuple",
        "datetime",
        "decimal",
        "mixed",
        "literal-tuple",
        "literal-bytes",
        "literal-member",
        "list",
        "nullable",
        "union",
        "dataclass",
        "typeddict",
    ],
)
def test_enums_and_literals_whose_values_json_changes_are_refused_at_definition(
    memory_url: str, annotation: Any, expected: str
) -> None:
    """An enum or Literal value that JSON gives back as another (a tuple as a list, a datetime
    or Decimal as a str) would be saved and never loaded: the class statement fails, naming
    the field, the type and the fix, wherever the type is nested, in a union too."""
    with pytest.raises(StorageConfigurationError, match=expected) as info:
        type(
            "Chosen",
            (ExternalBaseModel,),
            {
                "__annotations__": {"field": annotation},
                "model_config": ExternalConfigDict(storage=memory_url),
            },
        )
    message = str(info.value)
    assert message.startswith("Chosen cannot be stored: field 'field' ")
    assert "could never be loaded" in message
    assert "str or int values" in message


class Flavour(enum.Enum):
    PLAIN = "plain"
    ONE = 1
    HALF = 0.5
    NOTHING = None
    YES = True


class Corner(enum.Enum):
    """Tuple values, brought back by the enum's own ``_missing_`` from the JSON list."""

    ORIGIN = (0, 0)

    @classmethod
    def _missing_(cls, value: object) -> Corner | None:
        return cls(tuple(value)) if isinstance(value, list) else None


def test_enums_and_literals_whose_values_json_keeps_are_stored(memory_url: str) -> None:
    """Values JSON gives back (str, int, float, None, bool), and values an enum's own
    ``_missing_`` brings back, are accepted and load back as the same members."""

    class Chosen(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=memory_url)
        flavours: list[Flavour]
        corner: Corner
        literal: Literal["a", 1, None, True]

    saved = Chosen(flavours=list(Flavour), corner=Corner.ORIGIN, literal=True)
    loaded = Chosen.model_validate(saved.model_dump())
    assert loaded == saved
    assert loaded.flavours == list(Flavour)
    assert loaded.corner is Corner.ORIGIN
    assert loaded.literal is True


@pytest.mark.parametrize("annotation", [Shape, list[Shape], Shape | None, Mixed])
def test_enum_values_json_changes_are_refused_with_use_enum_values(
    memory_url: str, annotation: Any
) -> None:
    """``use_enum_values=True`` keeps the raw value (a tuple), which is written as a JSON list
    the enum does not read back: refused at definition as without it (it was saved, and every
    load failed with "bump schema_version")."""
    with pytest.raises(StorageConfigurationError, match="could never be loaded") as info:
        type(
            "Valued",
            (ExternalBaseModel,),
            {
                "__annotations__": {"field": annotation},
                "model_config": ExternalConfigDict(storage=memory_url, use_enum_values=True),
            },
        )
    assert str(info.value).startswith("Valued cannot be stored: field 'field' is the enum ")


def test_enum_values_json_keeps_are_stored_with_use_enum_values(memory_url: str) -> None:
    """With ``use_enum_values=True`` the values JSON gives back, and those an enum's own
    ``_missing_`` brings back, are accepted and load back as the same values."""

    class Valued(ExternalBaseModel):
        model_config = ExternalConfigDict(storage=memory_url, use_enum_values=True)
        flavours: list[Flavour]
        corner: Corner

    saved = Valued(flavours=list(Flavour), corner=Corner.ORIGIN)
    loaded = Valued.model_validate(saved.model_dump())
    assert loaded.flavours == [flavour.value for flavour in Flavour]
    assert loaded.corner == (0, 0)
    assert loaded == saved
