"""Every Python block in docs/*.md and README.md runs as written, against the test servers.

The blocks of one page run in order in one namespace, in a temporary folder, as a reader would
paste them. Only their connection targets change (the PostgreSQL URL points at a fresh migrated
database, the Redis URL gets a key prefix of the test's own), and each `pydantic-toast migrate`
line of the page's shell blocks runs before its Python blocks. A block opts out only with
the marker comment ``<!-- docs-test: skip: <reason> -->`` on the line before it.
docs/quickstart.md and docs/ai.md have tests of their own (see OWN_TESTS).
"""

from __future__ import annotations

import gc
import re
import sys
import types
from pathlib import Path
from uuid import uuid4

import pytest

import pydantic_toast
from pydantic_toast import StorageBackend, register_backend
from pydantic_toast.integrations.cli import main as toast_cli
from pydantic_toast.testing.conformance import BackendConformance
from tests.integration.conftest import _delete_redis_prefix

ROOT = Path(__file__).resolve().parents[2]
# Pages whose blocks have a test of their own (they share one namespace across the page).
OWN_TESTS = {"quickstart.md": "test_quickstart.py", "ai.md": "test_ai_docs.py"}
PAGES = sorted(
    p for p in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")] if p.name not in OWN_TESTS
)
BLOCK = re.compile(
    r"(?:<!-- docs-test: skip: (?P<reason>[^>]+?) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)```", re.S
)
POSTGRES_IN_DOCS = re.compile(r"postgresql://app@db:5432/shop")
REDIS_IN_DOCS = "redis://localhost:6379/0"


def blocks(page: Path) -> list[tuple[str, str, str | None]]:
    """(language, code, skip reason) of each fenced block."""
    return [(m["lang"], m["code"], m["reason"]) for m in BLOCK.finditer(page.read_text())]


def test_every_page_is_collected() -> None:
    """README and every docs page except the quickstart are run below (a guard on the glob)."""
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "docs/index.md", "docs/concepts.md", "docs/errors.md"} <= names
    assert len(names) >= 12


def test_skipped_blocks_say_why() -> None:
    """An opted-out block gives a reason of at least a few words."""
    for page in PAGES:
        for _, _, reason in blocks(page):
            if reason is not None:
                assert len(reason.split()) >= 3, (page, reason)


def test_sqlite_files_are_migrated_before_a_block_uses_them() -> None:
    """A reader runs a page top to bottom: the `pydantic-toast migrate sqlite:///...` of a file
    comes before the first Python block that uses it (the test below runs every migrate line
    first, so it would not notice the order; lifecycle.md showed it after its ttl example)."""
    late = []
    for page in PAGES:
        migrated: set[str] = set()
        for lang, code, reason in blocks(page):
            if lang == "bash":
                migrated |= set(re.findall(r"^pydantic-toast migrate (sqlite:///\S+)", code, re.M))
            elif lang == "python" and reason is None:
                used = set(re.findall(r"sqlite:///[^\"'\s]+", code))
                late += [(page.name, url) for url in sorted(used - migrated)]
    assert late == []


@pytest.mark.postgresql
@pytest.mark.redis
@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_page_examples_run(
    page: Path,
    empty_database: str,
    redis_base_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The page's migrate commands and Python blocks run without error."""
    monkeypatch.chdir(tmp_path)
    prefix = f"toast_docs_{uuid4().hex[:10]}"

    def target(text: str) -> str:
        text = POSTGRES_IN_DOCS.sub(empty_database, text)
        text = text.replace(REDIS_IN_DOCS, f"{redis_base_url}?prefix={prefix}")
        return text.replace("file:///tmp/", f"file://{tmp_path}/")

    # A module of its own, importable as a reader's file is (a generic model parametrized at
    # the top level is put in its module's globals by Pydantic).
    module = types.ModuleType(f"docs_{page.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    ran = 0
    try:
        for lang, code, reason in blocks(page):
            if lang == "bash" and reason is None:
                for url in re.findall(r"^pydantic-toast migrate (\S+)", code, flags=re.M):
                    assert toast_cli(["migrate", target(url)]) == 0
        for lang, code, reason in blocks(page):
            if lang == "python" and reason is None:
                # dont_inherit: a reader's file has no `from __future__ import annotations`.
                exec(compile(target(code), str(page), "exec", dont_inherit=True), namespace)
                ran += 1
        capsys.readouterr()
    finally:
        namespace.clear()
        pydantic_toast.close_storage()
        gc.collect()
        _delete_redis_prefix(redis_base_url, prefix)
    python_blocks = [b for b in blocks(page) if b[0] == "python"]
    assert ran == len([b for b in python_blocks if b[2] is None])


def _docs_file_backend(page: str = "backends/custom.md") -> type[StorageBackend]:
    """The FileBackend class of a docs page, as the first block defining it has it."""
    code = next(
        block[1] for block in blocks(ROOT / "docs" / page) if "class FileBackend(" in block[1]
    )
    definition = code.split('register_backend("file", FileBackend)')[0]
    namespace: dict[str, object] = {"__name__": "docs_custom_backend"}
    exec(compile(definition, f"docs/{page}", "exec", dont_inherit=True), namespace)
    backend = namespace["FileBackend"]
    assert isinstance(backend, type)
    assert issubclass(backend, StorageBackend)
    return backend


class TestDocsFileBackend(BackendConformance):
    """The page's example backend passes the conformance suite the page tells readers to run."""

    @pytest.fixture
    def storage_url(self, tmp_path: Path) -> str:
        register_backend("file", _docs_file_backend())
        return f"file://{tmp_path}"


class TestQuickstartFileBackend(BackendConformance):
    """The quickstart's example backend passes the suite too: it wrote over a record's
    created_at on every update, which the interface and the suite forbid."""

    @pytest.fixture
    def storage_url(self, tmp_path: Path) -> str:
        register_backend("file", _docs_file_backend("quickstart.md"))
        return f"file://{tmp_path}"
