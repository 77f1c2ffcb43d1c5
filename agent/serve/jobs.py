"""Requests as jobs: a group of them runs in one worker thread, each reads its own pieces from asyncio.

A :class:`Job` is one request's part of the work: how to produce its reply alone
(``produce(time_left)``), or, for a plain chat request, what it brings to a batch (``batch``). The
fair queue grants a group of jobs (one, or a batch) and :func:`start_group` runs it in a worker
thread, in a copy of the first job's context (so log lines carry its request id). Each job's
pieces are handed to its own asyncio queue; :func:`job_pieces` reads them.

A client that leaves sets its job's ``cancel`` event, which the producer passes on
(``ChatLlava``'s ``cancel_event``, a batch row's cancel, an agent turn's ``stop``); the worker
reads on to the end without handing anything over, so what was generated is still counted. When
the whole group has ended, ``on_done`` runs on the event loop: the queue turn is released there.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agent.serve.completions import Final, Piece

logger = logging.getLogger(__name__)

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


@dataclass(eq=False)
class Job:
    loop: asyncio.AbstractEventLoop
    deadline: float
    """``time.monotonic()`` by which the reply must be over."""
    produce: Callable[[float], Iterator[Piece]]
    """The reply alone, given the seconds left (blocking; runs in the worker thread)."""
    batch: Any = None
    """What a batched run needs of this request (None: it always runs alone)."""
    stop_at_deadline: bool = False
    """Set ``cancel`` at the deadline (a producer that ends gracefully on it, like an agent turn)."""
    cancel: threading.Event = field(default_factory=threading.Event)
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    pieces: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    finals: list[Final] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)
    watcher: Any = None
    """What notices the client leaving (the route's ``DisconnectWatcher``)."""
    left: bool = False
    """The consumer is gone: nothing more is handed over."""
    ended: bool = False

    def put(self, item: Any) -> None:
        """Hand a piece (or a failure) over, from the worker thread."""
        if isinstance(item, Final):
            self.finals.append(item)
        elif isinstance(item, _Failure):
            self.failures.append(item.exc)
        if self.left:
            return
        try:
            self.loop.call_soon_threadsafe(self.pieces.put_nowait, item)
        except RuntimeError:  # the loop closed under us (shutdown)
            self.cancel.set()

    @property
    def completion_tokens(self) -> int:
        return sum(f.completion_tokens for f in self.finals)


async def job_pieces(job: Job) -> AsyncIterator[Piece]:
    """The job's pieces as they come; leaving early cancels the job. A failure is raised here."""
    finished = False
    try:
        while True:
            item = await job.pieces.get()
            if item is _DONE:
                finished = True
                return
            if isinstance(item, _Failure):
                finished = True
                raise item.exc
            yield item
    finally:
        if not finished:
            job.left = True
            job.cancel.set()


def start_group(
    jobs: list[Job],
    run_batch: Callable[[list[Job]], Iterator[tuple[int, Piece | BaseException]]],
    on_done: Callable[[], None],
) -> None:
    """Run ``jobs`` in a worker thread: one alone with its ``produce``, several with ``run_batch``."""
    loop = jobs[0].loop
    timers = [
        loop.call_later(max(job.deadline - time.monotonic(), 0.1), job.cancel.set)
        for job in jobs
        if job.stop_at_deadline
    ]

    def work() -> None:
        try:
            if len(jobs) == 1:
                job = jobs[0]
                for piece in job.produce(job.deadline - time.monotonic()):
                    job.put(piece)
            else:
                for index, piece in run_batch(jobs):
                    job = jobs[index]
                    job.put(_Failure(piece) if isinstance(piece, BaseException) else piece)
        except BaseException as exc:  # handed to every job still waiting for its reply
            for job in jobs:
                if not job.finals and not job.failures:
                    job.put(_Failure(exc))
        finally:
            for job in jobs:
                job.ended = True
                job.put(_DONE)

            def finish() -> None:
                for timer in timers:
                    timer.cancel()
                on_done()

            try:
                loop.call_soon_threadsafe(finish)
            except RuntimeError:
                pass

    name = "serve-generate" if len(jobs) == 1 else f"serve-batch-{len(jobs)}"
    threading.Thread(target=jobs[0].context.run, args=(work,), name=name, daemon=True).start()
