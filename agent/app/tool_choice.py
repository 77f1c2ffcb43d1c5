"""A forced ``tool_choice`` (``agent.tool_choice``): on the first model call of each turn only.

The first call is the one after the user's message; the calls after a tool result are left to
decide freely, so the model can answer in words once its tool has run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import HumanMessage

from agent.core.errors import InputError
from agent.decoding.tool_protocol import normalise_tool_choice

if TYPE_CHECKING:
    from langchain.agents.middleware import ModelRequest, ModelResponse


class FirstCallToolChoice(AgentMiddleware):
    """Forces ``tool_choice`` on the first model call of each turn only (the one after the user's message)."""

    def __init__(self, tool_choice: str) -> None:
        super().__init__()
        self.tool_choice = tool_choice

    def _prepare(self, request: ModelRequest) -> ModelRequest:
        if request.tools and request.messages and isinstance(request.messages[-1], HumanMessage):
            return request.override(tool_choice=self.tool_choice)
        return request

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> ModelResponse:
        return handler(self._prepare(request))

    async def awrap_model_call(self, request: ModelRequest, handler: Any) -> ModelResponse:
        return await handler(self._prepare(request))


def tool_choice_middleware(tool_choice: str | None, tool_names: Sequence[str]) -> FirstCallToolChoice | None:
    """The middleware for the ``agent.tool_choice`` setting (None when unset); a bad value names the setting."""
    if not tool_choice:
        return None
    try:
        return FirstCallToolChoice(normalise_tool_choice(tool_choice, list(tool_names)))
    except InputError as exc:
        raise InputError(f"agent.tool_choice: {exc}") from None


__all__ = ["FirstCallToolChoice", "tool_choice_middleware"]
