"""The per-class number plan: large records of simple classes skip the byte scans, exactly."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageValidationError
from pydantic_toast._data_schema import data_schema, storage_serializer
from pydantic_toast._number_plan import NumberPlan
from pydantic_toast._records import StoredRecord, new_record
from tests.conftest import count_scans

HUGE = 10**4300  # 4,301 digits: Pydantic's JSON parser refuses it
BODY = "lorem ipsum 1234567890123456789012 " * 300  # digits in text: the scan would flag them


class Article(ExternalBaseModel):
    title: str
    body: str
    tags: list[str] = []
    model_config = ExternalConfigDict(storage="memory://number-plan")


class Measured(ExternalBaseModel):
    body: str
    count: int | None = None
    sizes: list[int] = []
    ratio: float = 0.5
    at: datetime | None = None
    labels: dict[str, str] = {}
    model_config = ExternalConfigDict(storage="memory://number-plan")


class Loose(ExternalBaseModel):
    body: str
    extra: Any = None
    model_config = ExternalConfigDict(storage="memory://number-plan")


def plan(cls: type[ExternalBaseModel]) -> NumberPlan:
    schema = data_schema(cls)
    assert schema is not None
    return schema.numbers


def _saved_records(monkeypatch: pytest.MonkeyPatch) -> list[StoredRecord]:
    """The records saves hand to their backend, from now on."""
    from pydantic_toast import _saving

    made: list[StoredRecord] = []

    def recording(*args: Any) -> StoredRecord:
        made.append(new_record(*args))
        return made[-1]

    monkeypatch.setattr(_saving, "new_record", recording)
    return made


def test_a_class_of_strings_skips_the_scan_and_vouches_for_jsonb(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A large record of str fields is neither scanned for long integers nor by jsonb's float
    scan (its save vouches for it); it comes back exactly."""
    assert not plan(Article).scan
    assert not plan(Article).floats
    scanned = count_scans(monkeypatch)
    saved = _saved_records(monkeypatch)
    article = Article(title="t", body=BODY, tags=["a", "b"])
    reference = article.model_dump()
    assert scanned == []
    assert [record.without_floats for record in saved] == [True]
    assert Article.model_validate(reference).body == BODY


def test_small_records_are_scanned_unless_their_values_were_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A small record whose values the save found of their fields' types (ints short) is not
    scanned; one holding a value of another type (a str subclass) is, as before."""

    class Title(str):
        pass

    scanned = count_scans(monkeypatch)
    article = Article(title="t", body="short")
    article.model_dump()
    assert scanned == []
    article.title = Title("another")
    article.model_dump()
    assert len(scanned) == 1
    assert Article.model_validate(article.model_dump()).title == "another"


def test_ints_and_lists_of_ints_are_checked_by_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short ints skip the scan; a long int in an int field or a list makes the record scanned,
    and one Pydantic cannot read back is refused, naming the field, as before."""
    scanned = count_scans(monkeypatch)
    saved = _saved_records(monkeypatch)
    measured = Measured(body=BODY, count=7, sizes=list(range(50)), at=datetime.now(UTC))
    measured.model_dump()
    assert scanned == []
    assert [record.without_floats for record in saved] == [False]  # a float field: jsonb scans
    long = Measured(body=BODY, count=10**18, sizes=[1])
    assert Measured.model_validate(long.model_dump()).count == 10**18  # scanned, reads back
    assert len(scanned) == 1
    for values, field in (({"count": HUGE}, "count"), ({"sizes": [1, -HUGE]}, "sizes.1")):
        with pytest.raises(StorageValidationError) as info:
            Measured(body=BODY, **values).model_dump()
        assert info.value.field == field


def test_a_value_of_another_type_is_refused_before_the_scan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fields are not validated on assignment: a long int set on a str field is refused while
    serializing (a value not of its field's type), before any scan."""
    scanned = count_scans(monkeypatch)
    article = Article(title="t", body=BODY)
    article.title = HUGE  # type: ignore[assignment]
    with pytest.raises(StorageValidationError, match="type int where str") as info:
        article.model_dump()
    assert info.value.field == "title"
    assert scanned == []


def test_any_fields_are_always_scanned(monkeypatch: pytest.MonkeyPatch) -> None:
    """A class with an Any field has no plan: its records are scanned, huge ints refused."""
    assert plan(Loose).scan
    scanned = count_scans(monkeypatch)
    with pytest.raises(StorageValidationError) as info:
        Loose(body=BODY, extra=[HUGE]).model_dump()
    assert info.value.field == "extra.0"
    assert len(scanned) == 1


def _numbers(data: bytes) -> tuple[int, bool]:
    """The most digits of an integer token in JSON ``data``, and whether it holds a float."""
    digits, floats = 0, False

    def parse_int(text: str) -> int:
        nonlocal digits
        digits = max(digits, len(text.lstrip("-")))
        return 0

    def parse_float(text: str) -> float:
        nonlocal floats
        floats = True
        return 0.0

    json.loads(data, parse_int=parse_int, parse_float=parse_float, parse_constant=parse_float)
    return digits, floats


values = st.fixed_dictionaries(
    {
        "body": st.text(max_size=30),
        "count": st.none() | st.integers() | st.integers(min_value=-(10**20), max_value=10**20),
        "sizes": st.lists(st.integers(min_value=-(10**19), max_value=10**19), max_size=4),
        "ratio": st.floats(allow_nan=False),
        "labels": st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    }
)


@given(values)
def test_when_the_plan_holds_no_long_integer_is_written(fields: dict[str, Any]) -> None:
    """Whenever the values fit the plan, the JSON holds no integer of 19 digits or more (what
    the scan looks for), and no float when the plan says none."""
    model = Measured(**fields)
    data = storage_serializer(Measured).to_json(model, round_trip=True)
    digits, _ = _numbers(data)
    assert plan(Measured).holds(model.__dict__) is (digits < 19)
    article = Article(title=fields["body"], body=fields["body"])
    article_data = storage_serializer(Article).to_json(article, round_trip=True)
    assert plan(Article).holds(article.__dict__)
    assert _numbers(article_data) == (0, False)
