"""Conversation store costs: appending a turn vs rewriting the history, loading, spilled tokens.

Run with ``.venv/bin/python bench/ai_conversations.py`` (``--quick`` for a smoke run). Measures,
on memory://, Redis and PostgreSQL (a throwaway database):

* the cost of storing one more turn (2 messages) in a conversation already holding 10, 100 and
  1,000 messages: ``MessageStore.aappend`` (one new record) against the hand-rolled way
  (``ModelMessagesTypeAdapter.dump_json(all_messages)`` written over one record each turn);
* loading a 1,000-message conversation, both ways;
* the tokens sent to the model in the request after a 1 MB tool return, with and without
  ``SpillToolOutputs`` (Pydantic AI's FunctionModel estimate, and characters / 4).

Timings are interleaved: each round runs every system once, in an order that alternates between
rounds; the figures are the median and [min-max] over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pydantic_core
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

import pydantic_toast
from pydantic_toast import StoredRecord
from pydantic_toast.ai import MessageStore, SpillToolOutputs
from pydantic_toast.ai._storage import backend

REDIS_URL = os.environ.get("TOAST_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def turn(index: int) -> list[ModelMessage]:
    """One realistic turn: a prompt and an answer of a few hundred characters, with usage."""
    return [
        ModelRequest(parts=[UserPromptPart(f"Question {index}: " + "what about this? " * 6)]),
        ModelResponse(
            parts=[TextPart(f"Answer {index}: " + "here is a considered reply. " * 10)],
            usage=RequestUsage(input_tokens=120 + index, output_tokens=80),
            model_name="bench-model",
        ),
    ]


class Rewrite:
    """The hand-rolled store: the whole history as one JSON record, rewritten every turn."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.class_name = f"bench.rewrite.{uuid4().hex[:8]}"
        self.id = uuid4()

    async def save(self, messages: list[ModelMessage]) -> None:
        now = datetime.now(UTC)
        text = ModelMessagesTypeAdapter.dump_json(messages).decode()
        record = StoredRecord(
            class_name=self.class_name,
            id=self.id,
            data=pydantic_core.to_json({"messages": text}),
            schema_version=1,
            created_at=now,
            updated_at=now,
        )
        await (await backend(self.url)).save_records([record])

    async def load(self) -> list[ModelMessage]:
        (record,) = await (await backend(self.url)).load_records([(self.class_name, self.id)])
        assert record is not None
        text = pydantic_core.from_json(record.data)["messages"]
        return ModelMessagesTypeAdapter.validate_json(text)


def spread(samples: list[float]) -> str:
    """Median [min-max], in µs."""
    median = statistics.median(samples)
    return f"{median:,.0f} µs [{min(samples):,.0f}-{max(samples):,.0f}]"


async def timed(operation: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter_ns()
    await operation()
    return (time.perf_counter_ns() - start) / 1000


async def measure_backend(name: str, url: str, rounds: int, sizes: list[int]) -> list[str]:
    lines = []
    for size in sizes:
        history = [message for i in range(size // 2) for message in turn(i)]
        store = MessageStore(url, namespace=f"bench{uuid4().hex[:8]}")
        await store.aappend("c", history)
        rewrite = Rewrite(url)
        await rewrite.save(history)
        samples: dict[str, list[float]] = {"append": [], "rewrite": []}
        new = turn(size)
        operations = {
            "append": lambda new=new, store=store: store.aappend("c", new),
            "rewrite": lambda new=new, rewrite=rewrite, history=history: rewrite.save(
                [*history, *new]
            ),
        }
        for round_ in range(rounds):
            order = ["append", "rewrite"] if round_ % 2 == 0 else ["rewrite", "append"]
            for system in order:
                samples[system].append(await timed(operations[system]))
        ratio = statistics.median(samples["rewrite"]) / statistics.median(samples["append"])
        lines.append(
            f"| {name} | {size:,} | {spread(samples['append'])} | {spread(samples['rewrite'])} "
            f"| {ratio:.1f}x |"
        )
    return lines


async def measure_load(name: str, url: str, rounds: int) -> str:
    history = [message for i in range(500) for message in turn(i)]
    store = MessageStore(url, namespace=f"bench{uuid4().hex[:8]}")
    for i in range(0, len(history), 2):  # 500 turns appended one by one, as a chat would
        await store.aappend("c", history[i : i + 2])
    rewrite = Rewrite(url)
    await rewrite.save(history)
    assert (await store.aload("c")).messages == history
    samples: dict[str, list[float]] = {"append": [], "rewrite": []}
    operations = {"append": lambda: store.aload("c"), "rewrite": rewrite.load}
    for round_ in range(rounds):
        order = ["append", "rewrite"] if round_ % 2 == 0 else ["rewrite", "append"]
        for system in order:
            samples[system].append(await timed(operations[system]))
    return f"| {name} | {spread(samples['append'])} | {spread(samples['rewrite'])} |"


async def measure_tokens() -> list[str]:
    megabyte = "".join(f"line {i:06d}: {'abcdefghij' * 4}\n" for i in range(19_700))[:1_000_000]
    sent: dict[str, str] = {}

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("big", {})])
        last = messages[-1].parts[-1]
        sent["tool_return"] = last.model_response_str()  # type: ignore[union-attr]
        return ModelResponse(parts=[TextPart("ok")])

    lines = []
    for spilled in (False, True):
        capabilities = [SpillToolOutputs("memory://bench-tokens")] if spilled else []
        agent = Agent(FunctionModel(model), capabilities=capabilities)
        agent.tool_plain(name="big")(lambda: megabyte)
        result = await agent.run("read it")
        second_request = result.all_messages()[:-1]
        chars = len(sent["tool_return"])
        lines.append(
            f"| {'with' if spilled else 'without'} SpillToolOutputs | {chars:,} | "
            f"{chars // 4:,} | {result.usage.input_tokens:,} | {len(second_request)} |"
        )
    return lines


async def main(rounds: int, load_rounds: int, parts: set[str], postgres_url: str | None) -> None:
    sizes = [10, 100, 1_000]
    targets = [("memory", f"memory://bench-{uuid4().hex[:8]}")]
    redis_prefix = f"bench_ai_{uuid4().hex[:8]}"
    targets.append(("redis", f"{REDIS_URL}?prefix={redis_prefix}"))
    if postgres_url is not None:
        targets.append(("postgresql", postgres_url))
    try:
        if "append" in parts:
            print(f"Appending one turn (2 messages); {rounds} interleaved rounds per size.\n")
            print(
                "| backend | messages stored | append (p50 [min-max]) | rewrite whole history "
                "| rewrite / append |"
            )
            print("|---|---:|---:|---:|---:|")
            for name, url in targets:
                for line in await measure_backend(name, url, rounds, sizes):
                    print(line, flush=True)
        if "load" in parts:
            print(
                f"\nLoading a 1,000-message conversation (500 appended turns); {load_rounds} "
                "interleaved rounds.\n"
            )
            print("| backend | MessageStore.aload | one rewritten record |")
            print("|---|---:|---:|")
            for name, url in targets:
                print(await measure_load(name, url, load_rounds), flush=True)
        if "tokens" in parts:
            print("\nTokens for a 1,000,000-character tool return.\n")
            print(
                "| | tool return chars sent | chars / 4 | run input tokens (FunctionModel "
                "estimate) | messages |"
            )
            print("|---|---:|---:|---:|---:|")
            for line in await measure_tokens():
                print(line)
    finally:
        await pydantic_toast.aclose_storage()
        await _drop_redis_prefix(REDIS_URL, redis_prefix)


async def _drop_redis_prefix(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 rounds instead of 200")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per append size")
    parser.add_argument("--load-rounds", type=int, help="interleaved rounds of the load")
    parser.add_argument(
        "--only",
        action="append",
        choices=["append", "load", "tokens"],
        help="measure only this part (repeatable); default: all",
    )
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    arguments = parser.parse_args()
    rounds = arguments.rounds or (30 if arguments.quick else 200)
    load_rounds = arguments.load_rounds or max(10, rounds // 5)
    parts = set(arguments.only or ["append", "load", "tokens"])
    if arguments.no_postgres:
        asyncio.run(main(rounds, load_rounds, parts, None))
    else:
        from databases import throwaway_postgres

        with throwaway_postgres("bench_ai") as database_url:
            asyncio.run(main(rounds, load_rounds, parts, database_url))
