"""Redis commands packed once (RESP) and run on one connection of a redis-py asyncio pool.

redis-py's generic path (``Redis.execute_command``, a registered script's ``__call__``)
encodes every argument through its ``Encoder``, wraps each call in its retry and
observability machinery and looks a response callback up: about as many instructions as the
socket round trip itself. The Redis backend's saves and loads pack their commands here
instead (bytes in, constant parts encoded once) and run them on the pool's own connections:
the checkout (and its errors, marked as connecting by the backend's pool) and the reply
parser stay redis-py's. The write and the replies run under one socket timeout (redis-py's
own send and read set one up each, with a task for the send), and a timeout, a connection
error or a cancellation disconnects the connection, as redis-py does.
A document too large to travel whole is written and read as a :func:`stream` of pieces, and
a batch read (``MGET``) takes such documents off the socket in pieces (:func:`read_values`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from redis._parsers import _AsyncRESPBase as _PythonParser  # hiredis's keeps its buffer in C
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = [
    "HEAD",
    "Pool",
    "Script",
    "Value",
    "command",
    "pipeline",
    "read_many_values",
    "read_values",
    "run",
    "stream",
]


class Pool(Protocol):
    """Where connections come from: a redis-py pool, or one cluster node's connections."""

    async def get_connection(self) -> Any:
        """A connection, taken from the pool (opened on first use)."""

    async def release(self, connection: Any) -> None:
        """Give ``connection`` back."""


class Script:
    """A Lua script called by its SHA1 (``EVALSHA``), loaded where the server lacks it."""

    __slots__ = ("head", "text")

    def __init__(self, text: str) -> None:
        self.text = text.encode()
        sha = hashlib.sha1(self.text, usedforsecurity=False).hexdigest().encode()
        self.head = b"$7\r\nEVALSHA\r\n$40\r\n" + sha + b"\r\n"

    def call(self, keys: list[bytes], arguments: list[bytes]) -> bytes:
        """The packed ``EVALSHA`` of this script on ``keys`` and ``arguments``."""
        parts = [b"%d" % len(keys), *keys, *arguments]
        return b"".join(
            [b"*%d\r\n" % (len(parts) + 2), self.head]
            + [b"$%d\r\n%b\r\n" % (len(part), part) for part in parts]
        )


def command(*parts: bytes) -> bytes:
    """The packed command made of ``parts`` (the name first)."""
    return b"".join(
        [b"*%d\r\n" % len(parts)] + [b"$%d\r\n%b\r\n" % (len(part), part) for part in parts]
    )


async def run(
    pool: Pool,
    last: bytes,
    *,
    before: Sequence[bytes] = (),
    replies_before: int = 0,
    script: Script | None = None,
) -> list[Any]:
    """Send the packed commands in ``before`` (``replies_before`` of them, in pieces that are
    written as they are: a large value need not be copied into its command first) and
    ``last`` in one write on one pooled connection; return each command's reply.

    An error reply is returned as its :class:`~redis.exceptions.ResponseError` (every reply
    is read, so the connection stays in step). When ``last`` is an ``EVALSHA`` of ``script``
    and finds the server without it (a restart, ``SCRIPT FLUSH``), the script is loaded and
    ``last`` sent again on the same connection: ``NOSCRIPT`` means it never ran. A connection
    error, a timeout or a cancellation disconnects the connection (redis-py's behaviour) and
    propagates.
    """
    connection = await pool.get_connection()
    try:
        results = await _exchange(connection, [*before, last], replies_before + 1)
        if script is not None and isinstance(results[-1], NoScriptError):
            load = command(b"SCRIPT", b"LOAD", script.text)
            loaded, results[-1] = await _exchange(connection, [load, last], 2)
            if isinstance(loaded, ResponseError):
                raise loaded
        if getattr(pool, "is_master", False):  # a Sentinel pool's primary
            await _check_primary(connection, results)
        return results
    finally:
        await pool.release(connection)


async def pipeline(
    pool: Pool,
    blocks: Iterable[tuple[Sequence[bytes], int]],
    *,
    window: int,
    kept: type | tuple[type, ...] = object,
) -> list[Any]:
    """Send ``blocks`` of packed commands (the pieces of each block, and how many replies it
    gets) on one pooled connection, one write per block, at most ``window`` blocks
    unanswered; return every reply that is an instance of ``kept`` (all by default), in order.

    A block is taken from ``blocks`` once the one before has been written, so the client
    builds the next block while the server runs the last. Replies and failures are as in
    :func:`run`: an error reply is returned as its exception; a timeout (one socket timeout
    per write, and per block's replies), a connection error or a cancellation disconnects the
    connection and propagates.
    """
    connection = await pool.get_connection()
    try:
        replies: list[Any] = []
        try:
            if not connection.is_connected:
                await connection.connect()
            parser, writer = connection._parser, connection._writer
            seconds = connection.socket_timeout
            unanswered: deque[int] = deque()
            for pieces, count in blocks:
                if len(unanswered) == window:
                    async with asyncio.timeout(seconds):
                        for _ in range(unanswered.popleft()):
                            reply = await parser.read_response()
                            if isinstance(reply, kept):
                                replies.append(reply)
                async with asyncio.timeout(seconds):
                    writer.writelines(pieces)
                    await writer.drain()
                unanswered.append(count)
            while unanswered:
                async with asyncio.timeout(seconds):
                    for _ in range(unanswered.popleft()):
                        reply = await parser.read_response()
                        if isinstance(reply, kept):
                            replies.append(reply)
        except BaseException as exc:
            lost = await _lost(connection, exc)
            if lost is exc:
                raise
            raise lost from None
        if getattr(pool, "is_master", False):
            await _check_primary(connection, replies)
        return replies
    finally:
        await pool.release(connection)


async def _check_primary(connection: Any, results: list[Any]) -> None:
    """Raise a lost connection when a Sentinel pool's primary answered READONLY (inside a
    transaction's reply too).

    That primary was demoted: its connection is dropped, so that the next one asks the
    sentinels again, as redis-py's SentinelManagedConnection does.
    """
    if any(
        isinstance(result, ReadOnlyError)
        or (isinstance(result, list) and any(isinstance(r, ReadOnlyError) for r in result))
        for result in results
    ):
        await connection.disconnect()
        raise RedisConnectionError("The previous master is now a slave")


async def _exchange(connection: Any, packed: list[bytes], count: int) -> list[Any]:
    """Write ``packed`` (``count`` commands) on ``connection`` and read their replies.

    One socket timeout covers the write and every reply, which redis-py's parser reads:
    redis-py's ``send_packed_command`` runs the write in a task of its own under
    ``asyncio.wait_for``, and its ``read_response`` sets up a timeout per reply, together
    about as many instructions as the rest of a save's client side. Its behaviour is kept:
    an error reply is returned, not raised (every reply is read, so the connection stays in
    step); a timeout, a connection error or a cancellation disconnects the connection (the
    next command must not read this one's late replies) and raises redis-py's exception.
    """
    try:
        if not connection.is_connected:  # dropped since the pool's checkout: as redis-py does
            await connection.connect()  # (a cancelled handshake is dropped below)
        parser, writer = connection._parser, connection._writer
        async with asyncio.timeout(connection.socket_timeout):
            writer.writelines(packed)
            await writer.drain()
            return [await parser.read_response() for _ in range(count)]
    except BaseException as exc:
        lost = await _lost(connection, exc)
        if lost is exc:
            raise
        raise lost from None


async def _lost(connection: Any, exc: BaseException) -> BaseException:
    """What to raise for ``exc``, met while talking on ``connection``: a timeout or a
    connection error as redis-py's exception, anything else (a cancellation) as itself. The
    connection is disconnected first: the next command must not read this one's late
    replies."""
    await connection.disconnect(nowait=True)
    if isinstance(exc, TimeoutError):
        return RedisTimeoutError(f"Timeout talking to {connection._host_error()}")
    if isinstance(exc, OSError):
        return RedisConnectionError(
            f"Error while talking to {connection._host_error()} : {exc.args}"
        )
    return exc


async def stream(
    pool: Pool,
    commands: Iterable[bytes],
    reply: Callable[[Any], object],
    *,
    window: int,
) -> None:
    """Send the packed ``commands`` one at a time on one pooled connection, at most ``window``
    of them unanswered, and hand each reply to ``reply`` in order (an error reply as its
    :class:`~redis.exceptions.ResponseError`).

    Each command is written out before the next one is taken from ``commands``, so a stream
    of pieces of a large document holds one piece at a time, in the client and in the
    server's reply buffer. A cancellation stops the stream between two commands: the one being
    written is finished and every reply outstanding is read, then
    :class:`asyncio.CancelledError` is raised. So once this returns or raises, no command of
    the stream can still reach the server (a ``DEL`` sent next is the last word on its keys).
    A lost connection propagates as in :func:`run`. A cancellation while the pool is still
    being waited for (nothing sent yet) is raised at once. The pieces go through redis-py's
    own ``send_packed_command`` and ``read_response`` (a socket timeout each): they are few
    and large, so what those cost per command does not show.
    """
    stopping = False
    checked_out = False

    async def send() -> None:
        nonlocal checked_out
        connection = await pool.get_connection()
        checked_out = True
        try:
            unanswered = 0
            for packed in commands:
                if stopping:
                    break
                if unanswered == window:
                    reply(await _reply(connection))
                    unanswered -= 1
                await connection.send_packed_command(packed)
                unanswered += 1
            for _ in range(unanswered):
                reply(await _reply(connection))
        except BaseException:
            await connection.disconnect(nowait=True)  # replies may be left unread
            raise
        finally:
            await pool.release(connection)

    task = asyncio.ensure_future(send())
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            cancelled = stopping = True
            if not checked_out:
                task.cancel()
    if cancelled:
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what the caller hears of
        raise asyncio.CancelledError
    task.result()


async def _reply(connection: Any) -> Any:
    try:
        return await connection.read_response()
    except ResponseError as error:  # read whole: the next reply is the next command's
        return error


async def read_values(pool: Pool, packed: bytes, *, piece: int) -> list[Value]:
    """Send ``packed``, one command whose reply is an array of strings (``MGET``), on one
    pooled connection and return that array: a string as ``bytes``, a missing one as
    ``None``, and a string not whole in one read of the stream (see :func:`_read_array`) as
    the list of its pieces, in order: the first holds at least its first :data:`HEAD` bytes,
    those read after it at most ``piece`` bytes each. Whoever takes a string in pieces joins
    what it needs of them, once: each string is copied once.

    redis-py's parser reads a string whole: the stream's buffer, the copy taken out of it and
    the reply, three times a large document. Here each piece is taken off the socket in turn
    (the stream's buffer holds at most its limit, 64 KiB), so a large document is held once,
    in pieces. With hiredis's parser, a reply whose first string is shorter than
    :data:`_PYTHON_FROM` is read by hiredis, whole (its C loop is cheaper on small strings);
    a longer one is read as without it: hiredis would copy each string twice more, into its
    buffer and out of it. An error reply is raised. One socket timeout covers the write and
    the reply, started afresh for each piece; a connection error, a timeout or a cancellation
    disconnects the connection and propagates, as in :func:`run`.
    """
    return await read_many_values(pool, [packed], piece=piece)


async def read_many_values(pool: Pool, commands: Sequence[bytes], *, piece: int) -> list[Value]:
    """:func:`read_values` of each of ``commands`` in turn, on one pooled connection, their
    arrays joined into one, in order.

    The commands are pipelined: as many are sent ahead, unanswered, as replies the size of
    the last one read fit in :data:`_AHEAD_BYTES` (at most :data:`_MOST_AHEAD`, and one until
    a reply is read), so the server runs the next while the client reads the last, and a
    batch of small records waits for one round trip instead of one per command; replies of
    large records are still asked for one at a time (the server holds one in its buffer).
    Each command is still one server call. The socket timeout starts afresh for each reply.
    An error reply is raised once every reply sent for is read (the connection stays usable).
    """
    connection = await pool.get_connection()
    try:
        try:
            if not connection.is_connected:
                await connection.connect()
            parser, writer = connection._parser, connection._writer
            seconds = connection.socket_timeout
            loop = asyncio.get_running_loop()
            values: list[Value] = []
            error: ResponseError | None = None
            total, sent, read, ahead = len(commands), 0, 0, 1
            async with asyncio.timeout(seconds) as deadline:
                while read < sent or (error is None and sent < total):
                    if error is None and sent - read < ahead and sent < total:
                        end = min(total, read + ahead)
                        writer.writelines(commands[sent:end])
                        sent = end
                        await writer.drain()
                    if isinstance(parser, _PythonParser):
                        reply = await _read_array(
                            _Buffered.of(parser), parser, deadline, seconds, piece
                        )
                    else:
                        reply = await _read_with_hiredis(parser, deadline, seconds, piece)
                    read += 1
                    if isinstance(reply, ResponseError):
                        error = error or reply
                    else:
                        values += reply
                        ahead = _ahead_for(reply, piece)
                    if seconds is not None:
                        deadline.reschedule(loop.time() + seconds)
        except BaseException as exc:
            lost = await _lost(connection, exc)
            if lost is exc:
                raise
            raise lost from None
        if error is not None:
            raise error
        return values
    finally:
        await pool.release(connection)


_AHEAD_BYTES = 1 << 20
"""Bytes of replies :func:`read_many_values` lets the server have ready, unread, at most (as
far as the last reply's size foretells the next ones')."""
_MOST_AHEAD = 16
"""Commands :func:`read_many_values` sends ahead at most."""


def _ahead_for(reply: list[Value], piece: int) -> int:
    """Commands to keep sent ahead after ``reply`` (see :func:`read_many_values`): a string
    read in pieces counts as ``piece`` bytes."""
    if _WHOLE.issuperset(map(type, reply)):  # the usual reply: summed in C, no frame per value
        size = sum(map(len, filter(None, reply)))
    else:
        size = sum(len(value) if type(value) is bytes else piece for value in reply if value)
    return max(1, min(_MOST_AHEAD, _AHEAD_BYTES // max(size, 1)))


_WHOLE = frozenset((bytes, type(None)))


Value = bytes | list[bytes | memoryview] | None
"""A string of :func:`read_values`' reply: whole, in pieces, or missing."""

HEAD = 1 << 12
"""Bytes of a string read in pieces that its first piece holds at least (all of a shorter
one): a document's header is read from it."""

# What the batch read takes off its stream at a time: the stream's own limit (asyncio's
# default), so that it holds at most that much besides a string being read in pieces.
_CHUNK = 1 << 16
# With hiredis, a reply whose first string is at least this long is read in Python (callgrind,
# batch loads): hiredis's two more copies of each string cost 195,000 instructions a 100 KB
# record, where the Python loop costs 5,300 a string more than hiredis (10 fields).
_PYTHON_FROM = 1 << 14


async def _read_with_hiredis(
    parser: Any, deadline: asyncio.Timeout, seconds: float | None, piece: int
) -> Any:
    """The array reply hiredis's ``parser`` is about to read (see :func:`read_values`).

    The stream's first read decides who parses it: hiredis (fed that read), or
    :func:`_read_array` when the reply's first string is :data:`_PYTHON_FROM` bytes or more.
    A reply hiredis already holds the start of (read with the one before it, when commands
    are pipelined: see :func:`read_many_values`) is read by hiredis, whatever its strings.

    That first read is as long as hiredis's own reads (``socket_read_size``, 32 KiB): a
    first read of 64 KiB made the peak RSS of a 100,000-record batch load of 10 fields 7.5
    times its JSON instead of 6.1 (``bench/rss.py``; the allocator's, not Python's, memory).
    """
    reader = parser._reader
    if reader.has_data():
        return await parser.read_response()
    first = await parser._stream.read(parser._read_size)
    if not first:
        raise RedisConnectionError("Connection closed by server.")
    if _first_length(first) < _PYTHON_FROM:
        reader.feed(first)
        return await parser.read_response()
    return await _read_array(
        _Buffered(parser._stream, first, reader.feed), parser, deadline, seconds, piece
    )


def _first_length(start: bytes) -> int:
    """The length of the first string of the array reply that ``start`` begins (missing
    strings skipped), or 0 when ``start`` does not show it."""
    position = start.find(b"\r\n") + 2
    if start[:1] != b"*" or position < 2:
        return 0
    while start.startswith(b"$-1\r\n", position):
        position += 5
    end = start.find(b"\r\n", position)
    if end < 0 or start[position : position + 1] != b"$":
        return 0
    try:
        return int(start[position + 1 : end])
    except ValueError:  # not RESP: hiredis's error says so
        return 0


async def _read_array(
    reader: _Buffered, parser: Any, deadline: asyncio.Timeout, seconds: float | None, piece: int
) -> Any:
    """The array reply ``reader`` is about to read (see :func:`read_values`), or its error
    (made by ``parser``).

    The reply is taken off the stream a buffer at a time (what the stream holds, up to its
    limit) and every value whole in the buffer is cut out of it in one loop: awaiting the
    parser's ``_readline`` and ``_read``, twice a value, cost more than the strings' parsing.
    A string not whole in the buffer comes as its pieces: what the buffer holds of it and the
    rest, read from the stream (in pieces of ``piece`` bytes, each given ``seconds`` afresh by
    ``deadline``, when it is longer than that). What follows the reply (nothing, or the start
    of the next one when commands are pipelined) is handed back to the parser.
    """
    line = await reader.line()
    if line[:1] == b"-":
        error = parser.parse_error(line[1:].decode("utf-8", errors="replace"))
        reader.leave()
        return error
    if line[:1] != b"*":
        raise InvalidResponse(f"Protocol Error: expected an array reply, got {line[:1]!r}")
    values: list[Any] = []
    append = values.append
    for _ in range(int(line[1:])):
        buffer, position = reader.buffer, reader.position
        end = buffer.find(b"\r\n", position)
        if end >= 0 and buffer[position] == 36:  # "$": a string, its length line buffered
            length = int(buffer[position + 1 : end])
            if length >= 0 and end + length + 4 <= len(buffer):  # the string and its CRLF
                start = end + 2
                append(buffer[start : start + length])
                reader.position = start + length + 2
                continue
        line = await reader.line()
        if line == b"$-1" or line == b"_":
            append(None)
            continue
        if line[:1] != b"$":
            raise InvalidResponse(f"Protocol Error: expected a string, got {line[:1]!r}")
        length = int(line[1:])
        await reader.hold(min(length, HEAD))
        if length <= piece:
            append(await reader.string(length))
        else:
            append(await reader.pieces(length, piece, deadline, seconds))
    reader.leave()
    return values


class _Buffered:
    """A stream read a buffer at a time (see :func:`_read_array`).

    Args:
        stream: The connection's stream.
        buffer: What was read from it already, to be read first.
        give_back: Takes what follows the reply, read from the stream meanwhile.
    """

    __slots__ = ("buffer", "give_back", "position", "stream")

    def __init__(
        self, stream: asyncio.StreamReader, buffer: bytes, give_back: Callable[[bytes], object]
    ) -> None:
        self.stream, self.buffer, self.give_back = stream, buffer, give_back
        self.position = 0

    @classmethod
    def of(cls, parser: Any) -> _Buffered:
        """The stream of redis-py's Python ``parser``, what it kept of an interrupted read
        first; what follows the reply is handed back to it."""
        buffer = parser._buffer[parser._pos :] + b"".join(parser._chunks)
        parser._clear()

        def give_back(rest: bytes) -> None:
            parser._buffer, parser._pos = rest, 0

        return cls(parser._stream, buffer, give_back)

    async def more(self) -> None:
        """Read what the stream holds (waiting for some) after what is left unread."""
        data = await self.stream.read(_CHUNK)
        if not data:
            raise RedisConnectionError("Connection closed by server.")
        self.buffer = self.buffer[self.position :] + data
        self.position = 0

    async def hold(self, length: int) -> None:
        """Read until the buffer holds ``length`` bytes after what is read."""
        while len(self.buffer) - self.position < length:
            await self.more()

    async def line(self) -> bytes:
        """The next line, without its CRLF."""
        while (end := self.buffer.find(b"\r\n", self.position)) < 0:
            await self.more()
        line = self.buffer[self.position : end]
        self.position = end + 2
        return line

    def held(self, length: int) -> bytes | memoryview:
        """What the buffer holds of the next ``length`` bytes: a view of it when that is most
        of it, else a copy (a view keeps the whole buffer alive as long as the string)."""
        position = self.position
        if position <= len(self.buffer) // 2:
            return memoryview(self.buffer)[position : position + length]
        return self.buffer[position : position + length]

    async def string(self, length: int) -> bytes | list[bytes | memoryview]:
        """The next ``length`` bytes, followed by a CRLF that is skipped: as ``bytes`` when
        the buffer holds them, else as two pieces, what it holds and the rest (each string
        is then copied once, where whoever takes it joins what it needs of them)."""
        missing = self.position + length + 2 - len(self.buffer)
        if missing <= 0:
            value = self.buffer[self.position : self.position + length]
            self.position += length + 2
            return value
        try:
            rest = await self.stream.readexactly(missing)
        except asyncio.IncompleteReadError:
            raise RedisConnectionError("Connection closed by server.") from None
        # The buffer may end inside the CRLF (missing: 1), as well as before it or inside
        # the string: the string's bytes in ``rest`` are those before its last two.
        more = max(missing - 2, 0)
        if self.buffer[self.position + length :] + rest[more:] != b"\r\n":
            raise InvalidResponse("Protocol Error: a string not followed by CRLF")
        head = self.held(length)
        self.buffer, self.position = b"", 0
        return [head, memoryview(rest)[:more]] if more else [head]

    async def pieces(
        self, length: int, piece: int, deadline: asyncio.Timeout, seconds: float | None
    ) -> list[bytes | memoryview]:
        """The next ``length`` bytes as pieces of at most ``piece`` bytes, followed by a
        CRLF that is skipped: what the buffer holds of them first, the rest from the stream,
        ``seconds`` given afresh to ``deadline`` for each piece."""
        head = self.held(length)
        pieces: list[bytes | memoryview] = [head] if head else []
        read = len(head)
        self.position += len(head)
        loop = asyncio.get_running_loop()
        try:
            while read < length:
                if seconds is not None:
                    deadline.reschedule(loop.time() + seconds)
                pieces.append(await self.stream.readexactly(min(piece, length - read)))
                read += len(pieces[-1])
        except asyncio.IncompleteReadError:
            raise RedisConnectionError("Connection closed by server.") from None
        while len(self.buffer) - self.position < 2:
            await self.more()
        if self.buffer[self.position : self.position + 2] != b"\r\n":
            raise InvalidResponse("Protocol Error: a string not followed by CRLF")
        self.position += 2
        return pieces

    def leave(self) -> None:
        """Hand what follows the reply back to the parser, for its next reply."""
        self.give_back(self.buffer[self.position :])
