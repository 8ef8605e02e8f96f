"""The byte scan that decides whether PostgreSQL keeps a record's exact JSON text beside jsonb."""

from __future__ import annotations

import pytest

from pydantic_toast.backends.jsonb import exact_text


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
    assert exact_text(data) == data.decode()


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
    assert exact_text(data) is None
