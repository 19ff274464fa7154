"""A fair line in front of a generator: first come, first served, a few requests per user.

``submit`` waits for a free slot, then runs the generator. While a request waits, its progress
callback hears its place in line each time that place changes ("queued: #3 in line"), so the
Discord layer can keep one message up to date. A request that is cancelled or fails leaves the
line at once, and everyone behind it moves up.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter
from dataclasses import dataclass, field

from bot.core.errors import QueueFull
from bot.core.limits import GenerationSlots
from bot.generate.base import GenerationRequest, Generator, Progress, ProgressCallback


class _State(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"


@dataclass(eq=False)
class _Ticket:
    """One request's place in the line; ``wake`` is set whenever that place may have changed."""

    user_id: int
    state: _State = _State.WAITING
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def _queue_full_message(limit: int) -> str:
    requests = "request" if limit == 1 else "requests"
    return (
        f"You already have {limit} image {requests} waiting or running, the most allowed at "
        "once. Wait for one to finish, then try again."
    )


class GenerationQueue:
    """Runs at most ``max_concurrent`` generations at once, in arrival order.

    A user may have at most ``per_user_limit`` requests waiting or running; one more is refused
    with ``QueueFull`` rather than queued, so nobody can fill the line for everyone else.
    """

    def __init__(
        self, generator: Generator, *, max_concurrent: int = 1, per_user_limit: int = 2,
        slots: GenerationSlots | None = None,
    ) -> None:
        if max_concurrent < 1 or per_user_limit < 1:
            raise ValueError("max_concurrent and per_user_limit must be at least 1")
        self.generator = generator
        self._max_concurrent = max_concurrent
        self._per_user_limit = per_user_limit
        # Several bot processes: the per-user limit counts their requests too (in the database).
        self._slots = slots
        self._line: list[_Ticket] = []
        self._running = 0
        self._held_by_user: Counter[int] = Counter()

    @property
    def waiting(self) -> int:
        """How many requests wait for a slot."""
        return len(self._line)

    @property
    def running(self) -> int:
        """How many requests the generator works on right now."""
        return self._running

    def pending_for(self, user_id: int) -> int:
        """How many requests this user has waiting or running."""
        return self._held_by_user[user_id]

    async def submit(
        self,
        user_id: int,
        request: GenerationRequest,
        progress: ProgressCallback | None = None,
    ) -> list[bytes]:
        """Wait for this request's turn, then generate; raises ``QueueFull`` over the limit."""
        if self._held_by_user[user_id] >= self._per_user_limit:
            raise QueueFull(_queue_full_message(self._per_user_limit))
        slots, slot = self._slots, None
        if slots is not None:
            slot = await slots.take(user_id, _queue_full_message(self._per_user_limit))
        ticket = _Ticket(user_id)
        self._held_by_user[user_id] += 1
        self._line.append(ticket)
        try:
            self._start_next()
            await self._wait_for_turn(ticket, progress)
            return await self.generator.generate(request, progress)
        finally:
            self._leave(ticket)
            if slots is not None and slot is not None:
                await asyncio.shield(slots.give_back(slot))

    async def _wait_for_turn(self, ticket: _Ticket, progress: ProgressCallback | None) -> None:
        told: int | None = None
        while ticket.state is _State.WAITING:
            # Clear before reading the position: a move after this point sets ``wake`` again,
            # and a move before it is already in the position we read.
            ticket.wake.clear()
            position = self._line.index(ticket) + 1
            if position != told and progress is not None:
                told = position
                await progress(Progress(0.0, f"queued: #{position} in line", position))
                continue
            await ticket.wake.wait()

    def _start_next(self) -> None:
        """Move tickets from the head of the line into free slots and tell the rest to look."""
        moved = False
        while self._line and self._running < self._max_concurrent:
            ticket = self._line.pop(0)
            ticket.state = _State.RUNNING
            self._running += 1
            ticket.wake.set()
            moved = True
        if moved:
            self._wake_line()

    def _wake_line(self) -> None:
        for ticket in self._line:
            ticket.wake.set()

    def _leave(self, ticket: _Ticket) -> None:
        """Give back whatever the ticket holds (its place in line or its slot), exactly once."""
        if ticket.state is _State.WAITING:
            self._line.remove(ticket)
            self._wake_line()
        elif ticket.state is _State.RUNNING:
            self._running -= 1
        ticket.state = _State.DONE
        self._held_by_user[ticket.user_id] -= 1
        if self._held_by_user[ticket.user_id] <= 0:
            del self._held_by_user[ticket.user_id]
        self._start_next()
