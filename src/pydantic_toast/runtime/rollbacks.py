"""Saves made in a caller's transaction, forgotten by their models if it rolls back.

A model saved inside :func:`~pydantic_toast.transaction` remembers the save at once (its
identity: revision, JSON, fingerprint), but the record exists only once the caller commits.
Rolled back, the model must be as before the save, or saving it again would take it for
stored and unchanged and write nothing. :class:`Saves` follows one SQLAlchemy connection's
transaction through its events, registered once per connection: a commit keeps every save, a
rollback forgets every save, and a rollback to a savepoint forgets the saves made since that
savepoint began (the library's own savepoints, around a batch, included). Work that must wait
for the commit (noting a write for read-your-writes) is handed to :meth:`Saves.after_commit`.

SQLAlchemy tells of a commit before it sends it. Whether the COMMIT then failed (a deferred
constraint, a lost connection) is noted through the engine's ``handle_error`` event, which
runs before the transaction is marked inactive: see :meth:`Saves.commit_failed`.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import Connection

__all__ = ["Saves", "saves_on"]


class Saves:
    """The saves made through one connection since its transaction began.

    Savepoints nest: the one released or rolled back is always the innermost open one. (The
    event that a savepoint began does not carry its name, which SQLAlchemy makes later.)

    Attributes:
        entries: Each saved model, its identity before the save, and the savepoints open
            then (outermost first).
        savepoints: The savepoints open now, outermost first, each a marker of its own.
        before: Whether a savepoint was open when the connection was first joined: a
            rollback to a savepoint this object never saw begin forgets every save.
        commit_callbacks: What runs when the transaction commits (see :meth:`after_commit`),
            each with the savepoints open when it was handed over (outermost first).
    """

    __slots__ = ("before", "commit_callbacks", "committing", "entries", "failed", "savepoints")

    def __init__(self, before: bool) -> None:
        # The transaction whose COMMIT was last told of, weakly: it holds its connection, the
        # key of this object in _SAVES, which would then never be let go of.
        self.committing: weakref.ref[Any] | None = None
        self.failed: weakref.WeakSet[Any] = weakref.WeakSet()  # those whose COMMIT raised
        self.entries: list[tuple[Any, Any, tuple[object, ...], str]] = []
        self.savepoints: list[object] = []
        self.before = before
        self.commit_callbacks: list[tuple[Callable[[], None], tuple[object, ...]]] = []

    def remember(self, model: Any, identity: Any, slot: str = "_toast_identity") -> None:
        """Note that ``model`` was saved; ``identity`` is what it held before (in ``slot``:
        ``_toast_owner`` for the parent an owned child belonged to)."""
        self.entries.append((model, identity, tuple(self.savepoints), slot))

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the transaction commits (never if it rolls back, nor if a
        savepoint open now rolls back).

        SQLAlchemy tells of a commit before it is sent: ``callback`` runs then, so it must not
        do what a failed commit would make wrong (see docs/backends/postgresql.md).
        """
        self.commit_callbacks.append((callback, tuple(self.savepoints)))

    def committed(self, connection: Connection) -> None:
        """The transaction commits: every save stays, and the commit callbacks run (before
        the COMMIT is sent: see :meth:`commit_failed`)."""
        callbacks = self.commit_callbacks
        self._end()
        transaction = connection.get_transaction()
        self.committing = None if transaction is None else weakref.ref(transaction)
        for callback, _ in callbacks:
            callback()

    def errored(self, connection: Connection) -> None:
        """An error on the connection: the COMMIT under way, if any, failed."""
        committing = None if self.committing is None else self.committing()
        if committing is not None and committing.is_active:
            self.failed.add(committing)

    def commit_failed(self, transaction: object) -> bool:
        """Whether the COMMIT of ``transaction`` (once it is no longer active) failed."""
        return transaction in self.failed

    def rolled_back(self, *_: Any) -> None:
        """The transaction rolled back: every model forgets its save."""
        self._forget(self.entries)
        self._end()

    def _end(self) -> None:
        self.entries = []
        self.savepoints = []
        self.commit_callbacks = []
        self.before = False

    def began(self, *_: Any) -> None:
        """A savepoint began."""
        self.savepoints.append(object())

    def released(self, *_: Any) -> None:
        """The innermost savepoint was released: its saves belong to the one around it."""
        if self.savepoints:
            self.savepoints.pop()

    def rolled_back_to(self, *_: Any) -> None:
        """The innermost savepoint was rolled back: the saves made since it began are
        forgotten."""
        if self.savepoints:
            marker = self.savepoints.pop()
            undone = [entry for entry in self.entries if marker in entry[2]]
            self.entries = [entry for entry in self.entries if marker not in entry[2]]
            self.commit_callbacks = [
                (callback, open_then)
                for callback, open_then in self.commit_callbacks
                if marker not in open_then
            ]
        elif self.before:  # begun before this connection was joined: every save is in it
            undone, self.entries = self.entries, []
            self.commit_callbacks = []
        else:
            return
        self._forget(undone)

    @staticmethod
    def _forget(entries: list[tuple[Any, Any, tuple[object, ...], str]]) -> None:
        for model, identity, _, slot in reversed(entries):  # saved twice: its first state
            object.__setattr__(model, slot, identity)


_SAVES: weakref.WeakKeyDictionary[Connection, Saves] = weakref.WeakKeyDictionary()


def saves_on(connection: Connection) -> Saves:
    """The :class:`Saves` of ``connection`` (a sync SQLAlchemy connection), listening to its
    transaction's events from the first call on (one set of listeners per connection)."""
    saves = _SAVES.get(connection)
    if saves is None:
        from sqlalchemy import event

        saves = _SAVES[connection] = Saves(connection.get_nested_transaction() is not None)
        event.listen(connection, "commit", saves.committed)
        event.listen(connection, "rollback", saves.rolled_back)
        event.listen(connection, "savepoint", saves.began)
        event.listen(connection, "release_savepoint", saves.released)
        event.listen(connection, "rollback_savepoint", saves.rolled_back_to)
        engine = connection.engine
        if engine not in _WATCHED_ENGINES:  # (SQLAlchemy takes handle_error per engine only)
            # After the application's own listeners (SQLAlchemy keeps them first): one that
            # raises stops the ones after it, and a failed COMMIT then goes unnoticed here.
            event.listen(engine, "handle_error", _errored)
            _WATCHED_ENGINES.add(engine)
    return saves


_WATCHED_ENGINES: weakref.WeakSet[Any] = weakref.WeakSet()


def _errored(context: Any) -> None:
    saves = _SAVES.get(context.connection) if context.connection is not None else None
    if saves is not None:
        saves.errored(context.connection)
