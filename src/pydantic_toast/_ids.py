"""New record ids: random (version 4) UUIDs with their text, made a batch at a time.

A UUID made one at a time, then ``str()``, cost a save about 14,700 instructions and a
``getrandom`` system call: its text is sliced and formatted in Python. Here one ``os.urandom``
call (the source ``uuid4()`` reads) fills :data:`_BATCH` ids at once, their version and
variant bits set in one operation on the whole buffer and their texts spelled out in one
``bytearray``, the UUIDs made and filled by maps in C; :func:`new_id` then hands them out one
by one (about 6,800 instructions per id, made and handed out, where a loop in Python making
the UUIDs took 7,800).

The ids waiting to be handed out are never shared:

* each thread has its own (a ``threading.local``): two threads never take the same one, even
  where iterators are not atomic (free-threaded Python);
* a process made by ``os.fork()`` forgets its parent's (``os.register_at_fork``), so a child
  never hands out an id its parent also will.
"""

from __future__ import annotations

import binascii
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import repeat
from uuid import UUID, SafeUUID

__all__ = ["new_id"]

NewId = tuple[UUID, str]
"""A new id and its text, ``str(id)``."""

_BATCH = 128
"""Ids made per ``os.urandom`` call: 2 KiB of randomness, about 20 KiB of ids per thread."""

_ID_BITS = (1 << 128) - 1
_VERSION_BITS = 0xF000 << 64 | 0xC000 << 48
_VERSION_4 = 0x4000 << 64 | 0x8000 << 48  # version 4, RFC 4122 variant
# The masks of a whole batch: every 16 bytes of the buffer, as one integer.
_KEEP = int.from_bytes((_ID_BITS & ~_VERSION_BITS).to_bytes(16) * _BATCH)
_SET = int.from_bytes(_VERSION_4.to_bytes(16) * _BATCH)

# An id's text is its 32 hex digits in groups of 8-4-4-4-12. hexlify() writes a batch's digits
# in groups of 4 with a hyphen after each (40 characters an id, the last one's hyphen left out);
# the hyphens at these places within an id's 40 are then dropped, and the last becomes the
# newline that split() cuts the batch's text at.
_DROPPED = (4, 29, 34)
_ENDS = 39
_SLICES = [slice(at, at + 16) for at in range(0, 16 * _BATCH, 16)]  # each id's 16 bytes
# Runs an iterator to its end, keeping nothing.
_exhaust: Callable[[Iterable[object]], None] = deque[object](maxlen=0).extend

_new_object = object.__new__
# The slots UUID.__init__ sets, through their own setters (no argument checks, no name lookup).
_set_int = UUID.__dict__["int"].__set__
_set_is_safe = UUID.__dict__["is_safe"].__set__
_UNKNOWN_SAFETY = SafeUUID.unknown


class _Waiting(threading.local):
    """The ids made for this thread and not handed out yet (each thread sees its own)."""

    ids: Iterator[NewId] = iter(())


_waiting = _Waiting()


def new_id() -> NewId:
    """A new random id (as ``uuid.uuid4()``) and its text (as ``str()``)."""
    made = next(_waiting.ids, None)
    if made is None:
        _waiting.ids = ids = _batch()
        made = next(ids)
    return made


def _batch() -> Iterator[NewId]:
    """:data:`_BATCH` new ids from one read of the system's random source."""
    size = 16 * _BATCH
    raw = (int.from_bytes(os.urandom(size)) & _KEEP | _SET).to_bytes(size)
    texts = bytearray(binascii.hexlify(raw, b"-", 2))
    for at in _DROPPED:
        texts[at::40] = b"_" * _BATCH
    texts[_ENDS::40] = b"\n" * (_BATCH - 1)
    spelled = texts.translate(None, b"_").decode().split()
    ids = list(map(_new_object, repeat(UUID, _BATCH)))
    _exhaust(map(_set_int, ids, map(int.from_bytes, map(raw.__getitem__, _SLICES))))
    _exhaust(map(_set_is_safe, ids, repeat(_UNKNOWN_SAFETY, _BATCH)))
    return zip(ids, spelled, strict=True)


def _forget() -> None:
    """In a forked child: drop the ids copied from the parent (the parent hands them out)."""
    global _waiting
    _waiting = _Waiting()


os.register_at_fork(after_in_child=_forget)
