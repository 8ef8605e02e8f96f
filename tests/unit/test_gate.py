"""The FIFO gate in front of connection pools: order, bounds and giving places back."""

from __future__ import annotations

import asyncio

import pytest

from pydantic_toast.runtime.gate import Gate


async def test_places_go_to_waiters_in_the_order_they_came() -> None:
    """A holder that leaves and asks again queues behind the waiters."""
    gate = Gate(1)
    order: list[str] = []

    async def use(name: str, times: int) -> None:
        for _ in range(times):
            await gate.enter()
            order.append(name)
            await asyncio.sleep(0)
            gate.leave()

    await asyncio.gather(use("greedy", 3), use("a", 1), use("b", 1))
    assert order == ["greedy", "a", "b", "greedy", "greedy"]


async def test_nobody_enters_at_once_while_others_wait() -> None:
    """enter_now() refuses while a waiter is queued, even with a place free for it."""
    gate = Gate(1)
    assert gate.enter_now()
    waiting = asyncio.ensure_future(gate.enter())
    await asyncio.sleep(0)
    gate.leave()  # handed to the waiter, not to the room
    assert not gate.enter_now()
    await waiting
    gate.leave()
    assert gate.enter_now()


async def test_a_timed_out_or_cancelled_waiter_leaves_no_trace() -> None:
    """Waits that end without a place take nothing: the places are all there afterwards."""
    gate = Gate(2)
    assert gate.enter_now()
    assert gate.enter_now()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await gate.enter()
    cancelled = asyncio.ensure_future(gate.enter())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    gate.leave()
    gate.leave()
    assert gate.enter_now()
    assert gate.enter_now()
    assert not gate.enter_now()


async def test_a_place_handed_to_a_cancelled_waiter_is_passed_on() -> None:
    """Handed a place just as it is cancelled, a waiter gives it to the next one."""
    gate = Gate(1)
    assert gate.enter_now()
    first = asyncio.ensure_future(gate.enter())
    second = asyncio.ensure_future(gate.enter())
    await asyncio.sleep(0)
    gate.leave()  # to first...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)  # the place went on to second
    gate.leave()
    assert gate.enter_now()
