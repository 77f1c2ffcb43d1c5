"""Limits on what one model reply can make the tools do: calls per reply, time per call.

* **Calls per reply** (``tools.max_calls_per_reply``, default 8): a reply asking for more calls
  gets the first N run; each further call is answered with an error message telling the model to
  ask for the rest in its next reply. Forty ``speak`` calls in one reply run eight.
* **Time per call** (``tools.timeouts = {name = seconds}``, else :data:`DEFAULT_TIMEOUTS`, else
  ``tools.timeout_s``, default 300 s; loading the tool's model counts): when a call runs past its
  limit it is answered at once with an error naming the limit, and the call is cancelled at its next
  step (:mod:`tools.cancellation`), so it writes nothing.

Both answers are ordinary error tool messages: the model reads them and recovers, and the turn
goes on.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Sequence
from typing import Any

from langchain.agents.middleware import AgentMiddleware

from agent.app.events import NOT_RUN
from tools.cancellation import cancellable

DEFAULT_TIMEOUTS = {"generate_image": 600.0}
"""Tools that need more than ``tools.timeout_s`` by default (image generation on a CPU)."""


def _messages(state: Any) -> Sequence[Any]:
    return state.get("messages", []) if isinstance(state, dict) else getattr(state, "messages", [])


def call_position(state: Any, call_id: str) -> tuple[int, int]:
    """``(index of the call in the reply that asked for it, number of calls in that reply)``."""
    from langchain_core.messages import AIMessage

    for message in reversed(list(_messages(state))):
        if isinstance(message, AIMessage) and message.tool_calls:
            ids = [call.get("id") for call in message.tool_calls]
            if call_id in ids:
                return ids.index(call_id), len(ids)
    return 0, 1


class ToolLimitsMiddleware(AgentMiddleware):
    """Enforces ``max_calls_per_reply`` and per-tool time limits on the agent's tool calls."""

    def __init__(self, max_calls_per_reply: int, timeout_for: Callable[[str], float]) -> None:
        super().__init__()
        self.max_calls_per_reply = max_calls_per_reply
        self.timeout_for = timeout_for

    @classmethod
    def from_config(cls, tools_section: Any) -> ToolLimitsMiddleware:
        def timeout_for(name: str) -> float:
            return float(tools_section.timeouts.get(name, DEFAULT_TIMEOUTS.get(name, tools_section.timeout_s)))

        return cls(tools_section.max_calls_per_reply, timeout_for)

    def _refusal(self, request: Any) -> Any:
        from langchain_core.messages import ToolMessage

        call = request.tool_call
        index, total = call_position(request.state, call.get("id"))
        if index < self.max_calls_per_reply:
            return None
        return ToolMessage(
            content=(
                f"Not run: this reply asked for {total} tool calls and at most {self.max_calls_per_reply} run per "
                "reply (tools.max_calls_per_reply). Ask for the remaining ones in your next reply."
            ),
            tool_call_id=call.get("id") or "", name=call.get("name"), status="error",
            response_metadata={NOT_RUN: "max_calls_per_reply"},  # the turn's report says "not_run", not "error"
        )

    def _timeout_message(self, request: Any, seconds: float) -> Any:
        from langchain_core.messages import ToolMessage

        call = request.tool_call
        return ToolMessage(
            content=(
                f"{call.get('name')} did not finish within its time limit of {seconds:g} s (tools.timeouts, "
                "tools.timeout_s) and was stopped. Try a smaller request (fewer steps, a shorter text, a smaller "
                "image) or another tool, or tell the user it took too long."
            ),
            tool_call_id=call.get("id") or "", name=call.get("name"), status="error",
        )

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        seconds = self.timeout_for(request.tool_call.get("name", ""))
        event = threading.Event()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                with cancellable(event):
                    outcome["value"] = handler(request)
            except BaseException as exc:  # handed back to the agent's thread below
                outcome["error"] = exc

        context = contextvars.copy_context()
        worker = threading.Thread(target=context.run, args=(run,), name=f"tool-{request.tool_call.get('name')}",
                                  daemon=True)
        worker.start()
        worker.join(seconds)
        if worker.is_alive():
            event.set()  # the tool stops at its next step; its result, if any, is dropped
            return self._timeout_message(request, seconds)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    async def awrap_tool_call(self, request: Any, handler: Any) -> Any:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        seconds = self.timeout_for(request.tool_call.get("name", ""))
        event = threading.Event()
        with cancellable(event):
            task = asyncio.ensure_future(handler(request))
        try:
            return await asyncio.wait_for(asyncio.shield(task), seconds)
        except asyncio.TimeoutError:
            event.set()
            task.cancel()
            return self._timeout_message(request, seconds)


__all__ = ["DEFAULT_TIMEOUTS", "ToolLimitsMiddleware", "call_position"]
