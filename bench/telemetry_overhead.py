"""What telemetry costs at the storage boundary: memory:// save/load p50, off vs before vs on.

    python bench/telemetry_overhead.py [--rounds 7] [--ops 3000] [--before SRC]

Each variant runs in its own process; rounds run the variants interleaved (rotated order), and
the figures are the median of the per-round p50s with their min-max. Variants:

* ``before``: the source tree given with ``--before`` (a checkout of the code before telemetry
  existed), imported through PYTHONPATH;
* ``off``: this tree, telemetry off (the default);
* ``on``: this tree with ``enable_telemetry()`` into the OpenTelemetry SDK (a TracerProvider
  without exporters, a MeterProvider with an in-memory reader): spans and metrics are built and
  recorded, not shipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import asyncio, json, sys, time
from uuid import uuid4
import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict

mode, ops = sys.argv[1], int(sys.argv[2])
if mode == "on":
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    pydantic_toast.enable_telemetry(
        tracer_provider=TracerProvider(),
        meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
    )

class Item(ExternalBaseModel):
    name: str
    qty: int
    price: float
    tags: list[str]
    model_config = ExternalConfigDict(storage=f"memory://{uuid4().hex}")

def p50(samples):
    samples.sort()
    return samples[len(samples) // 2] / 1000

async def run():
    item = Item(name="tea", qty=2, price=1.5, tags=["a", "b"])
    saves, loads = [], []
    clock = time.perf_counter_ns
    for n in range(ops + 300):
        start = clock()
        reference = await pydantic_toast.adump(item)
        middle = clock()
        await pydantic_toast.avalidate(Item, reference)
        end = clock()
        if n >= 300:
            saves.append(middle - start)
            loads.append(end - middle)
    return p50(saves), p50(loads)

asave, aload = asyncio.run(run())
item = Item(name="tea", qty=2, price=1.5, tags=["a", "b"])
saves, loads = [], []
clock = time.perf_counter_ns
for n in range(ops + 300):
    start = clock()
    reference = item.model_dump()
    middle = clock()
    Item.model_validate(reference)
    end = clock()
    if n >= 300:
        saves.append(middle - start)
        loads.append(end - middle)
print(json.dumps({"async save": asave, "async load": aload,
                  "sync save": p50(saves), "sync load": p50(loads)}))
"""


def measure(variant: str, ops: int, before: str | None) -> dict[str, float]:
    env = dict(os.environ)
    if variant == "before":
        assert before, "--before SRC is needed for the 'before' variant"
        env["PYTHONPATH"] = before
    mode = "on" if variant == "on" else "off"
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(ops)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--before", help="src folder of the code before telemetry")
    args = parser.parse_args()
    variants = ["before", "off", "on"] if args.before else ["off", "on"]
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for round_ in range(args.rounds):
        order = variants[round_ % len(variants) :] + variants[: round_ % len(variants)]
        for variant in order:
            results[variant].append(measure(variant, args.ops, args.before))
    print(f"p50 µs per op, median (min-max) of {args.rounds} interleaved rounds, {args.ops} ops")
    print(f"{'':12}" + "".join(f"{v:>24}" for v in variants))
    for metric in results[variants[0]][0]:
        cells = []
        for variant in variants:
            values = [r[metric] for r in results[variant]]
            cells.append(f"{statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f})")
        print(f"{metric:12}" + "".join(f"{c:>24}" for c in cells))


if __name__ == "__main__":
    main()
