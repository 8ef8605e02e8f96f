"""Every Python snippet of docs/quickstart.md runs as written, against the test servers.

The snippets run in order in one namespace, as a reader would paste them. Only their
connection targets change: the PostgreSQL URLs point at the session's migrated database, the
Redis URL gets a key prefix of this test's own, and file:///tmp/models a temporary folder.
"""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path
from uuid import uuid4

import pytest

import pydantic_toast

pytestmark = [pytest.mark.postgresql, pytest.mark.redis]
QUICKSTART = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", QUICKSTART.read_text(), flags=re.S)


def test_quickstart_has_the_expected_snippets() -> None:
    """The guide still has its seven Python snippets (a guard against silent edits)."""
    assert len(snippets()) == 7


BLOCKING = {"model_dump", "model_dump_json", "model_validate", "model_validate_json"}


def test_async_code_uses_the_async_api() -> None:
    """No `async def` in the guide calls the blocking API (it would block the event loop)."""
    for snippet in snippets():
        for function in ast.walk(ast.parse(snippet)):
            if isinstance(function, ast.AsyncFunctionDef):
                called = {
                    node.func.attr
                    for node in ast.walk(function)
                    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                }
                assert not called & BLOCKING, (function.name, called & BLOCKING)


def test_guide_says_to_migrate_before_the_first_model() -> None:
    """`pydantic-toast migrate` comes before the first Python snippet."""
    text = QUICKSTART.read_text()
    assert text.index("pydantic-toast migrate") < text.index("```python")


def test_every_snippet_runs(
    postgres_database_url: str,
    redis_base_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Define, store (sync and async), PostgreSQL, Redis, custom backend, errors, FastAPI."""
    prefix = f"toast_test_{uuid4().hex[:10]}"
    targets = {
        "postgresql://user:pass@localhost:5432/mydb": postgres_database_url,
        "postgresql://postgres:password@localhost:5432/documents": postgres_database_url,
        '"postgresql://..."': f'"{postgres_database_url}"',
        "redis://localhost:6379/0": f"{redis_base_url}?prefix={prefix}",
        "file:///tmp/models": f"file://{tmp_path}",
    }
    namespace: dict[str, object] = {"__name__": "quickstart"}
    try:
        for snippet in snippets():
            for written, target in targets.items():
                snippet = snippet.replace(written, target)
            before = set(namespace)
            exec(compile(snippet, str(QUICKSTART), "exec"), namespace)
            for name in ("example", "safe_restore"):
                if name in namespace and (name not in before or name in snippet):
                    asyncio.run(namespace[name]())  # type: ignore[operator]
        output = capsys.readouterr().out
        assert "'class_name': 'UserProfile'" in output
        assert "Alice\nalice@example.com" in output
        assert "Bob\n" in output  # the async API in main()
        assert "Record not found: " in output  # a well-formed id nothing is stored under

        my_model = namespace["MyModel"]
        reference = my_model(data="on disk").model_dump()  # type: ignore[operator]
        assert (tmp_path / f"MyModel_{reference['id']}.json").exists()
        assert my_model.model_validate(reference).data == "on disk"  # type: ignore[attr-defined]

        from fastapi.testclient import TestClient

        with TestClient(namespace["app"]) as client:  # type: ignore[arg-type]
            created = client.post(
                "/orders", params={"product": "tea", "quantity": 2, "email": "a@b.c"}
            )
            assert created.status_code == 200, created.text
            assert set(created.json()) == {"class_name", "id"}
            fetched = client.get(f"/orders/{created.json()['id']}")
            assert fetched.json() == {"product": "tea", "quantity": 2}
    finally:
        pydantic_toast.close_storage()
        import redis

        client_ = redis.Redis.from_url(redis_base_url)
        keys = list(client_.scan_iter(match=f"{prefix}:*"))
        if keys:
            client_.delete(*keys)
        client_.close()
