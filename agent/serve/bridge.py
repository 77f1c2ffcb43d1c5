"""Run a blocking generator (a model's token stream, an agent turn) in a worker thread, read it from asyncio.

:func:`stream_in_thread` hands items over as they are produced. Leaving early (the async iterator
closed or cancelled, e.g. because the client disconnected) sets the ``cancel`` event; the worker
then stops reading, closes the generator (which ends generation) and, whenever it is really done,
calls ``on_done`` on the event loop. The worker runs in a copy of the caller's context, so its log
lines carry the request id.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def stream_in_thread(
    produce: Callable[[], Iterator[T]],
    *,
    cancel: threading.Event,
    on_done: Callable[[], None] | None = None,
    name: str = "serve-worker",
) -> AsyncIterator[T]:
    """Iterate ``produce()`` in a worker thread; yield its items here. Exceptions are re-raised here."""
    loop = asyncio.get_running_loop()
    handover: asyncio.Queue[Any] = asyncio.Queue()
    left = threading.Event()  # the consumer is gone: stop reading

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(handover.put_nowait, item)
        except RuntimeError:  # the loop closed under us (server shutdown)
            cancel.set()

    def work() -> None:
        iterator = None
        try:
            iterator = produce()
            for item in iterator:
                if not left.is_set():
                    put(item)
        except BaseException as exc:  # handed to the consumer
            put(_Failure(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:  # nobody is left to tell
                    logger.warning("closing the stream failed: %s", exc)
            put(_DONE)
            if on_done is not None:
                try:
                    loop.call_soon_threadsafe(on_done)
                except RuntimeError:
                    pass

    context = contextvars.copy_context()
    worker = threading.Thread(target=context.run, args=(work,), name=name, daemon=True)
    worker.start()
    finished = False
    try:
        while True:
            item = await handover.get()
            if item is _DONE:
                finished = True
                return
            if isinstance(item, _Failure):
                finished = True
                raise item.exc
            yield item
    finally:
        if not finished:  # the consumer left early: end the work; the worker calls on_done when it has
            left.set()
            cancel.set()
