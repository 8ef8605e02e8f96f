"""PATCH/PATCH and PATCH/DELETE races on the todo service: how each race ends.

    .venv/bin/python bench/todo_races.py [--trials 50] [--rounds 3]

The todo service runs under uvicorn on a throwaway PostgreSQL database (TOAST_BENCH_POSTGRES_URL
or the local server). Each trial creates a todo, then sends two requests at the same instant:

- PATCH/PATCH: one sets ``completed``, the other the ``description``. A *lost change* is both
  answered 200 while the todo read afterwards lacks one of the two changes.
- PATCH/DELETE: a *resurrection* is the DELETE answered 204 while the todo can still be read
  afterwards (the PATCH wrote it back).

Both without ``If-Match`` (the revision check of the save answers 409) and with the ``ETag``
read before the race (412 for the loser). Rounds are interleaved; each count is reported as
median [min-max] over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from databases import throwaway_postgres

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


async def new_todo(http: httpx.AsyncClient, if_match: bool) -> tuple[str, dict[str, str]]:
    """A fresh todo's URL, and the headers of the racing requests (its ETag as If-Match)."""
    todo = (await http.post("/api/todos", json={"description": "race"})).json()
    url = f"/api/todos/{todo['id']}"
    etag = (await http.get(url)).headers.get("ETag")
    return url, {"If-Match": etag} if if_match and etag else {}


async def patch_patch(http: httpx.AsyncClient, if_match: bool) -> str:
    url, headers = await new_todo(http, if_match)
    first, second = await asyncio.gather(
        http.patch(url, json={"completed": True}, headers=headers),
        http.patch(url, json={"description": "renamed"}, headers=headers),
    )
    final = (await http.get(url)).json()
    statuses = tuple(sorted((first.status_code, second.status_code)))
    if statuses == (200, 200):
        both = final["completed"] is True and final["description"] == "renamed"
        return "both applied" if both else "LOST CHANGE"
    applied_completed = final["completed"] is True
    applied_description = final["description"] == "renamed"
    if statuses in ((200, 409), (200, 412)) and applied_completed != applied_description:
        return f"one applied, other {statuses[1]}"
    return f"unexpected {statuses} final={final}"


async def patch_delete(http: httpx.AsyncClient, if_match: bool) -> str:
    url, headers = await new_todo(http, if_match)
    patched, deleted = await asyncio.gather(
        http.patch(url, json={"completed": True}, headers=headers),
        http.delete(url, headers=headers),
    )
    after = (await http.get(url)).status_code
    if deleted.status_code == 204 and after == 200:
        return "RESURRECTED"
    return f"PATCH {patched.status_code}, DELETE {deleted.status_code}, then GET {after}"


async def run_round(base: str, trials: int) -> dict[str, collections.Counter[str]]:
    results: dict[str, collections.Counter[str]] = {}
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for race in (patch_patch, patch_delete):
            for if_match in (False, True):
                label = f"{race.__name__} {'with If-Match' if if_match else 'no If-Match'}"
                counts = results.setdefault(label, collections.Counter())
                for _ in range(trials):
                    counts[await race(http, if_match)] += 1
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from servers import free_port

    with throwaway_postgres("toast_races") as url:
        port = free_port()
        service = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "examples.todo_api.app:app"),
                *("--port", str(port), "--log-level", "warning", "--no-access-log"),
            ],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": url},
        )
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            rounds = [asyncio.run(run_round(base, args.trials)) for _ in range(args.rounds)]
        finally:
            service.terminate()
            service.wait(30)
    print(f"{args.trials} trials per race and round, {args.rounds} rounds (median [min-max])")
    for label in rounds[0]:
        outcomes = sorted({outcome for r in rounds for outcome in r[label]})
        print(f"\n{label}:")
        for outcome in outcomes:
            values = [r[label][outcome] for r in rounds]
            print(f"  {outcome}: {statistics.median(values):g} [{min(values)}-{max(values)}]")


if __name__ == "__main__":
    main()
