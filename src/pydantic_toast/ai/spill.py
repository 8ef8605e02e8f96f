"""``SpillToolOutputs``: large tool returns go to storage; the model gets a preview and a read tool.

A tool return whose text (the string itself, or its compact JSON) is longer than ``max_chars``
characters is stored as one record and replaced, in what the model sees, by a short note: its
size, its reference, and the first ``preview_chars`` characters; the app finds the reference in
the tool return part's ``metadata["spilled_ref"]`` (never sent to the model). The capability
adds a read tool (``read_tool_output``) returning slices by ``offset``/``length``, and for
structured results the value at a JSON path first. The threshold is a character count, so the
same output is always spilled or always not, whatever the model or tokenizer.

Outputs are stored per conversation (the class name ends with the run's ``conversation_id``),
so the read tool can only reach the outputs of its own conversation, and deleting a
conversation (:meth:`SpillToolOutputs.adelete_conversation`, which
:meth:`MessageStore.adelete <pydantic_toast.ai.MessageStore.adelete>` calls when given
``spill=``) deletes them with it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pydantic_core
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_ai import RunContext
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.messages import MULTI_MODAL_CONTENT_TYPES, ToolCallPart, ToolReturn
from pydantic_ai.tools import Tool, ToolDefinition
from pydantic_ai.toolsets import FunctionToolset

from pydantic_toast._config import ttl_seconds
from pydantic_toast._exceptions import (
    RecordNotFoundError,
    StorageConfigurationError,
    StoredDataError,
)
from pydantic_toast._records import StoredRecord
from pydantic_toast.ai._names import TOOL_OUTPUTS, check_conversation_id, kind_class_name
from pydantic_toast.ai._storage import backend, checked_url, delete_all
from pydantic_toast.backends.base import Capability

__all__ = ["SpillToolOutputs", "SpilledOutput", "select_json_path"]

FORMAT_VERSION = 1
# Format 2 keeps the text as a JSON string literal, so a NUL character reaches PostgreSQL's
# jsonb as an escaped backslash, which it stores, not as a \u0000 escape, which it refuses.
# Only texts holding a NUL are written so: the others stay readable by older versions
# (workers not yet upgraded during a rolling deploy).
_ESCAPED_FORMAT = 2
# The key of a spilled return's reference in its ToolReturnPart's metadata, for the app.
SPILLED_REF = "spilled_ref"
_PREVIEW_CHARS = 2_000  # the default preview, when max_chars is not smaller


@dataclass(frozen=True, slots=True)
class SpilledOutput:
    """A tool return as it was stored, for the app (audit, UI).

    Attributes:
        id: Its reference (what the model was given).
        tool_name: The tool that returned it.
        tool_call_id: The call it answered.
        conversation_id: The run's conversation.
        content: The return value as the model would have seen it: the string itself, or the
            decoded JSON of a structured return.
        text: The text the slices are cut from (the string, or the compact JSON).
        created_at: When it was stored.
    """

    id: UUID
    tool_name: str
    tool_call_id: str
    conversation_id: str | None
    content: Any
    text: str
    created_at: datetime


class _Stored(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    tool_name: str
    tool_call_id: str
    conversation_id: str | None
    structured: bool
    # Kept as text: jsonb would normalize numbers in a structured return. In format 2 the text
    # as a JSON string literal (see _ESCAPED_FORMAT).
    text: str


@dataclass
class SpillToolOutputs(AbstractCapability[Any]):
    """Store large tool returns externally and let the model read them in slices.

    ::

        spill = SpillToolOutputs("postgresql://app@db/app")
        store = MessageStore("postgresql://app@db/app", spill=spill)  # deletes them too
        agent = Agent(model, capabilities=[PersistentConversation(store), spill])

    Attributes:
        storage: A storage URL (or ``env:NAME``) for the spilled outputs.
        max_chars: Returns longer than this many characters are spilled; also the longest
            slice the read tool returns.
        preview_chars: How many leading characters the model sees in place of a spilled return
            (by default 2,000, or ``max_chars`` when that is smaller).
        ttl: Expiry of spilled outputs, where the backend supports it (PostgreSQL, SQLite,
            Redis, memory; not S3).
        namespace: Separates apps sharing one storage. Outputs are stored under
            ``pydantic_toast.ai.tool_outputs[.<namespace>]/<conversation_id>``, apart from
            conversations and payloads even when they are given the same namespace.
        read_tool_name: The name of the read tool given to the model.
    """

    storage: str
    max_chars: int = 20_000
    preview_chars: int | None = None
    ttl: float | timedelta | None = None
    namespace: str = TOOL_OUTPUTS
    read_tool_name: str = "read_tool_output"
    _preview: int = field(init=False, repr=False)
    _url: str = field(init=False, repr=False)
    _class_name: str = field(init=False, repr=False)
    # Outputs read during one run (the per-run copy's own), so slicing reloads nothing.
    _cache: dict[UUID, SpilledOutput] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        preview = self.preview_chars
        self._preview = min(_PREVIEW_CHARS, self.max_chars) if preview is None else preview
        if self.max_chars < 0 or not 0 <= self._preview <= self.max_chars:
            raise StorageConfigurationError(
                "SpillToolOutputs needs 0 <= preview_chars <= max_chars, got "
                f"preview_chars={self._preview}, max_chars={self.max_chars}"
            )
        self._ttl = ttl_seconds(self.ttl, "SpillToolOutputs")
        needs = (Capability.LIST, Capability.DELETE)
        self._url = checked_url(self.storage, self._ttl, needs=needs, user="SpillToolOutputs")
        self._class_name = kind_class_name(TOOL_OUTPUTS, self.namespace)

    async def for_run(self, ctx: RunContext[Any]) -> AbstractCapability[Any]:
        """A copy per run, with its own cache of outputs read."""
        return dataclasses.replace(self)

    def get_toolset(self) -> FunctionToolset[Any]:
        """The read tool."""
        return FunctionToolset([Tool(self._read, name=self.read_tool_name, takes_ctx=True)])

    async def after_tool_execute(
        self,
        ctx: RunContext[Any],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: Any,
        result: Any,
    ) -> Any:
        """Spill ``result`` when its text is longer than ``max_chars``."""
        if tool_def.name == self.read_tool_name:
            return result
        spillable = _as_text(result)
        if spillable is None:
            return result
        text, structured = spillable
        if len(text) <= self.max_chars:
            return result
        id = await self._store(ctx, call, text, structured)
        note = self._note(id, call.tool_name, text, structured)
        return ToolReturn(return_value=note, metadata={SPILLED_REF: str(id)})

    # -- for the app ------------------------------------------------------------------------------

    async def aload(self, reference: UUID | str, *, conversation_id: str | None) -> SpilledOutput:
        """The full output stored under ``reference`` (as given to the model).

        Args:
            reference: The ref given to the model in place of the output.
            conversation_id: The conversation of the run that spilled it (outputs are kept per
                conversation; ``None`` for a run that had none).

        Raises:
            RecordNotFoundError: Nothing (or nothing any more, after ``ttl``) is stored there
                for that conversation.
        """
        class_name = self._class_for(conversation_id)
        id = _parse_id(reference)
        if id is None:
            raise RecordNotFoundError(class_name, str(reference))
        store = await backend(self._url)
        (record,) = await store.load_records([(class_name, id)])
        if record is None:
            raise RecordNotFoundError(class_name, id)
        output = _decode(record)
        if output.conversation_id != conversation_id:  # a record copied under another name
            raise RecordNotFoundError(class_name, id)
        return output

    async def adelete(self, reference: UUID | str, *, conversation_id: str | None) -> bool:
        """Delete one stored output; return whether it existed."""
        id = _parse_id(reference)
        if id is None:
            return False
        return await (await backend(self._url)).delete(id, self._class_for(conversation_id))

    async def adelete_conversation(self, conversation_id: str) -> int:
        """Delete every output spilled during a conversation; return how many there were.

        :meth:`MessageStore.adelete <pydantic_toast.ai.MessageStore.adelete>` calls this when
        the store was given ``spill=``.
        """
        class_name = self._class_for(check_conversation_id(conversation_id))
        return await delete_all(await backend(self._url), class_name)

    # -- internals --------------------------------------------------------------------------------

    def _class_for(self, conversation_id: str | None) -> str:
        if conversation_id is None:
            return self._class_name
        return f"{self._class_name}/{check_conversation_id(conversation_id)}"

    async def _store(
        self, ctx: RunContext[Any], call: ToolCallPart, text: str, structured: bool
    ) -> UUID:
        now = datetime.now(UTC)
        escaped = "\x00" in text
        data = {
            "tool_name": call.tool_name,
            "tool_call_id": call.tool_call_id,
            "conversation_id": ctx.conversation_id,
            "structured": structured,
            "text": pydantic_core.to_json(text).decode() if escaped else text,
        }
        record = StoredRecord(
            class_name=self._class_for(ctx.conversation_id),
            id=uuid4(),
            data=pydantic_core.to_json(data),
            schema_version=_ESCAPED_FORMAT if escaped else FORMAT_VERSION,
            created_at=now,
            updated_at=now,
            ttl=self._ttl,
        )
        store = await backend(self._url)
        await store.save_records([record])
        return record.id

    def _note(self, id: UUID, tool_name: str, text: str, structured: bool) -> str:
        kind = "JSON" if structured else "text"
        path_hint = ', or json_path="$.key[0]" to select part of it first' if structured else ""
        return (
            f"[The {kind} output of {tool_name} is {len(text):,} characters, too long to show: "
            f'it is stored as ref="{id}". Below are its first {self._preview:,} characters. '
            f"Call {self.read_tool_name}(ref, offset, length) to read up to "
            f"{self.max_chars:,} characters from any offset{path_hint}.]\n"
            f"{text[: self._preview]}"
        )

    async def _read(
        self,
        ctx: RunContext[Any],
        ref: str,
        offset: int = 0,
        length: int | None = None,
        json_path: str | None = None,
    ) -> str:
        """Read part of a stored tool output.

        Mistakes (an unknown ref, a path leading nowhere) are answered with a bracketed note
        rather than a retry, so a confused model cannot exhaust the run's retries with them.

        Args:
            ctx: The run context.
            ref: The reference given in place of the output.
            offset: The first character to return.
            length: How many characters to return (at most the limit stated with the output).
            json_path: For JSON outputs, a path such as `$.items[2].name` to select first;
                offset and length then apply to the selected value's JSON.
        """
        try:
            id = _parse_id(ref)
            output = self._cache.get(id) if id is not None else None
            if output is None:
                # Only this conversation's outputs can be reached: another's is "unknown".
                output = await self.aload(ref, conversation_id=ctx.conversation_id)
                self._cache[output.id] = output
        except RecordNotFoundError:
            return _unknown(ref)
        text = output.text
        if json_path is not None:
            if not isinstance(output.content, dict | list):
                return "[json_path only applies to JSON outputs: use offset and length]"
            try:
                selected = select_json_path(output.content, json_path)
            except LookupError as exc:
                return f"[{exc}]"
            text = pydantic_core.to_json(selected).decode()
        length = self.max_chars if length is None else max(0, min(length, self.max_chars))
        offset = max(0, offset)
        chunk = text[offset : offset + length]
        where = f" at {json_path}" if json_path is not None else ""
        return (
            f"[characters {offset:,} to {offset + len(chunk):,} of {len(text):,}{where}]\n{chunk}"
        )


def _unknown(ref: str) -> str:
    return f"[there is no stored output {ref!r}: pass the ref exactly as it was given]"


# What passes through unspilled, alone or as an item of a returned list: Pydantic AI sends the
# model such items as files (an image, a document), which a note about their JSON would drop.
_PASSED = (bytes, bytearray, ToolReturn, *MULTI_MODAL_CONTENT_TYPES)


def _as_text(result: Any) -> tuple[str, bool] | None:
    """The text the model would see for ``result`` and whether it is JSON; ``None``: leave it."""
    if isinstance(result, str):
        return result, False
    if isinstance(result, _PASSED) or (
        isinstance(result, list | tuple) and any(isinstance(item, _PASSED) for item in result)
    ):
        return None  # multimodal or explicitly shaped returns pass through unchanged
    try:
        return pydantic_core.to_json(result).decode(), True
    except pydantic_core.PydanticSerializationError:
        return None


def _parse_id(reference: UUID | str) -> UUID | None:
    if isinstance(reference, UUID):
        return reference
    try:
        return UUID(reference.strip().strip("\"'"))
    except (ValueError, AttributeError):
        return None


def _decode(record: StoredRecord) -> SpilledOutput:
    if record.schema_version not in (FORMAT_VERSION, _ESCAPED_FORMAT):
        raise StoredDataError(
            f"the stored tool output {record.id} has format version {record.schema_version}, "
            f"not {FORMAT_VERSION} or {_ESCAPED_FORMAT}",
            class_name=record.class_name,
            id=record.id,
        )
    try:
        stored = _Stored.model_validate_json(record.data)
        text = stored.text
        if record.schema_version == _ESCAPED_FORMAT:
            text = pydantic_core.from_json(text)
            if not isinstance(text, str):
                raise ValueError("the escaped text is no JSON string")
        content = pydantic_core.from_json(text) if stored.structured else text
    except (ValidationError, ValueError):
        raise StoredDataError(
            f"the stored record {record.class_name} {record.id} is not a spilled tool output; "
            "it is left untouched",
            class_name=record.class_name,
            id=record.id,
        ) from None
    return SpilledOutput(
        id=record.id,
        tool_name=stored.tool_name,
        tool_call_id=stored.tool_call_id,
        conversation_id=stored.conversation_id,
        content=content,
        text=text,
        created_at=record.created_at,
    )


_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(-?\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")


def select_json_path(value: Any, path: str) -> Any:
    """The part of ``value`` at ``path``: ``$``, then ``.key``, ``[index]`` or ``['key']`` steps.

    Raises:
        LookupError: The path is malformed or leads nowhere (the message says where).
    """
    text = path.strip()
    if not text.startswith("$"):
        text = "$" + ("" if text.startswith("[") else ".") + text
    position, current, walked = 1, value, "$"
    while position < len(text):
        step = _STEP.match(text, position)
        if step is None:
            raise LookupError(
                f"cannot read json_path {path!r} at {text[position:]!r}: use steps like "
                "$.key, $.list[0] or $['odd key']"
            )
        name, index, quoted, double = step.groups()
        key = name if name is not None else quoted if quoted is not None else double
        if key is not None:
            if not isinstance(current, dict) or key not in current:
                keys = list(current)[:20] if isinstance(current, dict) else []
                raise LookupError(f"{walked} has no key {key!r} (keys: {keys})")
            current = current[key]
        else:
            if not isinstance(current, list) or not -len(current) <= int(index) < len(current):
                size = len(current) if isinstance(current, list) else "not a list"
                raise LookupError(f"{walked} has no item [{index}] (length: {size})")
            current = current[int(index)]
        walked += step.group(0)
        position = step.end()
    return current
