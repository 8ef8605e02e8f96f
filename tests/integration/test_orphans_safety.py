"""Orphan deletion never deletes a record something stored still references: records of a
class whose model is not imported refuse it, AI payloads are read for references."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar
from uuid import uuid4

import pydantic_core
import pytest
from pydantic import BaseModel

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    StorageBackend,
    StorageConfigurationError,
    StorageURL,
    register_backend,
    unregister_backend,
)
from pydantic_toast._records import StoredRecord
from pydantic_toast.ai import aload_payload, astore_payload
from pydantic_toast.backends.memory import MemoryBackend

T = TypeVar("T")


def _run(job: Callable[[], Awaitable[T]]) -> T:
    """``job()`` on a loop of its own, the storage closed after it (its pools are bound to
    that loop)."""

    async def closing() -> T:
        try:
            return await job()
        finally:
            await pydantic_toast.aclose_storage()

    return asyncio.run(closing())


def _tag_class(url: str) -> type[ExternalBaseModel]:
    class Tag(ExternalBaseModel):
        label: str
        model_config = ExternalConfigDict(storage=url, external_name=f"Tag{uuid4().hex}")

    return Tag


def _store_unimported_post(
    url: str, tag_reference: dict[str, str], class_name: str = "", data: bytes = b""
) -> None:
    """A record of a class no model in this process describes, referencing a tag (what a
    post leaves in the store when its module is not imported); ``data`` instead, if given."""
    now = datetime.now(UTC)
    record = StoredRecord(
        class_name=class_name or f"Post{uuid4().hex}",
        id=uuid4(),
        data=data or pydantic_core.to_json({"title": "p", "tags": [tag_reference]}),
        schema_version=1,
        created_at=now,
        updated_at=now,
    )

    async def save() -> None:
        backend = await pydantic_toast.current_storage().connected(StorageURL.parse(url))
        await backend.save_records([record])

    _run(save)


def test_a_referencing_class_not_imported_refuses_deletion(own_store_url: str) -> None:
    """Records of a class whose model is not imported refuse ``delete=True`` before anything
    is deleted; the report names that class; read as JSON they keep the tag they reference."""
    tag = _tag_class(own_store_url)
    used, lonely = tag(label="used").model_dump(), tag(label="lonely").model_dump()
    _store_unimported_post(own_store_url, used)
    with pytest.raises(StorageConfigurationError, match="refusing to delete the orphans") as info:
        pydantic_toast.find_orphans(tag, delete=True)
    assert "not imported" in str(info.value)
    assert pydantic_toast.count(tag) == 2
    report = pydantic_toast.find_orphans(tag)
    assert report.unread is not None
    assert [n.startswith("Post") for n in report.unread] == [True]
    assert {str(id) for id in report.orphans} == {used["id"], lonely["id"]}
    deleted = pydantic_toast.find_orphans(tag, delete=True, read_unimported=True)
    assert [str(id) for id in deleted.orphans] == [lonely["id"]]
    assert tag.model_validate(used).label == "used"  # type: ignore[attr-defined]


def test_an_unimported_class_that_is_not_plain_json_still_refuses_deletion(
    memory_url: str,
) -> None:
    """With ``read_unimported=True``, an unimported class whose records are encoded (here an
    envelope, as compression writes) stays unread and refuses ``delete=True``; the plain one
    listed after it is still read."""
    tag = _tag_class(memory_url)
    used, lonely = tag(label="used").model_dump(), tag(label="lonely").model_dump()
    envelope = b'{"$toast": {"codec": "zstd"}, "data": "KLUv/QBYAQAA"}'
    _store_unimported_post(memory_url, used, class_name=f"A{uuid4().hex}", data=envelope)
    _store_unimported_post(memory_url, used, class_name=f"B{uuid4().hex}")
    report = pydantic_toast.find_orphans(tag, read_unimported=True)
    assert report.unread is not None
    assert [n[0] for n in report.unread] == ["A"]
    assert [n[0] for n in report.read_as_json] == ["B"]
    assert [str(id) for id in report.orphans] == [lonely["id"]]
    with pytest.raises(StorageConfigurationError, match="not imported"):
        pydantic_toast.find_orphans(tag, delete=True, read_unimported=True)
    assert pydantic_toast.count(tag) == 2


def test_no_referencing_class_refuses_deleting_every_record(own_store_url: str) -> None:
    """With no imported model able to reference the class, ``delete=True`` is refused (every
    record would go); ``referencing=[]`` says nothing references it, and deletes them."""
    tag = _tag_class(own_store_url)
    pydantic_toast.dump([tag(label="a"), tag(label="b")])
    with pytest.raises(StorageConfigurationError, match="no imported model can reference"):
        pydantic_toast.find_orphans(tag, delete=True)
    assert pydantic_toast.count(tag) == 2
    assert pydantic_toast.find_orphans(tag, referencing=[], delete=True).deleted == 2
    assert pydantic_toast.count(tag) == 0


def test_given_referencing_classes_never_leave_out_one_known_to_reference(
    own_store_url: str,
) -> None:
    """``referencing=[]`` or another class does not make the scan skip an imported model whose
    fields hold the class: the tag a post references is kept, the one nobody does goes."""
    tag = _tag_class(own_store_url)

    class Post(ExternalBaseModel):
        tag: tag  # type: ignore[valid-type]
        model_config = ExternalConfigDict(storage=own_store_url, external_name=f"P{uuid4().hex}")

    kept = tag(label="kept")
    Post(tag=kept).model_dump()
    lonely = tag(label="lonely")
    lonely.model_dump()
    for given in ([], [tag]):
        report = pydantic_toast.find_orphans(tag, referencing=given)
        assert report.orphans == [lonely.external_id]
    report = pydantic_toast.find_orphans(tag, referencing=[], delete=True)
    assert report.deleted == 1
    assert (
        tag.model_validate(
            {"class_name": kept.model_dump()["class_name"], "id": str(kept.external_id)}
        ).label
        == "kept"
    )  # type: ignore[attr-defined]
    assert pydantic_toast.count(tag) == 1


def test_a_tag_held_only_by_an_ai_payload_is_not_deleted(own_store_url: str) -> None:
    """A tag referenced only from an ``astore_payload`` payload is no orphan: the payload still
    loads after a delete, which deletes the tag nobody references."""
    tag = _tag_class(own_store_url)

    class Post(ExternalBaseModel):
        tags: list[tag] = []  # type: ignore[valid-type]
        model_config = ExternalConfigDict(storage=own_store_url, external_name=f"P{uuid4().hex}")

    class Job(BaseModel):
        tag: tag  # type: ignore[valid-type]

    Post(tags=[tag(label="by post")]).model_dump()
    held, lonely = tag(label="by payload"), tag(label="lonely").model_dump()

    async def store() -> pydantic_toast.ExternalReference:
        return await astore_payload(own_store_url, Job(tag=held), namespace="orphans")

    reference = _run(store)
    report = pydantic_toast.find_orphans(tag, delete=True)
    assert [str(id) for id in report.orphans] == [lonely["id"]]
    assert report.read_as_json == ["pydantic_toast.ai.payloads.orphans"]

    async def load() -> Job:
        return await aload_payload(own_store_url, reference, Job, namespace="orphans")

    assert _run(load).tag.label == "by payload"  # type: ignore[attr-defined]


def _python(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python *args`` in a new process, in ``folder`` and importing from it."""
    path = f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return subprocess.run(
        [sys.executable, *args], env={**os.environ, "PYTHONPATH": path}, cwd=folder,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


# memory:// is not shared with the command's process: the stores a command can open.
@pytest.mark.parametrize("own_store_url", ["sqlite", "postgresql", "redis", "s3"], indirect=True)
def test_orphans_command_refuses_delete_without_the_referencing_module(
    own_store_url: str, tmp_path: Path
) -> None:
    """``orphans --delete`` without the module of the posts exits 2 naming the fix and deletes
    nothing; with it, the orphan goes and the tags of posts and payloads stay."""
    url = own_store_url
    package = tmp_path / f"m{uuid4().hex[:8]}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tags.py").write_text(
        textwrap.dedent(
            f"""
            from pydantic_toast import ExternalBaseModel, ExternalConfigDict
            class Tag(ExternalBaseModel):
                label: str
                model_config = ExternalConfigDict(storage="{url}")
            """
        )
    )
    (package / "posts.py").write_text(
        textwrap.dedent(
            f"""
            from pydantic_toast import ExternalBaseModel, ExternalConfigDict
            from {package.name}.tags import Tag
            class Post(ExternalBaseModel):
                tags: list[Tag]
                model_config = ExternalConfigDict(storage="{url}")
            """
        )
    )
    setup = textwrap.dedent(
        f"""
        import asyncio
        from pydantic import BaseModel
        from pydantic_toast.ai import astore_payload
        from {package.name}.tags import Tag
        from {package.name}.posts import Post
        class Job(BaseModel):
            tag: Tag
        Post(tags=[Tag(label="by post")]).model_dump()
        asyncio.run(astore_payload("{url}", Job(tag=Tag(label="by payload"))))
        print(Tag(label="lonely").model_dump()["id"])
        """
    )
    made = _python(tmp_path, "-c", setup)
    assert made.returncode == 0, made.stderr
    orphan = made.stdout.strip()
    cli = ["-m", "pydantic_toast.integrations.cli", "orphans", url, "--class", "Tag"]
    tags = ["--module", f"{package.name}.tags"]
    refused = _python(tmp_path, *cli, *tags, "--delete")
    assert refused.returncode == 2, refused.stderr
    assert "refusing --delete" in refused.stderr
    assert "Post" in refused.stderr
    assert "--module" in refused.stderr
    count = f"import pydantic_toast as t; from {package.name}.tags import Tag; print(t.count(Tag))"
    assert _python(tmp_path, "-c", count).stdout.strip() == "3"
    deleted = _python(tmp_path, *cli, *tags, "--module", f"{package.name}.posts", "--delete")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.split() == [orphan]
    assert "pydantic_toast.ai.payloads" in deleted.stderr
    assert _python(tmp_path, "-c", count).stdout.strip() == "2"


def test_a_memory_store_lists_its_class_names(memory_url: str) -> None:
    """``list_class_names`` names each class with a live record, once."""
    tag = _tag_class(memory_url)
    pydantic_toast.dump([tag(label="a"), tag(label="b")])

    async def names() -> list[str]:
        backend = await pydantic_toast.current_storage().connected(StorageURL.parse(memory_url))
        return await backend.list_class_names()

    assert _run(names) == [tag.model_config["external_name"]]


class _UnlistingBackend(MemoryBackend):
    """memory:// as a backend of one's own that cannot list its class names."""

    async def list_class_names(self) -> list[str]:
        return await StorageBackend.list_class_names(self)


def test_a_store_that_cannot_list_its_classes_reports_orphans_but_never_deletes() -> None:
    """On a backend without ``list_class_names`` the report's ``unread`` is ``None`` and
    ``delete=True`` is refused, whatever the imported models."""
    register_backend("unlisting", _UnlistingBackend)
    try:
        url = f"unlisting://{uuid4().hex}"
        tag = _tag_class(url)

        class Post(ExternalBaseModel):
            tags: list[tag] = []  # type: ignore[valid-type]
            model_config = ExternalConfigDict(storage=url, external_name=f"P{uuid4().hex}")

        Post(tags=[tag(label="used")]).model_dump()
        tag(label="lonely").model_dump()
        report = pydantic_toast.find_orphans(tag)
        assert (len(report.orphans), report.unread) == (1, None)
        with pytest.raises(StorageConfigurationError, match="cannot list the class names"):
            pydantic_toast.find_orphans(tag, delete=True)
        assert pydantic_toast.count(tag) == 2
    finally:
        pydantic_toast.close_storage()
        unregister_backend("unlisting")
