"""Interactions take turns on the event loop (bot/turns.py, issue 12): a burst is let through a
few per loop iteration, in arrival order, so nothing else waits for the whole burst."""

from __future__ import annotations

import asyncio

import pytest

from bot.turns import Turns


async def _iterations_of(turns: Turns, count: int) -> list[int]:
    """Start ``count`` waiters at once; the loop iteration each got its turn in, by arrival."""
    loop = asyncio.get_running_loop()
    iteration = 0
    stop = False

    def tick() -> None:  # one call per loop iteration
        nonlocal iteration
        iteration += 1
        if not stop:
            loop.call_soon(tick)

    got: list[tuple[int, int]] = []

    async def waiter(n: int) -> None:
        await turns.take()
        got.append((n, iteration))

    loop.call_soon(tick)
    await asyncio.gather(*(waiter(n) for n in range(count)))
    stop = True
    assert [n for n, _ in got] == list(range(count)), "turns must follow arrival order"
    return [at for _, at in got]


async def test_a_burst_is_let_through_a_few_per_loop_iteration_in_arrival_order():
    turns = Turns(per_turn=8)
    iterations = await _iterations_of(turns, 200)
    per_iteration: dict[int, int] = {}
    for at in iterations:
        per_iteration[at] = per_iteration.get(at, 0) + 1
    assert max(per_iteration.values()) == 8
    assert len(per_iteration) == 25
    assert turns.waiting == 0


async def test_a_waiter_that_is_cancelled_gives_its_place_to_the_next():
    turns = Turns(per_turn=1)
    first = asyncio.create_task(turns.take())
    second = asyncio.create_task(turns.take())
    third = asyncio.create_task(turns.take())
    await asyncio.sleep(0)  # all three are waiting
    second.cancel()
    await asyncio.wait_for(asyncio.gather(first, third), 1)
    assert second.cancelled() and turns.waiting == 0


def test_a_turn_lets_at_least_one_through():
    with pytest.raises(ValueError):
        Turns(per_turn=0)
