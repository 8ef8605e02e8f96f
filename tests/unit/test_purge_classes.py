"""The purge's walk over the classes (sql.purge_classes): lists, cursor, limits."""

from __future__ import annotations

from pydantic_toast.backends.sql import CLASSES_AT_ONCE, purge_classes


class ExpiredRows:
    """Expired rows per class, listed and deleted as the two SQL statements do."""

    def __init__(self, rows: dict[str, int]) -> None:
        self.rows = rows
        self.lists: list[tuple[str, int]] = []
        self.purges: list[tuple[str, int]] = []

    async def expired_classes(self, from_class: str, limit: int) -> list[str]:
        self.lists.append((from_class, limit))
        assert len(self.lists) < 10, "listing again and again"
        found = [name for name in sorted(self.rows) if name >= from_class and self.rows[name]]
        return found[:limit]

    async def purge(self, class_name: str, limit: int) -> int:
        self.purges.append((class_name, limit))
        deleted = min(limit, self.rows[class_name])
        self.rows[class_name] -= deleted
        return deleted


async def test_nothing_expired_is_one_list_and_no_delete() -> None:
    """With no expired row, the purge runs the listing once and no DELETE."""
    store = ExpiredRows({"A": 0, "B": 0})
    assert await purge_classes(store.expired_classes, store.purge, 1000) == 0
    assert store.lists == [("", CLASSES_AT_ONCE)]
    assert store.purges == []


async def test_classes_are_listed_a_hundred_at_a_time_from_the_last_one() -> None:
    """250 classes of two expired rows: three lists, each from the last class of the one
    before, and every row deleted with one DELETE per class."""
    store = ExpiredRows({f"K{i:03d}": 2 for i in range(250)})
    assert await purge_classes(store.expired_classes, store.purge, 1000) == 500
    assert store.lists == [("", 100), ("K099", 100), ("K199", 100)]
    assert len(store.purges) == 250
    assert not any(store.rows.values())


async def test_the_limit_stops_mid_class_and_bounds_each_delete() -> None:
    """Each DELETE asks for what is left of the limit; a class emptied with fewer rows than
    asked hands over to the next; the purge stops at the limit, mid-class."""
    store = ExpiredRows({"A": 3, "B": 10, "C": 4})
    assert await purge_classes(store.expired_classes, store.purge, 7) == 7
    assert store.lists == [("", 7)]
    assert store.purges == [("A", 7), ("B", 4)]
    assert store.rows == {"A": 0, "B": 6, "C": 4}


async def test_a_class_renewed_meanwhile_does_not_stop_the_others() -> None:
    """A listed class whose rows were renewed before its DELETE (0 deleted) is passed over:
    the next classes are purged."""
    store = ExpiredRows({"A": 1, "B": 2})
    listed = store.expired_classes

    async def renewed_after_listing(from_class: str, limit: int) -> list[str]:
        classes = await listed(from_class, limit)
        store.rows["A"] = 0  # renewed by a concurrent write
        return classes

    assert await purge_classes(renewed_after_listing, store.purge, 10) == 2
    assert store.purges == [("A", 10), ("B", 10)]


async def test_a_list_whose_classes_give_nothing_ends_the_purge() -> None:
    """A full list whose classes all turn out empty when deleted (another purge took them)
    ends the purge instead of listing the same classes forever."""
    store = ExpiredRows({"A": 1})

    async def purged_elsewhere(class_name: str, limit: int) -> int:
        store.purges.append((class_name, limit))
        return 0  # the listing still sees A's row, the DELETE finds it gone

    assert await purge_classes(store.expired_classes, purged_elsewhere, 1) == 0
    assert store.lists == [("", 1)]
