"""The fair queue in front of the one model: round-robin between callers, bounded, with deadlines.

One request runs at a time (``slots=1``: on a CPU two generations only slow each other down, and
``bench/bench_batch_decode.py`` measures whether batching would pay). Waiting requests are
grouped by caller and served round-robin, so a client that sends fifty requests does not make the
one that sends one wait behind all fifty. At most ``max_waiting`` requests wait; the next one is
refused at once (:class:`QueueFull`, answered 429 with ``Retry-After``). A request that waits past
its deadline gets :class:`QueueTimeout` (answered 503).

A granted :class:`Ticket` is released when the generation it covers has really ended (the worker
thread releases it, via the loop), so a request whose client left is not overlapped by the next.
Everything here runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """No room in the queue."""


class QueueTimeout(Exception):
    """The request's deadline passed while it waited."""


@dataclass
class Ticket:
    """The right to use the model; :meth:`release` (idempotent) hands it to the next in line."""

    queue: FairQueue
    caller: str
    released: bool = field(default=False)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.queue._release()

    def release_threadsafe(self, loop: asyncio.AbstractEventLoop) -> None:
        """Release from a worker thread."""
        try:
            loop.call_soon_threadsafe(self.release)
        except RuntimeError:  # the loop is closed: the server is gone, nothing waits any more
            pass


class FairQueue:
    def __init__(self, max_waiting: int, slots: int = 1) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.max_waiting = max_waiting
        self.slots = slots
        self.active = 0
        self._waiting: OrderedDict[str, deque[asyncio.Future[Ticket]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def waiting_by_caller(self) -> dict[str, int]:
        return {caller: len(q) for caller, q in self._waiting.items()}

    async def acquire(self, caller: str, timeout: float | None) -> Ticket:
        """Wait for a turn; raises :class:`QueueFull` at once when the queue is full, :class:`QueueTimeout` later."""
        if self.active < self.slots and not self._waiting:
            self.active += 1
            return Ticket(self, caller)
        if self.waiting >= self.max_waiting:
            raise QueueFull(f"{self.waiting} requests are already waiting (the limit is {self.max_waiting})")
        future: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(caller, deque()).append(future)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            self._abandon(caller, future)
            raise QueueTimeout(f"no turn came within {timeout:.0f} s") from None
        except BaseException:  # cancelled: the client left while waiting
            self._abandon(caller, future)
            raise

    def _abandon(self, caller: str, future: asyncio.Future[Ticket]) -> None:
        if future.done() and not future.cancelled():
            future.result().release()  # granted as we gave up: pass the turn on
            return
        future.cancel()
        waiters = self._waiting.get(caller)
        if waiters is not None:
            try:
                waiters.remove(future)
            except ValueError:
                pass
            if not waiters:
                del self._waiting[caller]

    def _release(self) -> None:
        self.active -= 1
        self._grant_next()

    def _grant_next(self) -> None:
        while self.active < self.slots and self._waiting:
            caller, waiters = next(iter(self._waiting.items()))
            future = waiters.popleft()
            # round robin: this caller goes to the back of the line (or leaves it when it has no more)
            del self._waiting[caller]
            if waiters:
                self._waiting[caller] = waiters
            if future.done():
                continue
            self.active += 1
            future.set_result(Ticket(self, caller))
