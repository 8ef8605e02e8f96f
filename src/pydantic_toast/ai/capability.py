"""``PersistentConversation``: a capability restoring a run's history and appending its turn."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic_ai import RunContext
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.run import AgentRunResult

from pydantic_toast._exceptions import StorageUsageError
from pydantic_toast.ai.conversations import MessageStore

__all__ = ["PersistentConversation"]


@dataclass
class PersistentConversation(AbstractCapability[Any]):
    """Keep an agent's conversations in a :class:`~pydantic_toast.ai.MessageStore`.

    Before a run it loads the conversation's history and puts it in front of the new prompt;
    after a successful run it appends the run's new messages (one record, nothing rewritten)::

        store = MessageStore("postgresql://app@db/app")
        agent = Agent(model, capabilities=[PersistentConversation(store)])
        await agent.run("Hello", conversation_id="chat-42")
        await agent.run("And then?", conversation_id="chat-42")  # sees the first turn

    The conversation is the run's ``conversation_id`` (``agent.run(..., conversation_id=...)``)
    unless one is fixed here; a fixed one is also the run's ``conversation_id`` when the run is
    given none, so :class:`~pydantic_toast.ai.SpillToolOutputs` keeps the run's outputs with
    the conversation, and a run given another one is refused (``StorageUsageError``): its
    turns and its spilled outputs would be kept apart. When the app passes
    ``message_history=`` itself, that history is used as given and only the new messages are
    appended. A run that fails appends nothing.

    Attributes:
        store: Where conversations are kept.
        conversation_id: A fixed conversation for every run of this capability; by default the
            run's own ``conversation_id``.
        limit: Restore only the newest turns holding at least this many messages (whole turns);
            everything stays stored.
    """

    store: MessageStore
    conversation_id: str | None = None
    limit: int | None = None
    _position: datetime | None = field(default=None, init=False, repr=False, compare=False)

    async def for_run(self, ctx: RunContext[Any]) -> AbstractCapability[Any]:
        """A fresh copy per run, so concurrent runs of one agent keep their own position."""
        return dataclasses.replace(self)

    def get_default_conversation_id(self, run_id: str) -> str | None:
        """The fixed conversation, as the ``conversation_id`` of a run given none.

        Without it such a run got a fresh id from Pydantic AI, under which ``SpillToolOutputs``
        stored its outputs: the next run's read tool could not reach them, and deleting the
        conversation left them behind.
        """
        return self.conversation_id

    def _conversation(self, ctx: RunContext[Any]) -> str:
        fixed = self.conversation_id
        if fixed is not None and ctx.conversation_id not in (None, fixed):
            # Its turns would go to the fixed conversation, its spilled outputs to the run's.
            raise StorageUsageError(
                f"this PersistentConversation keeps the conversation {fixed!r}, but the run's "
                f"conversation_id is {ctx.conversation_id!r} (passed to the run, or taken from "
                f"its message_history): run it with conversation_id={fixed!r}, or none"
            )
        conversation_id = fixed or ctx.conversation_id
        if conversation_id is None:  # pydantic-ai always resolves one; be explicit if not
            raise RuntimeError("the run has no conversation_id: pass conversation_id=")
        return conversation_id

    async def before_run(self, ctx: RunContext[Any]) -> None:
        """Put the stored history in front of the run's messages (unless the app passed one)."""
        conversation = self._conversation(ctx)  # (refuses a run of another conversation)
        if ctx.messages:
            return
        history = await self.store.aload(conversation, limit=self.limit)
        self._position = history.position
        ctx.messages[:0] = history.messages

    async def after_run(
        self, ctx: RunContext[Any], *, result: AgentRunResult[Any]
    ) -> AgentRunResult[Any]:
        """Append the run's new messages as one batch, with the run's usage."""
        await self.store.aappend(
            self._conversation(ctx),
            result.new_messages(),
            after=self._position,
            usage=result.usage,
        )
        return result
