"""The Redis batch read takes an MGET reply off its stream exactly, wherever its reads end."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from redis._parsers import _AsyncRESP2Parser

from pydantic_toast.backends import _resp

# redis-py's default socket_read_size (a connection's reads, hiredis's too): 32 KiB.
READ_SIZE = 32 * 1024


def reply(values: list[bytes | None]) -> bytes:
    """The RESP2 array reply of ``values`` (``None``: a missing key)."""
    parts = [b"*%d\r\n" % len(values)]
    for value in values:
        parts.append(b"$-1\r\n" if value is None else b"$%d\r\n%b\r\n" % (len(value), value))
    return b"".join(parts)


async def read_in_two(packed: bytes, cut: int, piece: int) -> list[_resp.Value]:
    """``_read_array`` of ``packed`` whose first ``cut`` bytes arrive alone, the rest later."""
    stream = asyncio.StreamReader()
    parser = _AsyncRESP2Parser(socket_read_size=READ_SIZE)
    parser._stream = stream
    parser._connected = True
    stream.feed_data(packed[:cut])
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, stream.feed_data, packed[cut:])
    async with asyncio.timeout(5) as deadline:
        values = await _resp._read_array(_resp._Buffered.of(parser), parser, deadline, 5.0, piece)
    assert parser._buffer == b"", "nothing follows the reply"
    return values  # type: ignore[no-any-return]


def joined(values: list[_resp.Value]) -> list[bytes | None]:
    """``values`` with each string read in pieces joined."""
    return [b"".join(value) if isinstance(value, list) else value for value in values]


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
    assert joined(asyncio.run(read_in_two(packed, cut, piece=1 << 20))) == values


@pytest.mark.parametrize(("length", "piece"), [(100_000, 1 << 20), (150_000, 30_000)])
@pytest.mark.parametrize("buffered", [0, 1, 37, 5_000])
@pytest.mark.parametrize("before", [6, 40_000])
def test_a_string_read_in_pieces_has_its_start_in_the_first(
    length: int, piece: int, buffered: int, before: int
) -> None:
    """A string longer than a read of the stream (64 KiB), whose first read ends just inside
    it (or before it), comes in pieces, the first holding its first HEAD bytes (where a
    document's header is read from) and no more than twice its own size of the buffer it was
    read in; whole once joined; no piece read after it longer than ``piece``."""
    value = bytes(range(256)) * (length // 256) + b"}" * (length % 256)
    values = [b"b" * before, None, value, b"after"]
    packed = reply(values)
    read = asyncio.run(read_in_two(packed, packed.index(value) + buffered, piece))
    assert joined(read) == values
    pieces = read[2]
    assert isinstance(pieces, list)
    first = pieces[0]
    assert bytes(first[: _resp.HEAD]) == value[: _resp.HEAD]
    held = first if isinstance(first, bytes) else first.obj
    assert len(held) <= 2 * len(first)  # type: ignore[arg-type]
    assert max(map(len, pieces[1:])) <= piece


@pytest.mark.parametrize(
    ("start", "length"),
    [
        (b"*3\r\n$5\r\n", 5),
        (b"*3\r\n$-1\r\n$-1\r\n$70000\r\nxy", 70_000),
        (b"*2\r\n$-1\r\n$-1\r\n", 0),  # no string in it
        (b"*2\r\n$-1\r\n$700", 0),  # its length line not whole yet
        (b"-ERR wrong\r\n", 0),
        (b"*1\r\n$x\r\n", 0),  # not RESP: hiredis's error says so
        (b"*1", 0),
    ],
)
def test_the_first_string_s_length_is_read_from_the_reply_s_start(
    start: bytes, length: int
) -> None:
    """With hiredis, the first string's length decides who parses the reply: missing strings
    are skipped; anything that does not show a length reads as 0 (hiredis parses it)."""
    assert _resp._first_length(start) == length


async def read_with_hiredis(packed: bytes, cut: int) -> tuple[list[_resp.Value], object]:
    """``_read_with_hiredis`` of ``packed`` (the first ``cut`` bytes alone, the rest later),
    followed by a ``+OK`` reply: the array, and the next reply as the parser then reads it."""
    hiredis = pytest.importorskip("hiredis")
    from redis._parsers import _AsyncHiredisParser

    stream = asyncio.StreamReader()
    parser = _AsyncHiredisParser(socket_read_size=READ_SIZE)
    connection = SimpleNamespace(_reader=stream, encoder=SimpleNamespace(decode_responses=False))
    parser.on_connect(connection)
    assert isinstance(parser._reader, hiredis.Reader)
    stream.feed_data(packed[:cut])
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, stream.feed_data, packed[cut:] + b"+OK\r\n")
    async with asyncio.timeout(5) as deadline:
        values = await _resp._read_with_hiredis(parser, deadline, 5.0, 1 << 20)
        return values, await parser.read_response()


@pytest.mark.parametrize("first", [100, 20_000, 100_000])
@pytest.mark.parametrize("cut", [3, 9, 70_000])
def test_with_hiredis_the_first_string_decides_who_reads_the_reply_exactly(
    first: int, cut: int
) -> None:
    """With hiredis, a reply read whole by hiredis (a short first string) or in Python (a
    long one, its strings not whole in a read coming in pieces) comes back exactly, wherever
    its first read ends; what follows it is left to hiredis, for the next reply."""
    values = [None, b"a" * first, b"", None, b"b" * 80_000, b"c" * 5]
    read, following = asyncio.run(read_with_hiredis(reply(values), cut))
    assert joined(read) == values
    assert following == b"OK"
    in_python = first >= _resp._PYTHON_FROM and cut >= 20
    assert any(isinstance(value, list) for value in read) == in_python


@pytest.mark.parametrize(
    ("values", "ahead"),
    [
        ([b"x" * 400] * 100, 16),  # 40 KB of replies: as many ahead as allowed
        ([b"x" * 40_000, None, b""] * 2, 13),  # 80 KB: 13 fit in 1 MiB
        ([None, None], 16),
        ([b"x" * 10, [b"a", memoryview(b"b")], None], 1),  # pieces: a large string, one ahead
        ([b"x" * 3_000_000], 1),
    ],
)
def test_commands_sent_ahead_follow_the_size_of_the_last_reply(
    values: list[_resp.Value], ahead: int
) -> None:
    """The commands a batch read keeps sent ahead are as many replies the size of the last
    as fit in 1 MiB, at least one and at most 16; a string read in pieces counts as a piece
    (1 MiB here)."""
    assert _resp._ahead_for(values, 1 << 20) == ahead
