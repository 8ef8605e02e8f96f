"""Conversations stored as append-only batches of Pydantic AI messages.

Each append writes one new record holding the batch of messages it was given (a run's
``new_messages()``), plus a small header record naming the conversation, in one
``save_records`` call. Nothing already stored is read or rewritten, so an append costs the same
at the 10th and the 10,000th message, and two runs appending to one conversation at the same
time both land: each writes its own record under its own id.

Ordering rule. Batches are ordered by a position (a UTC timestamp with microsecond resolution)
stored as the record's ``created_at``, ties broken by the record id. An append's position is
the latest of: this process's clock, one microsecond after the position of the newest batch
the caller loaded (``after=``), and one microsecond after the last position this store object
handed out. So a turn that was written after reading the previous one always sorts after it,
whatever the clocks of the processes involved say (a hybrid logical clock); only batches
written concurrently, without seeing each other, are ordered by clock and then id, which is
the same order for every reader.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from uuid import UUID, uuid4, uuid5

import pydantic_core
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    ToolReturnPart,
)
from pydantic_ai.usage import RunUsage

from pydantic_toast._collections import check_limit
from pydantic_toast._config import ttl_seconds
from pydantic_toast._exceptions import StorageConfigurationError, StoredDataError
from pydantic_toast._fidelity import describe_value_errors
from pydantic_toast._records import LAST_STORABLE, PageCursor, StoredRecord
from pydantic_toast.ai._names import (
    CONVERSATIONS,
    check_conversation_id,
    check_namespace,
    kind_class_name,
)
from pydantic_toast.ai._storage import backend, checked_url, delete_all, list_page
from pydantic_toast.backends.base import Capability

if TYPE_CHECKING:
    from pydantic_toast.ai.spill import SpillToolOutputs

__all__ = ["Appended", "ConversationInfo", "History", "MessageStore"]

logger = logging.getLogger("pydantic_toast")
FORMAT_VERSION = 1
_TICK = timedelta(microseconds=1)
_HEADER_IDS = UUID("6b1f4e58-2f1e-4b55-9f4e-6a2b8c1d0e13")  # uuid5 namespace of headers
_USAGE = TypeAdapter(RunUsage)


@dataclass(frozen=True, slots=True)
class History:
    """A conversation's messages as loaded, oldest first.

    Attributes:
        conversation_id: The conversation.
        messages: Its messages, in the order they were appended.
        position: The position of the newest batch loaded; pass it as ``after=`` to
            :meth:`MessageStore.aappend` so the next turn sorts after it. ``None`` for a
            conversation with nothing stored.
        complete: ``False`` when ``limit`` left older batches out, or may have (a limit met
            at the end of a full page: the next page is not read to find out).
        turn_usage: The usage of each loaded turn (each appended batch: one run when the
            capability appended it), oldest first, as stored with it.
        usage: The total of ``turn_usage``: the whole conversation's usage when ``complete``.
    """

    conversation_id: str
    messages: list[ModelMessage]
    position: datetime | None
    complete: bool
    turn_usage: list[RunUsage] = field(default_factory=list)
    usage: RunUsage = field(default_factory=RunUsage)


@dataclass(frozen=True, slots=True)
class Appended:
    """What one append stored.

    Attributes:
        conversation_id: The conversation.
        batch_id: The id of the batch record written.
        position: The batch's position (its ordering key).
        count: How many messages it holds.
        usage: The usage stored with it.
    """

    conversation_id: str
    batch_id: UUID
    position: datetime
    count: int
    usage: RunUsage


@dataclass(frozen=True, slots=True)
class ConversationInfo:
    """A stored conversation, as listed.

    Attributes:
        conversation_id: The conversation.
        created_at: When its first batch was appended.
        updated_at: When its last batch was appended.
    """

    conversation_id: str
    created_at: datetime
    updated_at: datetime


class _Batch(BaseModel):
    """The exact shape of a stored batch (anything else is refused)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    conversation_id: str
    count: int
    # The messages as ModelMessagesTypeAdapter's JSON text, kept as a string: PostgreSQL's jsonb
    # would otherwise normalize numbers inside tool arguments (-0.0 -> 0, 1e16 -> an int).
    messages: str
    # The turn's RunUsage as JSON text (absent in batches written before usage was kept).
    usage: str | None = None


class _Header(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    conversation_id: str


class MessageStore:
    """Pydantic AI conversations in any pydantic-toast storage, appended batch by batch.

    Use it through :class:`~pydantic_toast.ai.PersistentConversation`, or directly when the app
    passes ``message_history=`` itself::

        store = MessageStore("postgresql://app@db/app")
        history = await store.aload(conversation_id)
        result = await agent.run(prompt, message_history=history.messages)
        await store.aappend(conversation_id, result.new_messages(), after=history.position)

    Stored history is checked on the way back in: the record must be a batch of this store's
    format version and shape, belong to the conversation asked for, and its messages must
    validate with Pydantic AI's ``ModelMessagesTypeAdapter`` (every part kind and field typed)
    and number what the batch says; anything else raises
    :class:`~pydantic_toast.StoredDataError` naming the record, without its data.

    Args:
        storage: A storage URL (``postgresql://...``, ``redis://...``, ``sqlite:///...``,
            ``memory://``, a registered scheme) or ``env:NAME``.
        namespace: Separates the conversations of several apps sharing one storage. They are
            stored under ``pydantic_toast.ai.conversations[.<namespace>]``, apart from spilled
            outputs and payloads even when those are given the same namespace.
        ttl: Expiry, where the backend supports it (PostgreSQL, SQLite, Redis, memory; not
            S3): each batch expires ``ttl`` after it was appended, and the conversation's
            header ``ttl`` after its last append.
            An idle conversation disappears whole; an active one forgets whole turns older than
            ``ttl``, never part of a turn.
        page_size: Batches fetched per page when loading (one round trip per page on the
            built-in backends: the backend's ``list_records``).
        skip_invalid: Leave batches that fail the checks out of loaded histories, and
            damaged conversation headers out of :meth:`alist` (a stored value that is no
            record at all too, such as a string SET under a Redis key; with a warning on the
            ``pydantic_toast`` logger) instead of raising. Whole turns are left out, so the
            rest of the history stays coherent.
        spill: The :class:`~pydantic_toast.ai.SpillToolOutputs` of the agents writing these
            conversations: :meth:`adelete` deletes the tool outputs they spilled during a
            conversation with it.
    """

    def __init__(
        self,
        storage: str,
        *,
        namespace: str = CONVERSATIONS,
        ttl: float | timedelta | None = None,
        page_size: int = 200,
        skip_invalid: bool = False,
        spill: SpillToolOutputs | None = None,
    ) -> None:
        """Check the settings; nothing connects before the first operation."""
        self.skip_invalid = skip_invalid
        self.spill = spill
        self.ttl = ttl_seconds(ttl, "MessageStore")
        needs = (Capability.LIST, Capability.DELETE)
        self._url = checked_url(storage, self.ttl, needs=needs, user="MessageStore")
        self.namespace = check_namespace(namespace)
        if not 1 <= page_size <= 1000:
            raise StorageConfigurationError(f"page_size must be from 1 to 1000, got {page_size}")
        self.page_size = page_size
        self._header_class = kind_class_name(CONVERSATIONS, namespace)
        self._last = datetime.min.replace(tzinfo=UTC)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        from pydantic_toast._url import mask_url

        return f"<MessageStore {mask_url(self._url)} namespace={self.namespace!r}>"

    # -- writing ----------------------------------------------------------------------------------

    async def aappend(
        self,
        conversation_id: str,
        messages: Sequence[ModelMessage],
        *,
        after: datetime | None = None,
        usage: RunUsage | None = None,
    ) -> Appended | None:
        """Append messages to a conversation: one new record, nothing stored is rewritten.

        Args:
            conversation_id: The conversation (created by its first append).
            messages: The messages to append, usually a run's ``new_messages()``.
            after: The ``position`` of the history the messages follow (from :meth:`aload`),
                so they sort after it even if this machine's clock is behind.
            usage: The run's usage (``result.usage``), stored with the turn. By default it is
                summed from the messages: one request and its tokens per ``ModelResponse``, one
                tool call per ``ToolReturnPart``.

        Returns:
            What was stored, or ``None`` when ``messages`` is empty (nothing is written).
        """
        check_conversation_id(conversation_id)
        if not messages:
            return None
        messages = list(messages)
        text = ModelMessagesTypeAdapter.dump_json(messages).decode()
        usage = usage_of(messages) if usage is None else usage
        now = datetime.now(UTC)
        position = self._next_position(now, after)
        batch = StoredRecord(
            class_name=self._batch_class(conversation_id),
            id=uuid4(),
            data=pydantic_core.to_json(
                {
                    "conversation_id": conversation_id,
                    "count": len(messages),
                    "messages": text,
                    "usage": _USAGE.dump_json(usage).decode(),
                }
            ),
            schema_version=FORMAT_VERSION,
            created_at=position,
            updated_at=now,
            ttl=self.ttl,
        )
        header = StoredRecord(
            class_name=self._header_class,
            id=_header_id(conversation_id),
            data=pydantic_core.to_json({"conversation_id": conversation_id}),
            schema_version=FORMAT_VERSION,
            created_at=now,  # kept by the backend when the header exists
            updated_at=now,
            ttl=self.ttl,
        )
        store = await backend(self._url)
        await store.save_records([batch, header])
        return Appended(conversation_id, batch.id, position, len(messages), usage)

    def _next_position(self, now: datetime, after: datetime | None) -> datetime:
        with self._lock:
            position = max(now, self._last + _TICK)  # (_last is at most LAST_STORABLE)
            if after is not None:
                position = max(position, _utc(after) + _TICK)
            if position > LAST_STORABLE:
                raise StorageConfigurationError(
                    "no position follows 9999-12-31 23:59:59.999998 UTC, the last time every "
                    "store keeps exactly, and an append on this MessageStore took it (an after "
                    "that close to it leaves no room): no later append can sort after it"
                )
            self._last = position
            return position

    # -- reading ----------------------------------------------------------------------------------

    async def aload(self, conversation_id: str, *, limit: int | None = None) -> History:
        """Load a conversation's messages, oldest first (empty if nothing is stored).

        Args:
            conversation_id: The conversation.
            limit: Load only the newest batches holding at least this many messages. Whole
                batches are loaded, so a turn is never cut in half, and a batch opening with
                tool returns brings the one before it (a tool return without its call would
                be refused by the model).
        """
        if limit is not None:
            check_limit(limit, most=None)
        batches: list[_Loaded] = []
        loaded = 0
        complete = True
        pages = self._pages(conversation_id)
        async for page, last in pages:
            for batch in page:
                if _enough(batches, loaded, limit):
                    complete = False
                    break
                batches.append(batch)
                loaded += len(batch.messages)
            if _enough(batches, loaded, limit):
                # After a full page older batches may remain (not looked up: that costs a page).
                complete = complete and last
                break
        await pages.aclose()
        batches.reverse()
        messages = [message for batch in batches for message in batch.messages]
        turn_usage = [batch.usage for batch in batches]
        total = RunUsage()
        for usage in turn_usage:
            total.incr(usage)
        position = batches[-1].position if batches else None
        return History(conversation_id, messages, position, complete, turn_usage, total)

    async def apages(self, conversation_id: str) -> AsyncIterator[list[ModelMessage]]:
        """The conversation's messages page by page, newest page first (each page oldest first).

        For a UI scrolling back through a long conversation without loading all of it.
        """
        async for page, _ in self._pages(conversation_id):
            yield [message for batch in reversed(page) for message in batch.messages]

    async def _pages(self, conversation_id: str) -> AsyncGenerator[tuple[list[_Loaded], bool]]:
        """The checked batches page by page, newest first, each with whether it is the last."""
        check_conversation_id(conversation_id)
        class_name = self._batch_class(conversation_id)
        store = await backend(self._url)
        cursor: PageCursor | None = None
        while True:
            records, cursor, last = await list_page(
                store,
                class_name,
                limit=self.page_size,
                after=cursor,
                skip_unreadable=self.skip_invalid,
            )
            page = []
            for record in records:
                try:
                    page.append(_decode(record, conversation_id))
                except StoredDataError as exc:
                    if not self.skip_invalid:
                        raise
                    logger.warning("skipped a stored batch: %s", exc)
            if page:
                yield page, last
            if last:
                return

    # -- the collection ---------------------------------------------------------------------------

    async def alist(
        self, *, limit: int = 50, after: ConversationInfo | str | None = None
    ) -> list[ConversationInfo]:
        """Stored conversations, newest first (by when they started): one round trip a page.

        Args:
            limit: At most this many (1 to 1000).
            after: The last conversation of the previous page: its ``ConversationInfo`` (the
                page starts right after it, in one round trip), or its ``conversation_id``
                (one more round trip to find where it started; an empty list when it no
                longer exists).
        """
        check_limit(limit)
        store = await backend(self._url)
        cursor = None
        if isinstance(after, ConversationInfo):
            id = _header_id(check_conversation_id(after.conversation_id))
            cursor = PageCursor(_utc(after.created_at), id)
        elif after is not None:
            key = (self._header_class, _header_id(check_conversation_id(after)))
            (last,) = await store.load_records([key])
            if last is None:
                return []
            cursor = PageCursor.of(last)
        found: list[ConversationInfo] = []
        ended = False
        # A left-out header does not end the page: the listing goes on past it until the page
        # is full or the store has no more (a short page would read as the end of the list).
        while len(found) < limit and not ended:
            records, cursor, ended = await list_page(
                store,
                self._header_class,
                limit=limit - len(found),
                after=cursor,
                skip_unreadable=self.skip_invalid,
            )
            found += self._headers(records)
        return found

    def _headers(self, records: list[StoredRecord]) -> list[ConversationInfo]:
        """The conversations of header ``records``; with ``skip_invalid``, unreadable ones are
        left out with a warning."""
        found: list[ConversationInfo] = []
        for record in records:
            try:
                header = _Header.model_validate_json(record.data)
            except ValidationError:
                error = _corrupt(
                    record,
                    "is not a conversation header",
                    remedy="no conversation owns it: delete that record or restore it from a "
                    "backup",
                )
                if not self.skip_invalid:
                    raise error from None
                logger.warning("skipped a stored conversation header: %s", error)
                continue
            found.append(
                ConversationInfo(header.conversation_id, record.created_at, record.updated_at)
            )
        return found

    async def adelete(self, conversation_id: str) -> int:
        """Delete a conversation: the tool outputs spilled during it, every batch, its header.

        The spilled outputs (of the ``spill`` given to this store) go first, then the batches
        newest first, then the header: a delete cut short leaves the start of the conversation
        (a coherent, shorter history, still listed), never a gap, and running it again
        finishes it.

        Returns:
            How many batches were deleted (0 when nothing was stored).
        """
        check_conversation_id(conversation_id)
        if self.spill is not None:
            await self.spill.adelete_conversation(conversation_id)
        class_name = self._batch_class(conversation_id)
        store = await backend(self._url)
        deleted = await delete_all(store, class_name)
        await store.delete(_header_id(conversation_id), self._header_class)
        return deleted

    def _batch_class(self, conversation_id: str) -> str:
        return f"{self._header_class}/{conversation_id}"


@dataclass(frozen=True, slots=True)
class _Loaded:
    """One stored batch, checked and decoded."""

    position: datetime
    messages: list[ModelMessage]
    usage: RunUsage


def usage_of(messages: Sequence[ModelMessage]) -> RunUsage:
    """The usage ``messages`` record: requests and tokens of each response, tool returns."""
    usage = RunUsage()
    for message in messages:
        if isinstance(message, ModelResponse):
            usage.requests += 1
            usage.incr(message.usage)
        elif isinstance(message, ModelRequest):
            usage.tool_calls += sum(isinstance(part, ToolReturnPart) for part in message.parts)
    return usage


def _enough(newest: list[_Loaded], loaded: int, limit: int | None) -> bool:
    """Whether the ``newest`` batches (newest first) hold ``limit`` messages and start a turn.

    A batch opening with tool returns (a run resumed after a tool approval appends one)
    continues the turn before it, which holds their calls: providers refuse a return whose
    call is not in the history, so that batch is loaded too.
    """
    if limit is None or loaded < limit:
        return False
    first = newest[-1].messages[0]
    return not (
        isinstance(first, ModelRequest)
        and any(isinstance(part, ToolReturnPart) for part in first.parts)
    )


def _header_id(conversation_id: str) -> UUID:
    return uuid5(_HEADER_IDS, conversation_id)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise StorageConfigurationError("after must hold a timezone-aware datetime")
    try:
        moment = value.astimezone(UTC)
    except OverflowError:  # its UTC form falls outside years 1-9999
        moment = None
    if moment is None or moment >= LAST_STORABLE:
        raise StorageConfigurationError(
            "after must be a position before 9999-12-31 23:59:59.999998 UTC (pass the "
            "position aload gave): the next position follows it, and no store keeps a later "
            "time exactly"
        )
    return moment


def _decode(record: StoredRecord, conversation_id: str) -> _Loaded:
    """The messages of a stored batch, after checking everything about it."""
    if record.schema_version != FORMAT_VERSION:
        raise _corrupt(
            record,
            f"has format version {record.schema_version}, not {FORMAT_VERSION}: it was written "
            "by another version of pydantic-toast",
        )
    try:
        batch = _Batch.model_validate_json(record.data)
    except ValidationError:
        raise _corrupt(record, "is not a message batch") from None
    if batch.conversation_id != conversation_id:
        raise _corrupt(record, "belongs to another conversation")
    where: str | None = None
    try:
        messages = ModelMessagesTypeAdapter.validate_json(batch.messages)
    except ValidationError as exc:
        where = _problems(exc, batch.messages)
    if where is not None:  # raised outside the except block: Pydantic's error quotes the data
        raise _corrupt(record, f"holds messages that do not validate ({where})")
    if not messages or len(messages) != batch.count:
        raise _corrupt(record, f"holds {len(messages)} messages, not the {batch.count} it says")
    if batch.usage is None:
        usage = usage_of(messages)
    else:
        try:
            usage = _USAGE.validate_json(batch.usage)
        except ValidationError:
            raise _corrupt(record, "holds a usage that does not validate") from None
    return _Loaded(record.created_at, messages, usage)


def _problems(exc: ValidationError, messages: str) -> str:
    """Where and why stored ``messages`` do not validate, without their text (a validator's
    message, which may quote it, as its error type; a dict's key as ``<key>``)."""
    try:
        decoded = pydantic_core.from_json(messages)
    except ValueError:
        decoded = None
    problems, _ = describe_value_errors(exc, decoded, ModelMessagesTypeAdapter.core_schema)
    return problems


def _corrupt(
    record: StoredRecord,
    problem: str,
    *,
    remedy: str = "delete the conversation or restore the record from a backup",
) -> StoredDataError:
    return StoredDataError(
        f"the stored record {record.class_name} {record.id} {problem}; it is left untouched "
        f"({remedy})",
        class_name=record.class_name,
        id=record.id,
    )
