"""The fair queue in front of the one model: round-robin between callers, bounded, with deadlines, batching.

One group of requests runs at a time (on a CPU two generations side by side only slow each other
down). Waiting requests are grouped by caller and served round-robin, so a client that sends fifty
requests does not make the one that sends one wait behind all fifty. At most ``max_waiting``
requests wait; the next one is refused at once (:class:`QueueFull`, answered 429 with
``Retry-After``). A request that waits past its deadline gets :class:`QueueTimeout` (answered 503).

**Batches.** A request may carry a ``batch_key`` (plain requests with the same sampling
settings share one). When its turn comes, up to ``max_batch - 1`` more waiting requests with the
same key join it, taken round-robin too (each caller's next request only, so a caller's requests
stay in order), and the group runs as one generation: on a CPU a decode step costs about the
same for four sequences as for one (``bench/bench_batch_decode.py``).

With a ``start`` callback, the queue starts each granted group itself (``start(group)``, on the
event loop), and the group's worker releases its :class:`Ticket` when the generation has really
ended, so a request whose client left is not overlapped by the next and nothing depends on which
member's task resumes first. Without one, the acquirer holds the ticket and releases it.
Everything here runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """No room in the queue."""


class QueueTimeout(Exception):
    """The request's deadline passed while it waited."""


@dataclass
class Ticket:
    """The right to use the model; :meth:`release` (idempotent) hands it to the next in line."""

    queue: FairQueue
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


@dataclass
class Group:
    """Requests granted together: their payloads in order, and the one ticket they share."""

    ticket: Ticket
    payloads: list[Any]
    callers: list[str]


@dataclass(eq=False)
class _Waiter:
    caller: str
    batch_key: Hashable | None
    payload: Any
    future: asyncio.Future[Group]


class FairQueue:
    def __init__(
        self,
        max_waiting: int,
        *,
        max_batch: int = 1,
        start: Callable[[Group], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_waiting = max_waiting
        self.max_batch = max_batch
        self.start = start
        self.active = 0
        self.groups_started = 0
        self.batched_requests = 0
        self._waiting: OrderedDict[str, deque[_Waiter]] = OrderedDict()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    async def acquire(
        self, caller: str, timeout: float | None, *, batch_key: Hashable | None = None, payload: Any = None
    ) -> Group:
        """Wait for a turn; :class:`QueueFull` at once when the queue is full, :class:`QueueTimeout` later."""
        waiter = _Waiter(caller, batch_key, payload, asyncio.get_running_loop().create_future())
        if self.active == 0 and not self._waiting:
            self._waiting[caller] = deque([waiter])
            self._grant_next()
            return waiter.future.result()
        if self.waiting >= self.max_waiting:
            raise QueueFull(f"{self.waiting} requests are already waiting (the limit is {self.max_waiting})")
        self._waiting.setdefault(caller, deque()).append(waiter)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        except asyncio.TimeoutError:
            self._abandon(waiter)
            raise QueueTimeout(f"no turn came within {timeout:.0f} s") from None
        except BaseException:  # cancelled: the client left while waiting
            self._abandon(waiter)
            raise

    def _abandon(self, waiter: _Waiter) -> None:
        if waiter.future.done() and not waiter.future.cancelled():
            # granted as it gave up: a started group ends on its own (its cancel events), else pass the turn on
            if self.start is None:
                waiter.future.result().ticket.release()
            return
        waiter.future.cancel()
        waiters = self._waiting.get(waiter.caller)
        if waiters is not None:
            try:
                waiters.remove(waiter)
            except ValueError:
                pass
            if not waiters:
                del self._waiting[waiter.caller]

    def _release(self) -> None:
        self.active -= 1
        self._grant_next()

    def _pop_next(self, batch_key: Hashable | None = None) -> _Waiter | None:
        """The next waiter in round-robin order (with ``batch_key``: the next caller's first request with it)."""
        for caller in list(self._waiting):
            waiters = self._waiting[caller]
            while waiters and waiters[0].future.done():  # abandoned
                waiters.popleft()
            if not waiters:
                del self._waiting[caller]
                continue
            if batch_key is not None and waiters[0].batch_key != batch_key:
                continue
            waiter = waiters.popleft()
            del self._waiting[caller]  # to the back of the line, or out of it
            if waiters:
                self._waiting[caller] = waiters
            return waiter
        return None

    def _grant_next(self) -> None:
        if self.active > 0:
            return
        first = self._pop_next()
        if first is None:
            return
        members = [first]
        if first.batch_key is not None:
            while len(members) < self.max_batch and (more := self._pop_next(first.batch_key)) is not None:
                members.append(more)
        self.active += 1
        self.groups_started += 1
        if len(members) > 1:
            self.batched_requests += len(members)
        group = Group(Ticket(self), [m.payload for m in members], [m.caller for m in members])
        if self.start is not None:
            try:
                self.start(group)
            except Exception:  # a group that cannot start must not keep the model
                logger.exception("a request group could not start")
                group.ticket.release()
                for member in members:
                    member.future.set_exception(RuntimeError("the request could not start"))
                return
        for member in members:
            member.future.set_result(group)
