"""Saving inside the caller's SQLAlchemy transaction: :func:`transaction`.

Inside ``async with pydantic_toast.transaction(session_or_connection):`` every statement the
SQL backends run on the same database (PostgreSQL: host, port and database; SQLite: the file)
runs on that connection, in its transaction, so the application's own rows and the external
records commit or roll back together. Stores on other databases are written as usual.

A model saved inside the block forgets the save if the transaction, or a savepoint begun before
the save, rolls back (:mod:`.rollbacks`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Hashable, Iterable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic_toast._exceptions import ExternalStorageError, StorageUsageError
from pydantic_toast.runtime.rollbacks import Saves, saves_on

if TYPE_CHECKING:
    from sqlalchemy import URL
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

__all__ = [
    "Joined",
    "after_commit",
    "current_transaction",
    "delete_after_commit",
    "joined_connection",
    "joined_save",
    "outside",
    "statement_connection",
    "transaction",
    "written_again",
]


@dataclass(frozen=True, slots=True)
class Joined:
    """The caller's connection, the event loop it belongs to, and the saves made through it.

    Attributes:
        connection: The caller's connection.
        loop: Its event loop.
        saves: What its models forget if its transaction rolls back (see :mod:`.rollbacks`).
        session: The caller's session, when it handed one: its connection is asked for again
            before each statement (see :func:`statement_connection`).
        asking: Held while the session is asked: a session refuses a second task asking
            while the first one's SAVEPOINT is on its way.
    """

    connection: AsyncConnection
    loop: asyncio.AbstractEventLoop
    saves: Saves
    session: AsyncSession | None = None
    asking: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Records of stores outside the transaction whose deletes wait for its commit; a save in
    # it that writes one again takes it off (see delete_after_commit).
    doomed: dict[Hashable, Any] = field(default_factory=dict)


logger = logging.getLogger("pydantic_toast")

K = TypeVar("K", bound=Hashable)

_joined: ContextVar[Joined | None] = ContextVar("pydantic_toast_transaction", default=None)


@asynccontextmanager
async def transaction(target: AsyncConnection | AsyncSession) -> AsyncIterator[AsyncConnection]:
    """Make saves, loads and deletes on the same database join ``target``'s transaction.

    ``target`` is an ``AsyncConnection`` or an ``AsyncSession`` (its connection, beginning its
    transaction if none is open). The caller commits or rolls back as usual; the records
    written inside the block follow::

        async with session.begin():
            session.add(Invoice(number=42))
            async with pydantic_toast.transaction(session):
                await order.asave()   # committed, or rolled back, with the invoice

    Only the async API joins: a blocking call (``model_dump``) inside the block raises
    :class:`~pydantic_toast.StorageUsageError` for stores on that database, since it would
    run on another event loop.

    Yields:
        The connection the statements run on.
    """
    from sqlalchemy.ext.asyncio import AsyncSession

    session = target if isinstance(target, AsyncSession) else None
    connection = target if not isinstance(target, AsyncSession) else await target.connection()
    if connection.sync_connection is None:
        raise StorageUsageError(
            "pydantic_toast.transaction() was given a connection that is not open: pass it "
            "inside `async with engine.connect() as connection:` (or engine.begin())"
        )
    saves = saves_on(connection.sync_connection)
    token = _joined.set(Joined(connection, asyncio.get_running_loop(), saves, session))
    try:
        yield connection
    finally:
        _joined.reset(token)


current_transaction: Callable[[], Joined | None] = _joined.get
"""The open :func:`transaction` here, if any: a save outside one (nearly every save) asks no
more (:func:`joined_save` and :func:`written_again` each read it again, through a call of
their own)."""


def joined_save(backend: object) -> Saves | None:
    """The saves of the open :func:`transaction` a save through ``backend`` runs in, if any
    (only the SQL backends join one, on their own database)."""
    joined = _joined.get()
    if joined is None:
        return None
    same_store: Callable[[URL], bool] | None = getattr(backend, "_same_store", None)
    if same_store is None or not same_store(joined.connection.engine.url):
        return None
    return joined.saves


def joined_connection(same_store: Callable[[URL], bool]) -> AsyncConnection | None:
    """The caller's connection, if a :func:`transaction` is open on a store ``same_store`` accepts.

    Args:
        same_store: Whether the connection's engine URL reaches the backend's own store.

    Raises:
        StorageUsageError: The transaction's connection belongs to another event loop (a
            blocking call was made inside ``transaction()``).
    """
    joined = _joined.get()
    if joined is None or not same_store(joined.connection.engine.url):
        return None
    if joined.loop is not asyncio.get_running_loop():
        raise StorageUsageError(
            "a blocking call (model_dump, model_validate, ...) was made inside "
            "pydantic_toast.transaction(): it cannot run on the transaction's connection; "
            "use the async API (await obj.asave(), await Model.aload(...)) inside the block"
        )
    if joined.connection.closed:
        # A session's commit() or rollback() releases the connection it handed out: its
        # statements failed as "the backend failed during save with ResourceClosedError".
        raise _closed()
    return joined.connection


async def statement_connection(
    same_store: Callable[[URL], bool],
    *,
    before_savepoint: Callable[[AsyncConnection], Awaitable[None]] | None = None,
) -> AsyncConnection | None:
    """The connection a statement on a store ``same_store`` accepts runs on: the caller's,
    inside a :func:`transaction` on that store (else ``None``).

    A session is asked for its connection first: ``session.begin_nested()`` begins its
    savepoint only at the session's next use, so a statement run on the connection without
    asking ran before the SAVEPOINT, and rolling the savepoint back kept its write.

    Args:
        same_store: Whether the connection's engine URL reaches the backend's own store.
        before_savepoint: Awaited, inside a session's nested transaction, before the session
            is asked (SQLite begins the outer transaction there: see its backend).

    Raises:
        StorageUsageError: See :func:`joined_connection`; or the session refuses to be used
            (it waits for a rollback after a failed flush).
    """
    connection = joined_connection(same_store)
    if connection is None:
        return None
    joined = _joined.get()
    assert joined is not None
    session = joined.session
    if session is not None:
        from sqlalchemy.exc import InvalidRequestError

        async with joined.asking:
            if before_savepoint is not None and session.in_nested_transaction():
                await before_savepoint(connection)
            try:
                current = await session.connection()  # emits the SAVEPOINT of a begin_nested()
            except InvalidRequestError as exc:
                raise StorageUsageError(
                    "the session of this pydantic_toast.transaction() block refused the "
                    f"statement ({type(exc).__name__}): after a failed flush, roll the session "
                    "back (await session.rollback()) before saving or loading again; and use "
                    "one session from one task at a time"
                ) from exc
        if current.sync_connection is not connection.sync_connection:
            raise _closed()
    return connection


def _closed() -> StorageUsageError:
    return StorageUsageError(
        "the connection of this pydantic_toast.transaction() block is closed (a session's "
        "commit() or rollback() inside the block releases it): commit or roll back after "
        "the block, or open a new transaction() block after the commit"
    )


def outside(backend: object) -> bool:
    """Whether a :func:`transaction` is open and ``backend``'s store is not in it."""
    return _joined.get() is not None and joined_save(backend) is None


_after_commit_tasks: set[asyncio.Task[Any]] = set()


def after_commit(work: Callable[[], Coroutine[Any, Any, object]], *, left: str) -> None:
    """Run ``work()`` on the open :func:`transaction`'s event loop once it commits; never if
    it rolls back.

    It runs as a task of its own, outside the transaction. A storage error it raises is logged
    as a warning naming ``left``, what the failure leaves behind (found later as orphans).
    """
    joined = _joined.get()
    if joined is None:
        raise StorageUsageError("after_commit() is for work inside pydantic_toast.transaction()")

    async def run(committing: object) -> None:
        try:
            await committed_work(committing)
        except ExternalStorageError as exc:
            notes = "".join(f"; {note}" for note in getattr(exc, "__notes__", ()))
            logger.warning(
                "work after a transaction's commit failed, %s left: %s%s", left, exc, notes
            )
        except asyncio.CancelledError:  # the loop is ending (asyncio.run, a server's shutdown)
            logger.warning(
                "work waiting for a transaction's commit was cancelled: records it would have "
                "deleted (owned children, offloaded payloads on another store) are left; "
                "find_orphans() and find_orphaned_payloads() find them"
            )
            raise

    async def committed_work(committing: object) -> None:
        _joined.set(None)  # the task's own copy of the context: outside the transaction
        pause = 0.001
        while getattr(committing, "is_active", False):  # its COMMIT is still on its way
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)
        if joined.saves.commit_failed(committing):
            logger.warning(
                "the transaction's COMMIT failed: the records it would have let go of "
                "(owned children, offloaded payloads on another store) are kept"
            )
            return
        await work()

    def start() -> None:
        committing = joined.saves.committing
        task = joined.loop.create_task(run(None if committing is None else committing()))
        _after_commit_tasks.add(task)  # kept alive until it ends
        task.add_done_callback(_after_commit_tasks.discard)

    joined.saves.after_commit(start)


def delete_after_commit(
    records: dict[K, Any],
    delete: Callable[[dict[K, Any]], Coroutine[Any, Any, object]],
    *,
    left: str,
) -> None:
    """Once the open :func:`transaction` commits, ``delete`` those of ``records`` that no save
    in it has written again since (see :func:`written_again`), as :func:`after_commit` runs
    work.

    An owned child dropped by its parent inside the transaction, then stored again (moved to
    another parent, or written with ``force=True``), must not be deleted by the commit.
    """
    joined = _joined.get()
    if joined is None:
        raise StorageUsageError("delete_after_commit() is for work inside transaction()")
    joined.doomed.update(records.items())
    doomed = joined.doomed

    def still_doomed() -> Coroutine[Any, Any, object]:
        return delete({key: value for key, value in records.items() if key in doomed})

    after_commit(still_doomed, left=left)


def written_again(keys: Callable[[], Iterable[Hashable]]) -> None:
    """Take the records ``keys()`` names (just written) off the deletes waiting for the open
    transaction's commit (see :func:`delete_after_commit`); called only when some wait."""
    joined = _joined.get()
    if joined is not None and joined.doomed:
        for key in keys():
            joined.doomed.pop(key, None)


async def finish_after_commit(seconds: float) -> None:
    """Wait, at most ``seconds``, for the running loop's work waiting for commits
    (see :func:`after_commit`): closing the storage first would cancel it."""
    loop = asyncio.get_running_loop()
    pending = [task for task in _after_commit_tasks if task.get_loop() is loop]
    if pending:
        await asyncio.wait(pending, timeout=seconds)
