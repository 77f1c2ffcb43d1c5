"""Chat completions on ``ChatLlava``: an OpenAI request -> a stream of :class:`Piece` s.

:meth:`ChatCompletions.produce` runs in a worker thread (see :mod:`agent.serve.bridge`) and
yields what the reply is made of, in order: :class:`TextPiece` s as tokens arrive, then one
:class:`Final` with the finish reason, the tool calls and the token counts. The app
(:mod:`agent.serve.app`) writes them as stream chunks or as one response; the agent model
(:mod:`agent.serve.agent_model`) yields the same pieces plus :class:`EventPiece` s.

Everything the request asks for goes through ``ChatLlava`` itself: tools through ``bind_tools``
(the same always-valid constrained calls), ``response_format`` as the JSON-schema constraint
(``with_structured_output(method="json_schema")`` uses the same), ``stop``, ``seed``,
``temperature``, ``top_p`` and ``max_tokens`` as call options, and the request's remaining time
as ``timeout``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.serve.protocol import FINISH_REASONS, ChatCompletionRequest, response_schema

if TYPE_CHECKING:  # pragma: no cover
    from langchain_core.messages import BaseMessage

    from agent.llava.chat_model import ChatLlava

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextPiece:
    text: str


@dataclass(frozen=True)
class EventPiece:
    """Something the agent did (a tool call, a tool result), sent to the client as it happens."""

    data: dict[str, Any]


@dataclass
class Final:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    text: str
    """The whole reply text (what a non-streaming response holds)."""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """LangChain-style calls: name, args (a dict), id."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Top-level fields added to the last chunk and to the response (the agent's ``llava_agent``)."""


Piece = TextPiece | EventPiece | Final


class ChatCompletions:
    """Runs OpenAI chat-completion requests on one ``ChatLlava``."""

    def __init__(self, llm: ChatLlava) -> None:
        self.llm = llm

    def check(self, request: ChatCompletionRequest) -> dict[str, Any] | None:
        """Check what can be checked before queueing; returns the response schema (or None)."""
        return response_schema(request.response_format)

    def produce(
        self,
        messages: list[BaseMessage],
        request: ChatCompletionRequest,
        *,
        cancel: threading.Event,
        time_left: float,
    ) -> Iterator[Piece]:
        """Generate the reply (blocking; run it in a worker thread)."""
        llm = self.llm.model_copy(update={"timeout": max(time_left, 0.5)})
        schema = response_schema(request.response_format)
        runnable: Any = llm
        use_tools = bool(request.tools) and request.tool_choice != "none"
        if use_tools:
            tools = [tool.model_dump(exclude_none=True) for tool in request.tools or []]
            runnable = llm.bind_tools(tools, tool_choice=request.tool_choice)
        options: dict[str, Any] = {"cancel_event": cancel}
        if request.token_limit is not None:
            options["max_tokens"] = request.token_limit
        for name in ("temperature", "top_p", "seed"):
            if getattr(request, name) is not None:
                options[name] = getattr(request, name)
        if schema is not None:
            options["response_format"] = schema
        last = None
        text: list[str] = []
        for chunk in runnable.stream(messages, stop=request.stop_sequences, **options):
            if isinstance(chunk.content, str) and chunk.content:
                text.append(chunk.content)
                yield TextPiece(chunk.content)
            if chunk.usage_metadata is not None:
                last = chunk
        if last is None:  # ChatLlava always ends with a chunk carrying usage
            raise RuntimeError("the model's stream ended without its final chunk")
        finish = last.response_metadata.get("finish_reason", "stop")
        calls = [
            {"name": c["name"], "args": json.loads(c["args"] or "{}"), "id": c.get("id")}
            for c in last.tool_call_chunks
        ]
        if calls and request.parallel_tool_calls is False:
            calls = calls[:1]
        if finish == "timeout":
            logger.warning("generation stopped by the request's time limit (%.0f s)", llm.timeout)
        usage = last.usage_metadata
        yield Final(
            finish_reason=FINISH_REASONS.get(finish, finish),
            prompt_tokens=usage["input_tokens"],
            completion_tokens=usage["output_tokens"],
            text="".join(text),
            tool_calls=calls,
        )
