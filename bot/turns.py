"""Turns on the event loop for a burst of interactions (issue 12).

A burst of commands arrives in one gateway read: discord.py starts a task for each, and every
task's first step (option conversion, checks, the command's first lines and the HTTP request
that acknowledges it) runs in the same event-loop iteration, one after the other. Nothing else
runs until all of them are done: with 200 at once the loop was held for tens of milliseconds,
so timers, replies to earlier commands and the link server all waited.

Here each interaction waits for its turn first, and at most ``per_turn`` are let through per
loop iteration, in arrival order: the loop gets back to everything else between turns. The
waiting itself is cheap (a future per interaction).
"""

from __future__ import annotations

import asyncio
from collections import deque


class Turns:
    def __init__(self, per_turn: int) -> None:
        if per_turn < 1:
            raise ValueError("per_turn must be at least 1")
        self.per_turn = per_turn
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._scheduled: asyncio.Handle | None = None

    async def take(self) -> None:
        """Return at this caller's turn: in arrival order, ``per_turn`` per loop iteration."""
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        self._waiting.append(turn)
        if self._scheduled is None:
            self._scheduled = loop.call_soon(self._release)
        await turn

    def _release(self) -> None:
        released = 0
        while self._waiting and released < self.per_turn:
            turn = self._waiting.popleft()
            if not turn.done():  # a cancelled waiter gives its place up
                turn.set_result(None)
                released += 1
        # The released tasks run in the next iteration; the next batch is let through in the
        # one after that, so no iteration runs more than one batch of first steps.
        self._scheduled = (asyncio.get_running_loop().call_soon(self._release)
                           if self._waiting else None)

    @property
    def waiting(self) -> int:
        return sum(1 for turn in self._waiting if not turn.done())
