"""Run inside a fresh venv holding the built wheel with one extra: what a new user sees.

Usage: python extra_check.py EXTRA WORKDIR POSTGRES_URL REDIS_URL. Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import uuid4

extra, workdir, postgres_url, redis_url, redis_prefix = sys.argv[1:6]
CLI = str(Path(sys.executable).with_name("pydantic-toast"))
report: dict[str, Any] = {}


def cli(*argv: str) -> dict[str, Any]:
    result = subprocess.run([CLI, *argv], capture_output=True, text=True, timeout=120)
    return {"code": result.returncode, "out": result.stdout, "err": result.stderr}


def class_statement(url: str) -> str:
    """Define a model on url, save and load one; 'ok' or the error's type and message."""
    from pydantic_toast import ExternalBaseModel, ExternalConfigDict, close_storage

    try:
        model = type(
            "Note",
            (ExternalBaseModel,),
            {
                "__annotations__": {"text": str},
                "model_config": ExternalConfigDict(
                    storage=url, external_name=f"Note{uuid4().hex[:8]}"
                ),
            },
        )
        loaded = model.model_validate(model(text="from the wheel").model_dump())
        assert loaded.text == "from the wheel"
        return "ok"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        close_storage()


import pydantic_toast  # noqa: E402

report["file"] = pydantic_toast.__file__
report["version"] = pydantic_toast.__version__
report["migrations"] = sorted(
    p.name for p in (Path(pydantic_toast.__file__).parent / "migrations" / "versions").glob("*.py")
)
sqlite_url = f"sqlite:///{Path(workdir) / 'wheel.db'}"
report["migrate_sqlite"] = cli("migrate", sqlite_url)
report["sqlite"] = class_statement(sqlite_url)
report["migrate_postgresql"] = cli("migrate", postgres_url)
report["check_postgresql"] = cli("check", postgres_url)
report["postgresql"] = class_statement(postgres_url)
report["redis"] = class_statement(f"{redis_url}?prefix={redis_prefix}{extra}")
report["memory"] = class_statement("memory://wheel")
try:
    import pydantic_toast.fastapi

    report["fastapi"] = "ok"
except ImportError as exc:
    report["fastapi"] = f"ImportError: {exc}"
report["help"] = cli("--help")
shutil.rmtree(os.path.join(workdir, "unused"), ignore_errors=True)
print(json.dumps(report))
