"""The Redis batch read takes an MGET reply off its stream exactly, wherever its reads end."""

from __future__ import annotations

import asyncio

import pytest
from redis._parsers import _AsyncRESP2Parser

from pydantic_toast.backends import _resp


def reply(values: list[bytes | None]) -> bytes:
    """The RESP2 array reply of ``values`` (``None``: a missing key)."""
    parts = [b"*%d\r\n" % len(values)]
    for value in values:
        parts.append(b"$-1\r\n" if value is None else b"$%d\r\n%b\r\n" % (len(value), value))
    return b"".join(parts)


async def read_in_two(packed: bytes, cut: int, piece: int) -> object:
    """``_read_array`` of ``packed`` whose first ``cut`` bytes arrive alone, the rest later."""
    stream = asyncio.StreamReader()
    parser = _AsyncRESP2Parser(socket_read_size=1 << 16)
    parser._stream = stream
    parser._connected = True
    stream.feed_data(packed[:cut])
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, stream.feed_data, packed[cut:])
    async with asyncio.timeout(5) as deadline:
        return await _resp._read_array(parser, deadline, 5.0, piece)


@pytest.mark.parametrize("value", [b"abc", b"x" * 60_000])
@pytest.mark.parametrize("split", ["in the value", "before its CR", "between its CR and LF"])
def test_a_read_that_ends_inside_a_value_or_its_line_end_reads_it_exactly(
    value: bytes, split: str
) -> None:
    """A value whose bytes, or its closing CR LF, arrive in two reads comes back exactly,
    not as a protocol error (a read may end between the CR and the LF)."""
    values = [b"first", value, None, b"last"]
    packed = reply(values)
    end_of_value = packed.index(value) + len(value)
    cut = {"in the value": end_of_value - 1, "before its CR": end_of_value}.get(
        split, end_of_value + 1
    )
    assert asyncio.run(read_in_two(packed, cut, piece=1 << 20)) == values
