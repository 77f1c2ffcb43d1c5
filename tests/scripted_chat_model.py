"""A LangChain chat model that replays scripted replies: the agent graph tested without weights.

Each call to the model returns the next scripted ``AIMessage`` (or the result of a callable
given the messages it received). Replies stream word by word, with tool calls as
``tool_call_chunks``, like a real streaming model. ``bind_tools`` records the tools and the
``tool_choice`` so tests can check what the agent bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

Reply = AIMessage | str | Callable[[list[BaseMessage]], AIMessage | str]


def tool_call(name: str, args: dict[str, Any], call_id: str | None = None) -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id or f"call_{name}", "type": "tool_call"}


class ScriptedChatModel(BaseChatModel):
    """Replays ``replies`` in order; the last one repeats when the script runs out."""

    replies: list[Any] = Field(default_factory=list)
    token_delay_s: float = 0.0
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    bound: list[dict[str, Any]] = Field(default_factory=list)
    position: int = 0

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any):
        schemas = [convert_to_openai_tool(t) for t in tools]
        self.bound.append({"tools": [s["function"]["name"] for s in schemas], "tool_choice": tool_choice,
                           "tool_prior": kwargs.get("tool_prior")})
        return self.bind(tools=schemas, tool_choice=tool_choice, **kwargs)

    def _next_reply(self, messages: list[BaseMessage]) -> AIMessage:
        self.calls.append(list(messages))
        if not self.replies:
            return AIMessage(content="ok")
        reply = self.replies[min(self.position, len(self.replies) - 1)]
        self.position += 1
        if callable(reply):
            reply = reply(messages)
        return AIMessage(content=reply) if isinstance(reply, str) else reply

    def _generate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._next_reply(messages))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        reply = self._next_reply(messages)
        text = reply.content if isinstance(reply.content, str) else ""
        words = text.split(" ") if text else []
        for index, word in enumerate(words):
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
            piece = word if index == len(words) - 1 else word + " "
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        if reply.tool_calls:
            import json

            chunks = [
                {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i, "type": "tool_call_chunk"}
                for i, c in enumerate(reply.tool_calls)
            ]
            yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=chunks))
        yield ChatGenerationChunk(message=AIMessageChunk(content="", chunk_position="last"))
