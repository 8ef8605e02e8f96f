"""The ai extra stays optional: the core package imports nothing of Pydantic AI."""

from __future__ import annotations

import subprocess
import sys


def test_importing_pydantic_toast_imports_no_pydantic_ai() -> None:
    """`import pydantic_toast` loads no pydantic_ai module; `pydantic_toast.ai` does."""
    code = (
        "import sys, pydantic_toast\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic_ai'))\n"
        "import pydantic_toast.ai\n"
        "print('pydantic_ai' in sys.modules)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert output[0] == "[]"
    assert output[1] == "True"


def test_the_ai_package_pins_its_public_names() -> None:
    """pydantic_toast.ai.__all__ is sorted and every name resolves."""
    import pydantic_toast.ai as ai

    assert ai.__all__ == sorted(ai.__all__)
    assert set(ai.__all__) == {
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
    }
    for name in ai.__all__:
        assert getattr(ai, name) is not None


async def test_ttl_is_refused_where_records_do_not_expire() -> None:
    """On a backend without Capability.TTL, every ai ttl= fails at once with the fix."""
    import pytest

    from pydantic_toast import StorageConfigurationError, register_backend
    from pydantic_toast.ai import MessageStore, SpillToolOutputs, astore_payload
    from pydantic_toast.backends.base import Capability
    from pydantic_toast.backends.memory import MemoryBackend
    from pydantic_toast.runtime.storage import current_storage

    class NeverExpires(MemoryBackend):
        capabilities = MemoryBackend.capabilities - {Capability.TTL}

    register_backend("neverexpires", NeverExpires)
    try:
        with pytest.raises(StorageConfigurationError, match="does not expire records"):
            MessageStore("neverexpires://x", ttl=60)
        with pytest.raises(StorageConfigurationError, match="does not expire records"):
            SpillToolOutputs("neverexpires://x", ttl=60)
        with pytest.raises(StorageConfigurationError, match="does not expire records"):
            await astore_payload("neverexpires://x", {"a": 1}, ttl=60)
        assert MessageStore("neverexpires://x").ttl is None  # without ttl it is accepted
    finally:
        current_storage().unregister_backend("neverexpires")
