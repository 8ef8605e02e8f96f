"""Type checkers see model_dump's real signature and the reference's typed accessors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROGRAM = """
import json
from uuid import UUID
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, ExternalReference


class Order(ExternalBaseModel):
    product: str
    model_config = ExternalConfigDict(storage="memory://")


async def main() -> None:
    order = Order(product="tea")
    ref: ExternalReference = await order.asave()
    same: ExternalReference = order.model_dump(mode="json", by_alias=True, round_trip=True)
    text: str = ref["id"]
    uuid: UUID = ref.uuid
    name: str = ref.class_name
    json.dumps(same)
    order.model_dump_json(indent=2, ensure_ascii=True)
    order.model_dump(mode="jsn")  # line 21
    order.model_dump(no_such_kwarg=1)  # line 22
    order.model_dump_json(no_such_kwarg=1)  # line 23
"""


@pytest.mark.slow
def test_mypy_strict_accepts_real_options_and_rejects_typos(tmp_path: Path) -> None:
    """mypy --strict passes the documented options and flags a bad mode and unknown keywords."""
    program = tmp_path / "user_program.py"
    program.write_text(PROGRAM)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(program),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["21", "22", "23"], result.stdout
    assert "Literal['python', 'json']" in errors[0]
    assert "no_such_kwarg" in errors[1]
