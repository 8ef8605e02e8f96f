"""New record ids: random version-4 UUIDs with their text, never handed out twice."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from pydantic_toast import _ids
from pydantic_toast._ids import new_id

# More than one batch: ids from fresh batches and from the middle of one.
MANY = 3 * _ids._BATCH + 5


def test_new_ids_are_version_4_uuids_spelled_as_str_spells_them() -> None:
    """Each id is what uuid.uuid4() makes (version 4, RFC 4122 variant, safety unknown) and
    its text is exactly str(id)."""
    made = [new_id() for _ in range(MANY)]
    for id, text in made:
        assert type(id) is uuid.UUID
        assert (id.version, id.variant, id.is_safe) == (4, uuid.RFC_4122, uuid.SafeUUID.unknown)
        assert text == str(id)
        assert uuid.UUID(text) == id
    assert len({id for id, _ in made}) == MANY


def test_new_ids_use_every_random_bit_but_the_version_and_variant() -> None:
    """Across many ids, each of the 122 random bits is seen both set and clear, and the six
    fixed bits never vary: no bit is lost in the batch's layout."""
    values = [id.int for id, _ in (new_id() for _ in range(MANY))]
    ever_set = ever_clear = 0
    for value in values:
        ever_set |= value
        ever_clear |= ~value & ((1 << 128) - 1)
    fixed = 0xF000 << 64 | 0xC000 << 48
    assert ever_set & ever_clear == ((1 << 128) - 1) & ~fixed


def test_threads_never_take_the_same_id() -> None:
    """Eight threads taking ids at once: no id is handed out twice."""
    taken: list[list[uuid.UUID]] = [[] for _ in range(8)]
    start = threading.Barrier(len(taken))

    def take(into: list[uuid.UUID]) -> None:
        start.wait()
        into.extend(new_id()[0] for _ in range(MANY))

    threads = [threading.Thread(target=take, args=(into,)) for into in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    every = [id for into in taken for id in into]
    assert len(every) == len(taken) * MANY
    assert len(set(every)) == len(every)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork only")
def test_a_forked_child_never_hands_out_its_parents_ids() -> None:
    """The parent has ids waiting when it forks: the child makes its own, so the ids both
    hand out next never meet (without the fork hook, the child repeats the parent's)."""
    new_id()  # the rest of a batch now waits in this thread
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its ids, and leave at once
        try:
            os.close(reading)
            texts = "\n".join(new_id()[1] for _ in range(MANY)).encode()
            with os.fdopen(writing, "wb") as pipe:
                pipe.write(texts)
        finally:
            os._exit(0)
    os.close(writing)
    with os.fdopen(reading, "rb") as pipe:
        child = set(pipe.read().decode().split())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    parent = {new_id()[1] for _ in range(MANY)}
    assert len(child) == MANY
    assert not child & parent
