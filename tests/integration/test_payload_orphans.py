"""Offloaded payloads no record points to: found (and deleted) by the orphan tooling."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

import pydantic_toast
from pydantic_toast import OrphanReport, StorageConfigurationError
from pydantic_toast._offload import payload_class
from pydantic_toast._url import StorageURL
from tests.integration.test_compression import stored
from tests.integration.test_offload import report_model

BIG = "payload that goes out of line. " * 10_000  # ~310 KB: offloaded


async def _on(url: str, job: Any) -> Any:
    backend = await pydantic_toast.current_storage().connected(StorageURL.parse(url))
    try:
        return await job(backend)
    finally:
        await pydantic_toast.aclose_storage()


def _pointer(url: str, reference: Any) -> UUID:
    data = json.loads(stored(url, reference["class_name"], reference["id"]).data)
    return UUID(data["$toast"]["offloaded"]["id"])


def test_payloads_whose_record_is_gone_are_found_and_deleted(storage_url: str, s3_url: str) -> None:
    """A record deleted behind the library's back leaves its payload: the scan finds it (once
    old enough), pages through the store, deletes it, and leaves the live payloads alone."""
    report = report_model(storage_url, s3_url)
    kept = [report(title=f"r{i}", body=BIG).model_dump() for i in range(3)]
    gone = report(title="gone", body=BIG).model_dump()
    orphan = _pointer(storage_url, gone)

    async def drop(backend: Any) -> None:
        assert await backend.delete(UUID(str(gone["id"])), gone["class_name"])

    asyncio.run(_on(storage_url, drop))
    updated = report.model_validate(kept[0])
    updated.body = BIG + "changed"  # type: ignore[attr-defined]
    updated.model_dump()  # a new payload; the replaced one is deleted by the save itself

    assert pydantic_toast.find_orphaned_payloads(report).orphans == []  # younger than min_age
    seen: list[int] = []

    def progress(so_far: OrphanReport) -> None:
        seen.append(so_far.checked)

    found = pydantic_toast.find_orphaned_payloads(
        report, batch_size=2, min_age=timedelta(0), progress=progress
    )
    assert found.class_name == payload_class(gone["class_name"])
    assert found.referencing == [gone["class_name"]]
    assert (found.orphans, found.checked, found.deleted) == ([orphan], 4, 0)
    assert seen[:3] == [2, 4, 4]  # two pages of ids (the second short), then the check

    deleted = pydantic_toast.find_orphaned_payloads(report, min_age=timedelta(0), delete=True)
    assert (deleted.orphans, deleted.deleted) == ([orphan], 1)

    async def count(backend: Any) -> int:
        return await backend.count(payload_class(gone["class_name"]))  # type: ignore[no-any-return]

    assert asyncio.run(_on(s3_url, count)) == 3
    for reference in kept:
        assert report.model_validate(reference).body.startswith(BIG)  # type: ignore[attr-defined]
    assert pydantic_toast.find_orphaned_payloads(report, min_age=timedelta(0)).orphans == []


def test_a_model_without_offload_is_refused(memory_url: str) -> None:
    from tests.integration.test_compression import note_model

    with pytest.raises(StorageConfigurationError, match="has no offload store"):
        pydantic_toast.find_orphaned_payloads(note_model(memory_url))


@pytest.mark.postgresql
@pytest.mark.s3
def test_orphans_command_finds_payloads(
    postgres_database_url: str, s3_url: str, tmp_path: Path
) -> None:
    """pydantic-toast orphans --payloads: on PostgreSQL with payloads in SeaweedFS."""
    (tmp_path / "scan_models.py").write_text(
        textwrap.dedent(
            f"""
            from pydantic_toast import ExternalBaseModel, ExternalConfigDict

            class Scan(ExternalBaseModel):
                body: str
                model_config = ExternalConfigDict(
                    storage={postgres_database_url!r},
                    external_name="Scan{tmp_path.name[-8:]}",
                    offload={s3_url!r},
                )
            """
        )
    )
    setup = (
        "import asyncio, json, pydantic_toast, scan_models as m\n"
        "r = m.Scan(body='x' * 400_000).model_dump()\n"
        "s = pydantic_toast.current_storage()\n"
        "async def drop():\n"
        "    b = await s.connected(m.Scan._toast_settings().url())\n"
        "    (rec,) = await b.load_records([(r['class_name'], r['id'])])\n"
        "    print(json.loads(rec.data)['$toast']['offloaded']['id'])\n"
        "    await b.delete(r['id'], r['class_name'])\n"
        "    await s.aclose()\n"
        "asyncio.run(drop())\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args], env=env, cwd=tmp_path, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip

    made = run("-c", setup)
    assert made.returncode == 0, made.stderr
    orphan = made.stdout.strip()
    name = f"Scan{tmp_path.name[-8:]}"
    cli = ["-m", "pydantic_toast.integrations.cli", "orphans", postgres_database_url]
    cli += ["--module", "scan_models", "--class", name, "--payloads"]
    young = run(*cli)
    assert young.returncode == 0, young.stderr
    assert young.stdout.split() == []  # uploaded a moment ago: within --min-age
    found = run(*cli, "--min-age", "0")
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [orphan]
    assert f"{name}.payloads: 1 orphans found among 1 records" in found.stderr
    deleted = run(*cli, "--min-age", "0", "--delete")
    assert "deleted 1" in deleted.stderr
    assert run(*cli, "--min-age", "0").stdout.split() == []
