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
