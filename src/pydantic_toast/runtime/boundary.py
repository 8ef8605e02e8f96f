"""The boundary to the stores: every call into a backend goes through :class:`Connected`.

Here, and only here, a call into a backend

* has its exceptions translated into the library's (:mod:`pydantic_toast.runtime.errors`),
  chained to a data-free summary of the driver's exception, and logged;
* is retried once when the connection was lost, if repeating it cannot change the outcome:
  a read always; a write (save, delete, purge) only when it failed before its request could
  reach the store (opening or checking out a connection). A read given a
  :class:`~pydantic_toast.runtime.backoff.Backoff` (reading back a save, below) is tried
  again after a pause while the store is busy or cannot be reached, until its time is up.
  A save lost after it was sent, or whose reply did not come within the timeout (the server
  may have applied it), is settled by reading its records back
  (:mod:`pydantic_toast.runtime.outcomes`); a delete or purge then raises
  :class:`~pydantic_toast.OutcomeUnknownError`. So a save never reports a conflict with its
  own first attempt, and a delete never reports "not found" because its first attempt had
  committed;
* is measured for telemetry, when telemetry is on (:mod:`pydantic_toast.runtime.telemetry`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterator, Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Literal, NoReturn, TypeVar
from uuid import UUID

from pydantic_toast._exceptions import (
    ConcurrencyError,
    ExternalStorageError,
    StorageBusyError,
    StorageConfigurationError,
    StorageOperationError,
)
from pydantic_toast._records import (
    PageCursor,
    RecordKey,
    StoredRecord,
    check_once_each,
    check_timestamps,
)
from pydantic_toast.backends.base import Capability, checks_created_at_on_delete
from pydantic_toast.runtime import outcomes, telemetry
from pydantic_toast.runtime.errors import (
    NOT_APPLIED,
    Failure,
    summary,
    translate,
    unanswered,
    unsent,
)
from pydantic_toast.runtime.transaction import joined_save

if TYPE_CHECKING:
    from pydantic_toast._url import StorageURL
    from pydantic_toast.backends.base import StorageBackend
    from pydantic_toast.runtime.backoff import Backoff

__all__ = [
    "Connected",
    "check_url",
    "connecting",
    "ended_unknown",
    "not_applied",
    "open_backend",
    "store_identity",
]

T = TypeVar("T")

Repeat = Literal["read", "write", "never"]
"""How a call may be repeated after a lost connection: ``read`` always (once), ``write`` only
when its request was never sent, ``never`` not at all (connecting, closing)."""

logger = logging.getLogger("pydantic_toast")

_CONNECTING = "_pydantic_toast_connecting"
_ENDED = "_pydantic_toast_ended"
_LOGGED = "_pydantic_toast_logged"  # on a library error the boundary has logged already
_BUILT_IN = "pydantic_toast.backends."
_INTERFACE = "pydantic_toast.backends.base"  # StorageBackend, RecordBackend: not a store


def connecting(exc: BaseException) -> BaseException:
    """Mark ``exc`` as raised while opening a connection (a timeout then means "connect").

    Backends call it on errors from their pool's connection step and re-raise::

        except Exception as exc:
            raise connecting(exc)
    """
    with contextlib.suppress(AttributeError):  # exceptions without a __dict__ stay unmarked
        setattr(exc, _CONNECTING, True)
    return exc


def not_applied(exc: BaseException) -> BaseException:
    """Mark ``exc``, a timeout after a write was sent, as one the store is known not to have
    applied (the backend waited for the store to finish the request and read the record back):
    it is then an ordinary timeout, safe to retry, not a write to settle by reading back.

    Backends call it on the timeout they re-raise::

        except TimeoutError as exc:
            raise not_applied(exc)
    """
    with contextlib.suppress(AttributeError):
        setattr(exc, NOT_APPLIED, True)
    return exc


def ended_unknown(exc: BaseException, found: str) -> BaseException:
    """Mark ``exc``, a timeout after a write was sent, as one whose write has ended since (the
    backend waited for the store to finish the request): applied or not, it cannot apply
    later, but what the backend ``found`` then could not tell which. The write stays
    unsettled (:class:`~pydantic_toast.OutcomeUnknownError`, not read back), and its message
    says ``found`` instead of "it may still apply".

    Backends call it on the timeout they re-raise::

        except TimeoutError as exc:
            raise ended_unknown(exc, "the delete has ended since, and the record is gone")
    """
    with contextlib.suppress(AttributeError):
        setattr(exc, _ENDED, found)
    return exc


def check_url(
    backend_class: type[StorageBackend], url: StorageURL, class_name: str | None = None
) -> None:
    """Run ``backend_class``'s ``check_url`` hook on ``url`` (and ``check_class_name`` on
    ``class_name``, when given), as a model class is defined.

    Raises:
        StorageConfigurationError: A hook refused, or failed with an exception of its own
            (a ``float()`` of a junk option): named with the backend and the masked URL, the
            exception summarized (its message may hold the URL's password).
    """

    def hooks() -> None:
        backend_class.check_url(url)
        if class_name is not None:
            backend_class.check_class_name(class_name)

    _class_hook(backend_class, "check_url", url, hooks)


def store_identity(backend_class: type[StorageBackend], url: StorageURL) -> Hashable:
    """``backend_class.store_identity(url)``, its own exceptions translated as in
    :func:`check_url`."""
    return _class_hook(
        backend_class, "store_identity", url, lambda: backend_class.store_identity(url)
    )


def _class_hook(
    backend_class: type[StorageBackend], hook: str, url: StorageURL, call: Callable[[], T]
) -> T:
    try:
        return call()
    except ExternalStorageError:
        raise
    except Exception as exc:
        failed = exc
    # Outside the except block: the hook's exception (its message may quote the URL's
    # password) must not become __context__.
    raise StorageConfigurationError(
        f"{backend_class.__name__}.{hook}({url.masked}) raised {type(failed).__name__}: a URL "
        "the backend cannot use is refused with StorageConfigurationError naming the fix; "
        "see the chained DriverError's traceback for where"
    ) from summary(failed)


def _in_transaction(backend: StorageBackend, operation: str) -> tuple[str, str] | None:
    """What is known of a write that timed out inside the caller's :func:`transaction`, and
    what to do, or ``None`` outside one: it cannot apply later on its own, and reading back
    cannot tell (the connection refuses every statement until the rollback)."""
    if joined_save(backend) is None:
        return None
    return (
        f"the {operation} ran inside the caller's transaction (pydantic_toast.transaction()), "
        "so it is stored only if that transaction commits, and whether it applied within it is "
        "unknown",
        "roll the transaction back (then nothing of it is stored) and run it again",
    )


# What to do about a timed-out write whose end was waited for (see ended_unknown).
_ENDED_FIX = {
    "delete": "the record is gone either way; where only one deleter may succeed (a delete "
    "at a revision used as a claim), do not count this one as having succeeded",
}


async def open_backend(backend: StorageBackend, url: StorageURL) -> Connected:
    """Connect ``backend`` through the boundary and wrap it."""
    connected = Connected(backend, url)
    await connected.cross("connect", backend.connect, repeat="never")
    telemetry.watch_pool(backend, _kind_of(backend), url)
    return connected


class Connected:
    """A connected backend, as the rest of the library sees it.

    Attributes:
        backend: The backend instance (its pools belong to one event loop).
        url: Its storage URL.
        capabilities: What the backend declared it supports.
    """

    __slots__ = (
        "_answers_checked",
        "_deletes_by_created_at",
        "_idle",
        "_kind",
        "_running",
        "backend",
        "capabilities",
        "url",
    )

    def __init__(self, backend: StorageBackend, url: StorageURL) -> None:
        self.backend = backend
        self.url = url
        self.capabilities: frozenset[Capability] = type(backend).capabilities
        self._kind = _kind_of(backend)
        self._running = 0  # crossings under way: a close waits for them (see drained())
        self._idle: asyncio.Event | None = None
        # A backend of the application's own: its load_records answers are checked to be
        # one record per key, in the keys' order (the built-in ones are tested for it).
        self._answers_checked = not type(backend).__module__.startswith(_BUILT_IN)
        self._deletes_by_created_at = checks_created_at_on_delete(type(backend))

    def __repr__(self) -> str:
        return f"<Connected {self.backend!r}>"

    @property
    def where(self) -> str:
        """``Backend at host:port`` (or the masked URL of a local store), for messages."""
        return Failure(backend=self._kind, url=self.url, operation="").where

    @property
    def running(self) -> bool:
        """Whether an operation is crossing to the backend (see :meth:`drained`)."""
        return self._running > 0

    async def drained(self, within: float) -> None:
        """Wait until no operation is crossing to the backend, at most ``within`` seconds.

        A close waits for it, so that the operations other tasks or threads have under way end
        as they would have (a save is not cut between its write and its read-back); the next
        operation reconnects.
        """
        if self._running == 0:
            return
        if self._idle is None or self._idle.is_set():
            self._idle = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._idle.wait()

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Hold off a close (see :meth:`drained`) across the crossings of one operation that
        makes several (a delete reading its owned children first)."""
        self._running += 1
        try:
            yield
        finally:
            self._left()

    def _left(self) -> None:
        """An operation ended its crossing (see :meth:`drained`)."""
        self._running -= 1
        if self._running == 0 and self._idle is not None:
            self._idle.set()

    async def save_records(
        self, records: Sequence[StoredRecord], *, trusted: bool = False
    ) -> list[int] | None:
        """Write ``records``; their new revisions (see :meth:`StorageBackend.save_records`).

        Retried once only when the connection failed before the request was sent. Lost after
        that, or timed out waiting for the reply, the records are read back: stored exactly as
        written, the save succeeded; untouched, it is written once more (a revision-checked
        write cannot land twice); otherwise :class:`~pydantic_toast.OutcomeUnknownError`
        (:func:`pydantic_toast.runtime.outcomes.settle_save`).

        ``trusted``: the records are a model save's (its times read from this machine's
        clock or from this store, one record per key), which skips the checks below: 2,000
        instructions a record, 2% of a batch save on memory://.

        Raises:
            StorageValidationError: A record's timestamps are ones some store cannot keep
                exactly (:func:`~pydantic_toast._records.check_timestamps`), or a record is
                in the batch twice (:func:`~pydantic_toast._records.check_once_each`): on
                every store, nothing is written.
        """
        if not trusted:
            check_timestamps(records)
            check_once_each(records)
        failed: Exception | None = None
        if not telemetry.on:
            # As in load_records: a save that answers needs neither translation nor telemetry
            # (the crossing's coroutines and closures cost 8,000 instructions, 5% of a save on
            # memory://). A failure goes through the crossing as its first attempt.
            self._running += 1
            try:
                revisions = await self.backend.save_records(records)
            except Exception as exc:
                failed = exc
            else:
                if self._answers_checked:
                    self._check_revisions(records, revisions)
                return revisions
            finally:
                # self._left(), inline: a call costs 2% of a load on memory://
                self._running -= 1
                if self._idle is not None and not self._running:
                    self._idle.set()
        revisions = await self.write_records(records, again=True, failed=failed)
        if self._answers_checked:
            self._check_revisions(records, revisions)
        return revisions

    def check_records(self, records: Sequence[StoredRecord]) -> None:
        """The backend's refusals of ``records`` before anything is written (no I/O; see
        :meth:`StorageBackend.check_records`), its other errors translated as a save's."""
        try:
            self.backend.check_records(records)
            return
        except Exception as exc:
            failure = self._failure(exc, "save", records[0].class_name if records else None)
            mapped, _ = translate(exc, failure)
            cause = None if mapped is exc else summary(exc)
        # Outside the except block: the driver's exception must not become __context__.
        if cause is None:
            raise mapped
        raise mapped from cause

    def _check_revisions(self, records: Sequence[StoredRecord], revisions: object) -> None:
        """Refuse a ``save_records`` answer of a backend with revisions that is not one new
        revision per record: models would remember none, and write regardless from then on."""
        if Capability.REVISIONS not in self.capabilities:
            return
        if not isinstance(revisions, Sequence):
            answer = "None" if revisions is None else f"a {type(revisions).__name__}"
        elif len(revisions) != len(records):
            answer = f"{len(revisions)} revisions for {len(records)} records"
        elif not all(type(revision) is int and revision >= 1 for revision in revisions):
            answer = "a revision that is not an int of 1 or more"
        else:
            return
        error = StorageOperationError(
            f"{type(self.backend).__name__}.save_records wrote the records but answered "
            f"{answer}: a backend with Capability.REVISIONS returns the new revision of each "
            "record, in order (1 for a new record, one more than before otherwise)"
        )
        # Written: their new offloaded payloads must stay (see Offloads.failed).
        error.written = frozenset(record.key for record in records)  # type: ignore[attr-defined]
        raise error

    async def write_records(
        self, records: Sequence[StoredRecord], *, again: bool, failed: Exception | None = None
    ) -> list[int] | None:
        """The save crossing; ``again``: whether settling a lost reply may write once more;
        ``failed``: how a first attempt the caller made itself failed (see :meth:`cross`)."""

        async def settled(timed_out: bool) -> list[int] | None:
            return await outcomes.settle_save(self, records, again=again, timed_out=timed_out)

        return await self.cross(
            "save",
            lambda: self.backend.save_records(records),
            class_name=records[0].class_name if records else None,
            keys=lambda: [record.key for record in records],
            count=len(records),
            repeat="write",
            settle=settled,
            size=lambda _: sum(len(record.data) for record in records),
            failed=failed,
        )

    async def load_records(
        self, keys: Sequence[RecordKey], *, backoff: Backoff | None = None
    ) -> list[StoredRecord | None]:
        """Read ``keys`` (see :meth:`StorageBackend.load_records`); ``backoff``: see
        :meth:`cross`."""
        failed: Exception | None = None
        if not telemetry.on:
            # The common case without the crossing's own coroutine: a load that answers needs
            # neither translation nor telemetry. A failure goes through :meth:`cross` below as
            # its first attempt.
            self._running += 1
            try:
                records = await self.backend.load_records(keys)
            except Exception as exc:
                failed = exc
            else:
                if self._answers_checked:
                    self._check_answer(keys, records)
                return records
            finally:
                # self._left(), inline: a call costs 2% of a load on memory://
                self._running -= 1
                if self._idle is not None and not self._running:
                    self._idle.set()
        records = await self.cross(
            "load",
            lambda: self.backend.load_records(keys),
            class_name=keys[0][0] if keys else None,
            count=len(keys),
            size=_loaded_bytes,
            failed=failed,
            backoff=backoff,
        )
        if self._answers_checked:
            self._check_answer(keys, records)
        return records

    def _check_answer(self, keys: Sequence[RecordKey], records: list[StoredRecord | None]) -> None:
        """Refuse a ``load_records`` answer that is not one record (or ``None``) per key, in
        the keys' order: taken as it is, records would land under other references."""
        problem = None
        if not isinstance(records, Sequence):
            problem = f"answered a {type(records).__name__}"
        elif len(records) != len(keys):
            problem = f"answered {len(records)} records for {len(keys)} keys"
        else:
            for key, record in zip(keys, records, strict=True):
                if record is None:
                    continue
                problem = _record_problem(record)
                if problem is not None:
                    self._refuse_record("load_records", problem)
                if (record.class_name, record.id) != key:
                    problem = (
                        f"answered the record {record.class_name} {record.id} where "
                        f"{key[0]} {key[1]} was asked"
                    )
                    break
        if problem is not None:
            raise StorageOperationError(
                f"{type(self.backend).__name__}.load_records {problem}: it must return a list "
                "with one record per key, in the order of the keys, and None for a key that "
                "has no record (check the backend with pydantic_toast.testing.conformance)"
            )

    def _refuse_record(self, method: str, problem: str) -> NoReturn:
        raise StorageOperationError(
            f"{type(self.backend).__name__}.{method} answered a record {problem} (check the "
            "backend with pydantic_toast.testing.conformance)"
        )

    async def delete(self, id: UUID, class_name: str) -> bool:
        """Delete one record; retried only if never sent, so "not found" is never a retry's."""
        return await self.cross(
            "delete",
            lambda: self.backend.delete(id, class_name),
            class_name=class_name,
            repeat="write",
            keys=((class_name, id),),
        )

    async def delete_checked(
        self, id: UUID, class_name: str, revision: int, *, created_at: datetime | None = None
    ) -> bool:
        """Delete one record at ``revision`` and ``created_at`` (see
        :meth:`StorageBackend.delete_checked`; a backend whose method does not take
        ``created_at`` checks the revision alone)."""
        if created_at is None or not self._deletes_by_created_at:
            delete = partial(self.backend.delete_checked, id, class_name, revision)
        else:
            delete = partial(
                self.backend.delete_checked, id, class_name, revision, created_at=created_at
            )
        return await self.cross(
            "delete",
            delete,
            class_name=class_name,
            repeat="write",
            keys=((class_name, id),),
        )

    async def list_records(
        self, class_name: str, *, limit: int, after: PageCursor | None = None
    ) -> list[StoredRecord]:
        """A page of records, newest first (see :meth:`StorageBackend.list_records`)."""
        records = await self.cross(
            "list",
            lambda: self.backend.list_records(class_name, limit=limit, after=after),
            class_name=class_name,
            size=lambda records: sum(len(record.data) for record in records),
        )
        if self._answers_checked:
            for record in records:
                problem = _record_problem(record)
                if problem is None and record.class_name != class_name:
                    problem = f"of class {record.class_name} when {class_name} was listed"
                if problem is not None:
                    self._refuse_record("list_records", problem)
        return records

    async def delete_records(self, keys: Sequence[RecordKey]) -> list[bool]:
        """Delete several records (see :meth:`StorageBackend.delete_records`); retried only
        if never sent."""
        return await self.cross(
            "delete",
            lambda: self.backend.delete_records(keys),
            class_name=keys[0][0] if keys else None,
            count=len(keys),
            repeat="write",
            keys=tuple(keys),
        )

    async def list_ids(
        self, class_name: str, *, limit: int, after: PageCursor | None = None
    ) -> list[UUID]:
        """A page of ids (see :meth:`StorageBackend.list_ids`)."""
        return await self.cross(
            "list",
            lambda: self.backend.list_ids(class_name, limit=limit, after=after),
            class_name=class_name,
        )

    async def count(self, class_name: str) -> int:
        """How many records ``class_name`` has."""
        return await self.cross(
            "count", lambda: self.backend.count(class_name), class_name=class_name
        )

    async def list_class_names(self) -> list[str]:
        """The class names with records here (see :meth:`StorageBackend.list_class_names`)."""
        return await self.cross("list", self.backend.list_class_names)

    async def purge_expired(self, *, limit: int) -> int:
        """Delete at most ``limit`` expired records (see :meth:`StorageBackend.purge_expired`)."""
        return await self.cross(
            "purge", lambda: self.backend.purge_expired(limit=limit), repeat="write"
        )

    async def disconnect(self) -> None:
        """Close the backend's connections (errors are logged, not raised)."""
        try:
            await self.cross("disconnect", self.backend.disconnect, repeat="never")
        except ExternalStorageError as exc:
            logger.warning("closing %r failed: %s", self.backend, exc)

    async def cross(
        self,
        operation: str,
        call: Callable[[], Awaitable[T]],
        *,
        class_name: str | None = None,
        count: int = 1,
        repeat: Repeat = "read",
        settle: Callable[[bool], Awaitable[T]] | None = None,
        keys: Sequence[RecordKey] | Callable[[], Sequence[RecordKey]] = (),
        size: Callable[[T], int] | None = None,
        failed: Exception | None = None,
        backoff: Backoff | None = None,
    ) -> T:
        """Run ``call`` across the boundary: translated errors, at most one retry (more with
        ``backoff``), telemetry.

        ``repeat`` says when a lost connection is retried (see :data:`Repeat`). A ``write``
        lost after its request was sent, or timed out waiting for its reply, is never repeated
        here: ``settle(timed_out)`` decides its outcome (a save reads its records back), or it
        raises
        :class:`~pydantic_toast.OutcomeUnknownError` naming ``keys`` (or the keys it makes, when
        a callable). ``size`` gives the bytes
        moved from the result, for telemetry only (not called when off). ``failed``: how a
        first attempt the caller made itself failed (``call`` then starts at the second).
        ``backoff``: a read that finds the store busy (:class:`~pydantic_toast.StorageBusyError`)
        or cannot reach it, after its one retry, is tried again after each of its pauses until
        its time is up; then the last error is raised.
        """
        self._running += 1
        try:
            span = (
                telemetry.start(operation, self._kind, class_name, count, self.url)
                if telemetry.on
                else None
            )
            for attempt in itertools.count(1):
                try:
                    if failed is not None:
                        first, failed = failed, None
                        raise first
                    result = await call()
                except Exception as exc:
                    failure = self._failure(exc, operation, class_name)
                    mapped, lost = translate(exc, failure)
                    cause = None if mapped is exc else summary(exc)
                    timed_out = not lost and repeat == "write" and unanswered(exc, failure)
                    found: str | None = None
                    logged = False
                    fix: str | None = None
                    if timed_out:
                        found = getattr(exc, _ENDED, None)
                        if found is not None:
                            fix = _ENDED_FIX.get(operation)
                        elif (joined := _in_transaction(self.backend, operation)) is not None:
                            found, fix = joined
                # Cancelled or interrupted: end the span, re-raise.
                except BaseException as interrupt:
                    if span is not None:
                        span.finish(interrupt)
                    raise
                else:
                    if span is not None:
                        span.finish(None, size(result) if size is not None else None)
                    return result
                # Outside the except block: the driver's exception must not become __context__.
                unsent = failure.connecting
                if lost and attempt == 1 and (repeat == "read" or (repeat == "write" and unsent)):
                    logger.info("%s on %s lost its connection; retrying once", operation, self.url)
                    if span is not None:
                        span.retried()
                    await self._discard_connections()
                    continue
                if (
                    backoff is not None
                    and repeat == "read"
                    and (lost or isinstance(mapped, StorageBusyError))
                    and await self._paused(backoff, span)
                ):
                    logger.info("%s on %s failed (%s); trying again", operation, self.url, mapped)
                    if span is not None:
                        span.retried()
                    if lost:
                        await self._discard_connections()
                    continue
                # A write sent and then lost, or whose reply never came in time (the server may
                # have applied it, or may still unless the backend waited for its end: see
                # ended_unknown): never repeated blindly.
                if (lost or timed_out) and repeat == "write" and not unsent:
                    logger.info(
                        "%s on %s %s after the request was sent (%s)",
                        operation,
                        self.url,
                        "timed out" if timed_out else "lost its connection",
                        cause,
                    )
                    if lost:
                        await self._discard_connections()
                    if settle is None or found is not None:  # what reading back could tell is known
                        named = keys() if callable(keys) else keys  # (made only when needed)
                        mapped = outcomes.unknown(
                            self, operation, named, timed_out=timed_out, ended=found, fix=fix
                        )
                    else:
                        try:
                            result = await settle(timed_out)
                        except ExternalStorageError as outcome:
                            mapped = outcome  # raised below, logged as any failure
                            # unless the crossing of a second write logged it already
                            logged = getattr(outcome, _LOGGED, False)
                            if outcome.__cause__ is not None:
                                cause = None
                        except BaseException as interrupt:
                            if span is not None:
                                span.finish(interrupt)
                            raise
                        else:
                            if span is not None:
                                span.finish(None, size(result) if size is not None else None)
                            return result
                if span is not None:
                    span.finish(mapped)
                if isinstance(mapped, ConcurrencyError):  # an expected outcome, not a failure
                    logger.debug("%s on %s: %s", operation, self.url, mapped)
                    raise mapped
                if not logged:
                    logger.warning("%s on %s failed: %s (%s)", operation, self.url, mapped, cause)
                    with contextlib.suppress(AttributeError):
                        setattr(mapped, _LOGGED, True)
                if cause is None:
                    raise mapped
                raise mapped from cause
        finally:
            self._left()
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    async def _paused(backoff: Backoff, span: telemetry.Span | None) -> bool:
        """``backoff.wait()``, ending ``span`` if the wait is cancelled."""
        try:
            return await backoff.wait()
        except BaseException as interrupt:
            if span is not None:
                span.finish(interrupt)
            raise

    def _failure(self, exc: BaseException, operation: str, class_name: str | None) -> Failure:
        return Failure(
            backend=self._kind,
            url=self.url,
            operation=operation,
            connecting=bool(getattr(exc, _CONNECTING, False)) or unsent(exc),
            class_name=class_name,
            built_in=_built_in(self.backend),
        )

    async def _discard_connections(self) -> None:
        try:
            await self.backend.discard_connections()
        except Exception as exc:  # the retry will report what is still wrong
            logger.info("discarding connections of %r failed: %s", self.backend, type(exc).__name__)


def _record_problem(record: object) -> str | None:
    """What makes a backend's answer not a record the library can use, or ``None``.

    Checked on the answers of backends of the application's own: a wrong type surfaced far
    from the backend, as a bare ``TypeError`` (``data`` as text) or a record that read back
    as another (an id as text), or compared unequal to what was written (a naive time).
    """
    if not isinstance(record, StoredRecord):
        return (
            f"as a {type(record).__name__}: give a StoredRecord (StoredRecord.from_document("
            "class_name, id, document) makes one from a document) or None"
        )
    name = f"{record.class_name} {record.id}"
    if not isinstance(record.data, bytes):
        return (
            f"{name} whose data is a {type(record.data).__name__}: StoredRecord.data is the "
            "JSON object of the fields as UTF-8 bytes (text.encode())"
        )
    if not isinstance(record.id, UUID):
        return f"{name} whose id is a {type(record.id).__name__}: give a UUID (UUID(text))"
    for label, moment in (("created_at", record.created_at), ("updated_at", record.updated_at)):
        if not isinstance(moment, datetime) or moment.utcoffset() is None:
            return (
                f"{name} whose {label} is not a timezone-aware datetime: keep the offset the "
                "record was written with (datetime.fromisoformat of its isoformat() does)"
            )
    return None


def _loaded_bytes(records: list[StoredRecord | None]) -> int:
    return sum(len(record.data) for record in records if record is not None)


def _built_in(backend: StorageBackend) -> bool:
    """Whether ``backend`` is (or extends) one of the library's stores, beyond the interface."""
    return any(
        kind.__module__.startswith(_BUILT_IN) and kind.__module__ != _INTERFACE
        for kind in type(backend).__mro__
    )


def _kind_of(backend: StorageBackend) -> str:
    name = type(backend).__name__
    return name.removesuffix("Backend") or name
