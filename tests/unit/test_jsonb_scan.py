"""The byte scan that decides whether PostgreSQL keeps a record's exact JSON text beside jsonb."""

from __future__ import annotations

import dataclasses
import uuid
from collections import OrderedDict
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageValidationError
from pydantic_toast._records import StoredRecord
from pydantic_toast.backends.jsonb import exact_text, refuse_unstorable

_NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _record(data: bytes, *, without_floats: bool = False) -> StoredRecord:
    return StoredRecord("c", uuid.uuid4(), data, 1, _NOW, _NOW, without_floats=without_floats)


@pytest.mark.parametrize(
    "data",
    [
        b'{"x":1e+16}',
        b'{"x":1E+16}',
        b'{"x":[2.5e-07]}',
        b'{"a":"b","x":9E3}',
        b'{"x":-0.0}',
        b'{"x":[1,-0.0]}',
    ],
)
def test_numbers_jsonb_rewrites_keep_their_exact_text(data: bytes) -> None:
    assert exact_text(_record(data)) == data.decode()


@pytest.mark.parametrize(
    "data",
    [
        b'{"x":1.5,"y":10}',
        b'{"x":"10e5 in a string","y":"1E9"}',
        b'{"x":"-0.0"}',
        b'{"body":"' + b"lorem ipsum dolor sit amet 0 e " * 4000 + b'"}',
    ],
)
def test_other_json_keeps_no_copy(data: bytes) -> None:
    assert exact_text(_record(data)) is None


def test_a_translation_is_reused_only_for_the_same_bytes_object() -> None:
    """The shared digit translation never answers for other bytes, even equal-length ones."""
    first = _record(b'{"x":1.5}')
    assert exact_text(first) is None
    assert exact_text(_record(b'{"x":1e+5}')) == '{"x":1e+5}'  # other bytes, the same length
    assert exact_text(first) is None


def test_a_record_vouched_free_of_floats_is_not_scanned() -> None:
    """A save that proved its record holds no float spares it the scan (the bytes here would
    be flagged: the flag is what decides); a codec's new data loses the proof."""
    vouched = _record(b'{"x":1e+5}', without_floats=True)
    assert exact_text(vouched) is None
    assert exact_text(replace(vouched, without_floats=False)) == '{"x":1e+5}'


@pytest.mark.parametrize(
    ("data", "field"),
    [(b'{"a":1,"x":NaN}', "x"), (b'{"x":[-Infinity]}', "x.0"), (b'{"s":"a\\u0000b"}', "s")],
)
def test_unstorable_values_are_refused_naming_the_field(data: bytes, field: str) -> None:
    """NaN, the infinities and NUL characters are refused before writing, naming the field."""
    record = StoredRecord("c", uuid.uuid4(), data, 1, _NOW, _NOW)
    with pytest.raises(StorageValidationError) as caught:
        refuse_unstorable(record)
    assert caught.value.field == field


def test_lookalikes_inside_strings_are_stored() -> None:
    """The tokens' letters in ordinary text (capital N and I, backslash escapes) pass."""
    data = b'{"s":"Not Infinite, I said \\"NaN\\"\\n"}'
    refuse_unstorable(StoredRecord("c", uuid.uuid4(), data, 1, _NOW, _NOW))


def test_a_class_holding_an_ordered_dict_keeps_its_text_others_do_not(memory_url: str) -> None:
    """jsonb sorts an object's keys its own way: a class whose fields can hold an OrderedDict
    (nested too, or alone) keeps its records' exact text, a plain dict does not; such a class's
    records are never vouched free of floats (which would skip the look)."""
    from pydantic_toast._data_schema import data_schema
    from pydantic_toast._key_order import KEY_ORDER_KEPT  # (new: the other tests run without)

    @dataclasses.dataclass
    class Inner:
        steps: list[OrderedDict[str, int]] | None

    def define(annotation: Any) -> tuple[type[ExternalBaseModel], str]:
        name = f"C{uuid.uuid4().hex}"
        config = ExternalConfigDict(storage=memory_url, external_name=name)
        namespace = {"__annotations__": {"steps": annotation}, "model_config": config}
        return type("C", (ExternalBaseModel,), namespace), name

    data = b'{"steps":{"b":1,"a":2}}'
    nested, alone, plain = define(Inner), define(OrderedDict[str, int]), define(dict[str, int])
    try:
        for cls, name in (nested, alone):
            assert exact_text(replace(_record(data), class_name=name)) == data.decode()
            schema = data_schema(cls)
            assert schema is not None
            assert schema.numbers.scan
        assert exact_text(replace(_record(data), class_name=plain[1])) is None
    finally:
        KEY_ORDER_KEPT.difference_update({nested[1], alone[1]})
