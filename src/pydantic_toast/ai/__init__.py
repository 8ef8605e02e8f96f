"""pydantic-toast for Pydantic AI: persistent conversations, spilled tool outputs, payloads.

Install with ``pip install 'pydantic-toast[ai]'`` (``pydantic-ai-slim`` only, no model SDK)::

    from pydantic_ai import Agent
    from pydantic_toast.ai import MessageStore, PersistentConversation, SpillToolOutputs

    store = MessageStore("postgresql://app@db/app")
    agent = Agent(
        "openai:gpt-5",
        capabilities=[PersistentConversation(store), SpillToolOutputs("postgresql://app@db/app")],
    )
    await agent.run("Hello", conversation_id="chat-42")
"""

try:
    import pydantic_ai  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a venv without Pydantic AI
    raise ImportError(
        "pydantic_toast.ai needs Pydantic AI (pydantic-ai-slim), which is not installed: "
        "run pip install 'pydantic-toast[ai]'",
        name=exc.name,
    ) from exc

from pydantic_toast.ai.capability import PersistentConversation
from pydantic_toast.ai.conversations import Appended, ConversationInfo, History, MessageStore
from pydantic_toast.ai.payloads import aload_payload, astore_payload
from pydantic_toast.ai.spill import SpilledOutput, SpillToolOutputs, select_json_path

__all__ = [
    "Appended",
    "ConversationInfo",
    "History",
    "MessageStore",
    "PersistentConversation",
    "SpillToolOutputs",
    "SpilledOutput",
    "aload_payload",
    "astore_payload",
    "select_json_path",
]
