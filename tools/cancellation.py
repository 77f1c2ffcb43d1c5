"""Cooperative cancellation of a tool call that ran past its time limit.

The agent runs each tool call under a time limit (:mod:`agent.app.tool_limits`). Python cannot kill
a thread, so when the limit passes the call is answered at once with an error the model can read,
and the call's *cancel event* is set; the tool notices it at its next natural step -- each
diffusion step, each speech chunk, each caption batch -- and stops there, writing nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator

from agent.core.errors import ToolError

_cancel: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("llava_agent_tool_cancel", default=None)


class ToolCancelled(ToolError):
    """The call ran past its time limit and stopped at its next step."""


def cancel_event() -> threading.Event | None:
    """The cancel event of the tool call running in this context (None outside a limited call)."""
    return _cancel.get()


def cancelled() -> bool:
    event = _cancel.get()
    return event is not None and event.is_set()


def raise_if_cancelled() -> None:
    """Stop the current tool call here if its time limit has passed."""
    if cancelled():
        raise ToolCancelled("the call ran past its time limit and was stopped")


@contextlib.contextmanager
def cancellable(event: threading.Event) -> Iterator[threading.Event]:
    """Run the block as a call that ``event`` cancels."""
    token = _cancel.set(event)
    try:
        yield event
    finally:
        _cancel.reset(token)


__all__ = ["ToolCancelled", "cancel_event", "cancellable", "cancelled", "raise_if_cancelled"]
