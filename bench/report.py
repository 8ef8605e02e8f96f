"""The benchmark's outputs: a markdown report, the JSON of every figure, and a PNG chart."""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

# Latencies in µs (lower is better), then throughputs in operations/s (higher is better).
LATENCIES = ("save_p50", "save_p99", "load_p50", "load_p99")
THROUGHPUTS = ("batch_save", "batch_load", "conc_load", "conc_save")
METRICS = LATENCIES + THROUGHPUTS
HEADERS = {
    "save_p50": "save p50",
    "save_p99": "save p99",
    "load_p50": "load p50",
    "load_p99": "load p99",
    "batch_save": "batch save",
    "batch_load": "batch load",
    "conc_load": "100 tasks load",
    "conc_save": "100 tasks save",
}
RAW = {"postgresql": "raw asyncpg", "redis": "raw redis.asyncio"}

Spread = dict[str, float]  # median, min, max, q1, q3


def spread(values: list[float]) -> Spread | None:
    if not values:
        return None
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "q1": quartiles[0],
        "q3": quartiles[2],
        "n": len(ordered),
    }


def summarize(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (workload, system): absolute figures and ratios to the raw driver, each a spread.

    A ratio is taken within one repetition (the system and its raw driver measured in the same
    round-robin pass), then summarized over repetitions.
    """
    raw_of = {
        (r["workload"], r["repetition"], r["backend"]): r
        for r in rows
        if RAW.get(r["backend"]) == r["system"]
    }
    absolute: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    ratios: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    backends = {}
    for r in rows:
        cell = (r["workload"], r["system"])
        backends[cell] = r["backend"]
        raw = raw_of.get((r["workload"], r["repetition"], r["backend"]))
        for metric in METRICS:
            value = r.get(metric)
            if value is None:
                continue
            absolute[cell][metric].append(value)
            if raw is not None and raw.get(metric):
                ratios[cell][metric].append(value / raw[metric])
    return {
        cell: {
            "backend": backends[cell],
            "absolute": {m: spread(absolute[cell][m]) for m in METRICS},
            "ratio": {m: spread(ratios[cell][m]) for m in METRICS},
        }
        for cell in absolute
    }


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell_text(figure: Spread | None) -> str:
    if figure is None:
        return "–"
    return f"{_fmt(figure['median'])} [{_fmt(figure['min'])}–{_fmt(figure['max'])}]"


def workload_tables(workload: str, summary: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    cells = [(cell, s) for cell, s in summary.items() if cell[0] == workload]
    header = "| system | " + " | ".join(HEADERS[m] for m in METRICS) + " |"
    rule = "|---|" + "---|" * len(METRICS)
    lines = [
        f"### {workload}: ratio to the raw driver of the same backend",
        "",
        "Latency ratios: lower is better; throughput ratios: higher is better.",
        "",
        header,
        rule,
    ]
    for (_, system), s in cells:
        if s["backend"] in RAW and system != RAW[s["backend"]]:
            lines.append(
                f"| {system} | " + " | ".join(cell_text(s["ratio"][m]) for m in METRICS) + " |"
            )
    lines += [
        "",
        f"### {workload}: absolute figures (latency µs, throughput records or operations/s)",
        "",
        header,
        rule,
    ]
    for (_, system), s in cells:
        lines.append(
            f"| {system} | " + " | ".join(cell_text(s["absolute"][m]) for m in METRICS) + " |"
        )
    return [*lines, ""]


def _ratio(summary: dict[tuple[str, str], dict[str, Any]], cell: tuple[str, str], m: str) -> Any:
    entry = summary.get(cell)
    figure = entry["ratio"][m] if entry else None
    return None if figure is None else figure["median"]


def targets(
    summary: dict[tuple[str, str], dict[str, Any]],
    workloads: list[str],
    counts: list[dict[str, Any]] | None,
) -> list[dict[str, Any]]:
    """Issue 14's targets, each checked against the medians of this run."""
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, limit: float, at_most: bool) -> None:
        if value is None:
            checks.append({"target": name, "value": None, "met": None})
            return
        met = value <= limit if at_most else value >= limit
        checks.append({"target": name, "value": round(value, 3), "limit": limit, "met": met})

    for workload in workloads:
        for label in ("PostgreSQL", "Redis"):
            for api, limit in (("async", 1.3), ("sync", 1.5)):
                system = f"pydantic-toast {api} ({label})"
                for m in ("save_p50", "load_p50"):
                    value = _ratio(summary, (workload, system), m)
                    check(f"{workload} · {system} · {HEADERS[m]} ≤ {limit}×", value, limit, True)
                for m in ("batch_save", "batch_load"):
                    value = _ratio(summary, (workload, system), m)
                    check(f"{workload} · {system} · {HEADERS[m]} ≥ 0.8×", value, 0.8, False)
            system = f"pydantic-toast async ({label})"
            for m in ("conc_load", "conc_save"):
                value = _ratio(summary, (workload, system), m)
                check(f"{workload} · {system} · {HEADERS[m]} ≥ 0.9×", value, 0.9, False)
    small = workloads[0] if workloads else None
    for workload in workloads[1:]:
        for label in ("PostgreSQL", "Redis"):
            for api in ("async", "sync"):
                system = f"pydantic-toast {api} ({label})"
                for m in ("save_p50", "load_p50", "batch_save", "batch_load"):
                    here = _ratio(summary, (workload, system), m)
                    there = _ratio(summary, (str(small), system), m)
                    if here is None or there is None:
                        continue
                    worse = here / there if m in LATENCIES else there / here
                    check(
                        f"{workload} vs {small} · {system} · {HEADERS[m]}: no worse "
                        "(value: how many times worse, ≤ 1)",
                        worse,
                        1.0,
                        True,
                    )
    for count in counts or []:
        if count.get("library_vs_plain") is not None:
            check(
                f"{count['workload']} · library CPU per save+load on memory:// ≤ 1.5× plain "
                "Pydantic JSON encode+decode (instructions)",
                count["library_vs_plain"],
                1.5,
                True,
            )
    return checks


def instruction_table(counts: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Instructions per operation (callgrind, exact and repeatable)",
        "",
        "Counted with `valgrind --tool=callgrind` in `bench/instructions.py`: N operations "
        "between two markers, divided by N (the count repeats to within a few instructions "
        "on a busy machine). Plain Pydantic is the same fields as a `BaseModel`.",
        "",
        "| workload | operation | instructions/op | vs plain encode+decode |",
        "|---|---|---|---|",
    ]
    for count in counts:
        plain = count["ops"].get("plain encode+decode")
        for operation, value in count["ops"].items():
            versus = f"{value / plain:.2f}×" if plain else "–"
            lines.append(f"| {count['workload']} | {operation} | {value:,.0f} | {versus} |")
    return [*lines, ""]


def markdown(
    rows: list[dict[str, Any]],
    memory: list[dict[str, Any]],
    counts: list[dict[str, Any]] | None,
    meta: dict[str, Any],
) -> tuple[str, dict[tuple[str, str], dict[str, Any]], list[dict[str, Any]]]:
    summary = summarize(rows)
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    batches = ", ".join(f"{n:,} records at {w}" for w, n in meta["batch"].items())
    lines = [
        "# pydantic-toast benchmark",
        "",
        f"Run {meta['date']}, {meta['seconds']} s, servers: {meta['servers']} (PostgreSQL with "
        "fsync on). Every figure is **median [min–max] over "
        f"{meta['repetitions']} interleaved repetitions**: each repetition runs every phase of "
        "every system round-robin (order rotated per repetition) after a discarded warm-up, "
        "and each ratio is taken against the raw driver of the same backend measured in the "
        "same repetition.",
        "",
        f"Per repetition and system: {meta['single_ops']} sequential saves then as many loads "
        f"(p50/p99); one batch save and load ({batches}; the ORM, SQLModel, redis-om and "
        f"SQLite time at most {meta.get('slow_batch', 1000):,}; a full garbage collection "
        "before the save and, untimed, between save and load, so that each system's batch "
        "starts from a collected heap); "
        f"{meta['tasks']} concurrent tasks doing {meta['per_task']} loads each, then "
        f"{meta['per_task']} saves each (pools sized like pydantic-toast's: PostgreSQL 20 "
        "connections, Redis 50). Floors: pgbench (prepared upsert and PK select of the same "
        "JSON; 20 clients for the concurrent row) and redis-benchmark (SET/GET of the same "
        "value; pipeline of 1,000 for batches; 50 clients for the concurrent row).",
        "",
    ]
    for workload in workloads:
        lines += workload_tables(workload, summary)
    if counts:
        lines += instruction_table(counts)
    checks = targets(summary, workloads, counts)
    met = sum(1 for c in checks if c["met"])
    missed = [c for c in checks if c["met"] is False]
    lines += [
        "## Issue 14 targets (medians of this run)",
        "",
        f"{met} met, {len(missed)} missed, "
        f"{sum(1 for c in checks if c['met'] is None)} not measured.",
        "",
        "| target | value | |",
        "|---|---|---|",
    ]
    for c in checks:
        status = {True: "met", False: "**missed**", None: "not measured"}[c["met"]]
        value = "–" if c["value"] is None else f"{c['value']:.2f}"
        lines.append(f"| {c['target']} | {value} | {status} |")
    lines.append("")
    if memory:
        mb = 1024 * 1024
        lines += [
            "## Peak RSS of one batch (pydantic-toast async, one child process per probe)",
            "",
            "| workload | backend | records | JSON moved | save peak RSS | load peak RSS |",
            "|---|---|---|---|---|---|",
        ]
        for m in memory:
            lines.append(
                f"| {m['workload']} | {m['backend']} | {m['records']} "
                f"| {m['json_bytes'] / mb:.1f} MB "
                f"| {m['save_rss'] / mb:.1f} MB ({m['save_rss'] / m['json_bytes']:.2f}×) "
                f"| {m['load_rss'] / mb:.1f} MB ({m['load_rss'] / m['json_bytes']:.2f}×) |"
            )
        lines.append("")
    return "\n".join(lines), summary, checks


def chart(summary: dict[tuple[str, str], dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart (pip install matplotlib)", file=sys.stderr)
        return
    workloads = list(dict.fromkeys(w for w, _ in summary))
    shown = ("save_p50", "load_p50", "batch_save", "batch_load", "conc_load", "conc_save")
    systems_per = {
        w: [
            s
            for (wl, s), e in summary.items()
            if wl == w and e["backend"] in RAW and s != RAW[e["backend"]]
        ]
        for w in workloads
    }
    height = sum(len(s) for s in systems_per.values()) * 0.9 + 2 * len(workloads)
    figure, axes = plt.subplots(len(workloads), 1, figsize=(11, height), squeeze=False)
    for axis, workload in zip(axes[:, 0], workloads, strict=True):
        systems = systems_per[workload]
        width = 0.8 / len(shown)
        for k, metric in enumerate(shown):
            medians, low, high, positions = [], [], [], []
            for i, system in enumerate(systems):
                figure_ = summary[(workload, system)]["ratio"][metric]
                if figure_ is None:
                    continue
                positions.append(i - 0.4 + (k + 0.5) * width)
                medians.append(figure_["median"])
                low.append(figure_["median"] - figure_["min"])
                high.append(figure_["max"] - figure_["median"])
            axis.barh(
                positions,
                medians,
                height=width,
                xerr=[low, high],
                label=HEADERS[metric] + (" (lower is better)" if metric in LATENCIES else ""),
                error_kw={"linewidth": 0.6},
            )
        axis.axvline(1.0, color="black", linewidth=0.8)
        axis.set_xscale("log")
        axis.set_yticks(range(len(systems)), systems, fontsize=7)
        axis.invert_yaxis()
        axis.set_title(f"{workload}: ratio to the raw driver (median, bars: min–max)", fontsize=9)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_outputs(
    out: Path,
    rows: list[dict[str, Any]],
    memory: list[dict[str, Any]],
    counts: list[dict[str, Any]] | None,
    meta: dict[str, Any],
) -> str:
    out.mkdir(parents=True, exist_ok=True)
    text, summary, checks = markdown(rows, memory, counts, meta)
    (out / "RESULTS.md").write_text(text)
    payload = {
        "meta": meta,
        "summary": [{"workload": w, "system": s} | entry for (w, s), entry in summary.items()],
        "targets": checks,
        "instructions": counts,
        "memory": memory,
        "repetitions": rows,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    chart(summary, out / "ratios.png")
    return text
