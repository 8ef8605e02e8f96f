"""Run a benchmark's worker under callgrind and read the instructions of each measured segment.

The worker marks each segment itself: ``os.getppid()`` zeroes the counters
(``--zero-before=getppid``), ``os.getpgrp()`` dumps the counts since the zero to a file of its
own (``--dump-before=getpgrp``); the markers stay inline in the worker, so no helper's
instructions land inside a segment. Its last line of output is a JSON list of the segments'
labels, in the order it dumped them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["run_worker", "total"]


def run_worker(
    argv: list[str], *, timeout: float | None = None, keep: Path | None = None
) -> dict[str, int]:
    """Run ``python argv`` under callgrind: each segment's label and its instruction count.

    ``keep``: copy each dump there, named after its label (for ``callgrind_annotate``).
    ``PYTHONHASHSEED=0`` keeps set and dict layouts, hence the counts, the same run to run.
    """
    valgrind = shutil.which("valgrind")
    if not valgrind:
        raise FileNotFoundError("valgrind not found: install it (Debian: valgrind)")
    scratch = Path(tempfile.mkdtemp(prefix="toast-callgrind-"))
    try:
        output = subprocess.run(
            [
                valgrind,
                "--tool=callgrind",
                "--zero-before=getppid",
                "--dump-before=getpgrp",
                f"--callgrind-out-file={scratch}/cg.out.%p",
                sys.executable,
                *argv,
            ],
            capture_output=True,
            text=True,
            env=os.environ | {"PYTHONHASHSEED": "0"},
            timeout=timeout,
            check=False,
        )
        if output.returncode != 0:
            raise RuntimeError(f"callgrind worker failed: {output.stderr.strip()[-1500:]}")
        labels: list[str] = json.loads(output.stdout.strip().splitlines()[-1])
        dumps = sorted(
            (p for p in scratch.iterdir() if p.name.rsplit(".", 1)[-1].isdigit()),
            key=lambda p: int(p.name.rsplit(".", 1)[-1]),
        )
        if len(dumps) < len(labels):
            raise RuntimeError(f"{len(dumps)} callgrind dumps for {len(labels)} segments")
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for label, dump in zip(labels, dumps, strict=False):
                shutil.copy(dump, keep / re.sub(r"[^\w.+-]+", "_", label).strip("_"))
        return {label: total(dump) for label, dump in zip(labels, dumps, strict=False)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def total(dump: Path) -> int:
    """The instructions counted in one callgrind dump."""
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")
