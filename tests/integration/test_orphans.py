"""Orphan scans on every backend: report and delete the records nobody references; the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from pydantic import Field

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, OrphanReport
from pydantic_toast.integrations.cli import main as toast_cli

ROOT = Path(__file__).resolve().parents[2]


def _python(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python *args`` in a new process, in ``folder`` and importing from it (``env`` added)."""
    path = f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return subprocess.run(
        [sys.executable, *args], env={**os.environ, "PYTHONPATH": path, **env}, cwd=folder,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _classes(url: str) -> tuple[type[ExternalBaseModel], type[ExternalBaseModel]]:
    suffix = uuid4().hex

    class Tag(ExternalBaseModel):
        label: str
        model_config = ExternalConfigDict(storage=url, external_name=f"Tag{suffix}")

    class Post(ExternalBaseModel):
        title: str
        tags: list[Tag] = []
        model_config = ExternalConfigDict(storage=url, external_name=f"Post{suffix}")

    return Tag, Post


def test_orphans_are_found_in_pages_resumed_and_deleted(own_store_url: str) -> None:
    """Replaced tags are orphans; pages of 2 report them all, resume works, delete removes them.

    On a store of its own: deleting is refused while the store holds records of classes not
    imported (other tests' classes, once collected)."""
    tag, post = _classes(own_store_url)
    posts = [post(title=f"p{i}", tags=[tag(label=f"t{i}"), tag(label=f"u{i}")]) for i in range(3)]
    pydantic_toast.dump(posts)
    dropped = set()
    for item in posts[:2]:
        dropped.add(item.tags[0].model_dump()["id"])
        item.tags = item.tags[1:]
    pydantic_toast.dump(posts)
    lonely = tag(label="never referenced")
    dropped.add(lonely.model_dump()["id"])
    seen: list[tuple[str | None, int, int]] = []

    def progress(so_far: OrphanReport) -> None:
        seen.append((so_far.next_after, so_far.checked, len(so_far.orphans)))

    report = pydantic_toast.find_orphans(tag, batch_size=2, progress=progress)
    assert report.referencing == [post.model_config["external_name"]]
    assert {str(id) for id in report.orphans} == {str(id) for id in dropped}
    assert (report.checked, report.deleted, report.next_after) == (7, 0, None)
    assert [checked for _, checked, _ in seen] == [2, 4, 6, 7]
    after, _, orphans_before = seen[1]
    resumed = pydantic_toast.find_orphans(tag, batch_size=2, after=after)
    assert resumed.checked == 3
    assert resumed.orphans == report.orphans[orphans_before:]
    deleted = pydantic_toast.find_orphans(tag, delete=True, batch_size=3)
    assert deleted.deleted == 3
    assert pydantic_toast.count(tag) == 4
    assert pydantic_toast.find_orphans(tag).orphans == []
    for item in posts:
        assert len(post.model_validate(item.model_dump()).tags) >= 1  # type: ignore[attr-defined]


class _Client:
    """Not data: a handle a model keeps in a field excluded from its records."""


def test_a_model_holding_a_class_pydantic_has_no_schema_for_does_not_stop_scans(
    storage_url: str,
) -> None:
    """A live model with a field of an arbitrary class (``arbitrary_types_allowed``, excluded
    with a default) is looked through like any other: the scan of another class reports its
    orphans (it raised PydanticSchemaGenerationError, whatever class was scanned)."""
    tag, post = _classes(storage_url)
    service: Any = type(
        "Service",
        (ExternalBaseModel,),
        {
            "__annotations__": {"name": str, "client": _Client | None},
            "client": Field(default=None, exclude=True),
            "model_config": ExternalConfigDict(
                storage=storage_url,
                external_name=f"Service{uuid4().hex}",
                arbitrary_types_allowed=True,
            ),
        },
    )
    service(name="svc", client=_Client()).model_dump()
    kept = post(title="p", tags=[tag(label="kept")])
    kept.model_dump()
    lonely = tag(label="lonely").model_dump()
    report = pydantic_toast.find_orphans(tag)
    assert report.referencing == [post.model_config["external_name"]]
    assert [str(id) for id in report.orphans] == [lonely["id"]]


async def test_records_created_during_the_scan_are_not_reported(storage_url: str) -> None:
    """A tag saved after the scan started (its post not saved yet) is not reported."""
    tag, post = _classes(storage_url)
    old = tag(label="old")
    await old.asave()

    def sources() -> Iterator[type[ExternalBaseModel]]:
        # Runs once the scan has started: a writer elsewhere saves a tag, its post to follow.
        writer = threading.Thread(target=lambda: tag(label="new").model_dump())
        writer.start()
        writer.join()
        yield post

    report = await pydantic_toast.afind_orphans(tag, referencing=sources())
    assert report.checked == 2  # the new tag was listed...
    assert report.orphans == [old.external_id]  # type: ignore[attr-defined]  # ...not reported


@pytest.mark.sqlite
def test_orphans_command_reports_deletes_and_refuses_unknown_classes(tmp_path: Path) -> None:
    """The CLI imports the models, prints orphan ids and progress, deletes with --delete."""
    url = f"sqlite:///{tmp_path / 'orphans.db'}"
    assert toast_cli(["migrate", url]) == 0
    (tmp_path / "blog_models.py").write_text(
        textwrap.dedent(
            f"""
            from pydantic_toast import ExternalBaseModel, ExternalConfigDict

            class Tag(ExternalBaseModel):
                label: str
                model_config = ExternalConfigDict(storage="{url}")

            class Post(ExternalBaseModel):
                tags: list[Tag] = []
                model_config = ExternalConfigDict(storage="{url}")
            """
        )
    )
    setup = (
        "import blog_models as m; p = m.Post(tags=[m.Tag(label='a')]); p.model_dump(); "
        "print(m.Tag(label='b').model_dump()['id'])"
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return _python(tmp_path, *args)

    orphan = run("-c", setup).stdout.strip()
    cli = ["-m", "pydantic_toast.integrations.cli", "orphans", url, "--module", "blog_models"]
    found = run(*cli, "--class", "Tag")
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [orphan]
    assert "checked 2, orphans 1" in found.stderr
    deleted = run(*cli, "--class", "Tag", "--delete")
    assert deleted.returncode == 0, deleted.stderr
    assert "deleted 1" in deleted.stderr
    assert run(*cli, "--class", "Tag").stdout.split() == []
    unknown = run(*cli, "--class", "Nope")
    assert unknown.returncode == 2
    assert "no imported model is stored as 'Nope'" in unknown.stderr
    other = f"sqlite:///{tmp_path / 'other.db'}"
    elsewhere = run(*cli[:3], other, *cli[4:], "--class", "Tag")
    assert elsewhere.returncode == 2
    assert f"stored elsewhere: blog_models.Tag in {url}" in elsewhere.stderr


@pytest.mark.sqlite
def test_a_fresh_process_finds_the_referencing_classes_of_env_storage(tmp_path: Path) -> None:
    """Models stored at ``env:NAME`` join the catalog only once used: a scan in a new process
    (a cron job) still reads their referencing class, and deletes only the real orphan."""
    url = f"sqlite:///{tmp_path / 'orphans.db'}"
    assert toast_cli(["migrate", url]) == 0
    (tmp_path / "env_models.py").write_text(
        textwrap.dedent(
            """
            from pydantic_toast import ExternalBaseModel, ExternalConfigDict

            class Tag(ExternalBaseModel):
                label: str
                model_config = ExternalConfigDict(storage="env:ORPHAN_TEST_STORE")

            class Post(ExternalBaseModel):
                tags: list[Tag] = []
                model_config = ExternalConfigDict(storage="env:ORPHAN_TEST_STORE")
            """
        )
    )

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return _python(tmp_path, *args, **{"ORPHAN_TEST_STORE": url, **extra})

    setup = (
        "import env_models as m; p = m.Post(tags=[m.Tag(label='a')]); "
        "print(p.model_dump()['id'], m.Tag(label='b').model_dump()['id'])"
    )
    post_id, orphan = run("-c", setup).stdout.split()
    scan = (
        "import env_models as m, pydantic_toast; "
        "r = pydantic_toast.find_orphans(m.Tag); print(r.referencing, [str(i) for i in r.orphans])"
    )
    assert run("-c", scan).stdout.strip() == f"['Post'] ['{orphan}']"
    cli = ["-m", "pydantic_toast.integrations.cli", "orphans", url, "--module", "env_models"]
    deleted = run(*cli, "--class", "Tag", "--delete")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.split() == [orphan]
    assert "deleted 1" in deleted.stderr
    reference = {"class_name": "Post", "id": post_id}
    load = f"import env_models as m; print(len(m.Post.model_validate({reference!r}).tags))"
    assert run("-c", load).stdout.strip() == "1"  # its tag is still there
    unset = run(*cli, "--class", "Tag", ORPHAN_TEST_STORE="")
    assert unset.returncode == 2
    assert "ORPHAN_TEST_STORE" in unset.stderr, unset.stderr


@pytest.mark.sqlite
def test_a_fresh_process_completes_models_defined_before_their_fields_classes(
    tmp_path: Path,
) -> None:
    """Under ``from __future__ import annotations`` a class defined before its fields' class
    stays incomplete until first used: a scan in a new process completes it and reads it."""
    url = f"sqlite:///{tmp_path / 'orphans.db'}"
    assert toast_cli(["migrate", url]) == 0
    (tmp_path / "late_models.py").write_text(
        textwrap.dedent(
            f"""
            from __future__ import annotations

            from pydantic_toast import ExternalBaseModel, ExternalConfigDict

            class Parent(ExternalBaseModel):
                children: list[Child] = []
                model_config = ExternalConfigDict(storage="{url}")

            class Child(ExternalBaseModel):
                label: str
                model_config = ExternalConfigDict(storage="{url}")
            """
        )
    )

    def run(code: str) -> str:
        done = _python(tmp_path, "-c", code)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    orphan = run(
        "import late_models as m; m.Parent(children=[m.Child(label='kept')]).model_dump(); "
        "print(m.Child(label='alone').model_dump()['id'])"
    )
    scan = (
        "import late_models as m, pydantic_toast; assert not m.Parent.__pydantic_complete__; "
        "r = pydantic_toast.find_orphans(m.Child); "
        "print(r.referencing, [str(i) for i in r.orphans])"
    )
    assert run(scan) == f"['Parent'] ['{orphan}']"
