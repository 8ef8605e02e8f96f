"""Peak RSS growth of one batch save and one batch load (pydantic-toast async), in this process.

    python bench/rss.py KIND WORKLOAD_INDEX COUNT URL    # prints JSON

Run by bench/run.py in a child process per probe, so each starts from a clean heap.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from systems import Toast  # noqa: E402
from workloads import WORKLOADS  # noqa: E402


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def reset_peak_rss() -> int:
    """Reset the peak-RSS mark to the current RSS (Linux); return the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS:")


def peak_rss() -> int:
    return _status("VmHWM:")


def probe(kind: str, workload_index: int, count: int, url: str) -> dict[str, float]:
    workload = WORKLOADS[workload_index]
    toast = type("Probe", (Toast,), {"storage_kind": kind, "name": "probe", "backend": kind})
    system = toast(workload, {kind: url})

    async def run() -> dict[str, float]:
        await system.setup()
        objs = [system.make(i) for i in range(count)]
        plain = workload.plain_model()
        json_bytes = sum(len(plain(**workload.values(i)).model_dump_json()) for i in range(count))
        await system.load(await system.save(system.make(0)))  # connect outside the window
        before = reset_peak_rss()
        keys = await system.save_many(objs)
        save_peak = peak_rss() - before
        del objs
        before = reset_peak_rss()
        await system.load_many(keys)
        load_peak = peak_rss() - before
        await system.teardown()
        return {"json_bytes": json_bytes, "save_rss": save_peak, "load_rss": load_peak}

    return asyncio.run(run())


if __name__ == "__main__":
    kind, index, count, url = sys.argv[1:5]
    print(json.dumps(probe(kind, int(index), int(count), url)))
