"""Every Python snippet of docs/ai.md runs as written, against the test servers."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from uuid import uuid4

import pytest

from tests.integration.conftest import _delete_redis_prefix

pytestmark = [pytest.mark.postgresql, pytest.mark.redis]
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "ai.md"


def snippets() -> list[str]:
    """The guide's Python blocks, but for fragments marked ``docs-test: skip`` (tested apart)."""
    blocks = re.finditer(
        r"(<!-- docs-test: skip: [^>]+ -->\n)?```python\n(.*?)```", GUIDE.read_text(), flags=re.S
    )
    return [block[2] for block in blocks if block[1] is None]


def test_the_guide_has_its_snippets() -> None:
    """The guide still has its four Python snippets (a guard against silent edits)."""
    assert len(snippets()) == 4


@pytest.mark.parametrize("index", range(4))
def test_snippet_runs(
    index: int, postgres_database_url: str, redis_base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The capability, plain functions, spill and payload snippets run and check themselves."""
    prefix = f"toast_test_{uuid4().hex[:10]}"
    snippet = (
        snippets()[index]
        .replace("postgresql://app@localhost:5432/app", postgres_database_url)
        .replace("redis://localhost:6379/0", f"{redis_base_url}?prefix={prefix}")
        .replace('"chat-42"', f'"chat-{prefix}"')
        .replace('"audit-1"', f'"audit-{prefix}"')
    )
    # A module of its own, as a reader's script would be (dataclasses look their module up).
    module = types.ModuleType(f"ai_guide_{index}")
    sys.modules[module.__name__] = module
    try:
        exec(compile(snippet, f"{GUIDE}#{index}", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
        _delete_redis_prefix(redis_base_url, prefix)
    output = capsys.readouterr().out
    expected = [
        ["4 messages stored\n2 requests,"],
        ["['support-7']\n2 turns deleted"],
        ["[The text output of export is 1,200,000 characters", "deleted with its conversation"],
        ["forged reference refused"],
    ][index]
    for text in expected:
        assert text in output
