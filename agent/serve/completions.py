"""Chat completions on ``ChatLlava``: an OpenAI request -> a stream of :class:`Piece` s.

:meth:`ChatCompletions.produce` runs in a worker thread (see :mod:`agent.serve.jobs`) and
yields what the reply is made of, in order: :class:`TextPiece` s as tokens arrive, then one
:class:`Final` with the finish reason, the tool calls and the token counts. The app
(:mod:`agent.serve.app`) writes them as stream chunks or as one response; the agent model
(:mod:`agent.serve.agent_model`) yields the same pieces plus :class:`EventPiece` s.

Everything the request asks for goes through ``ChatLlava`` itself: tools through ``bind_tools``
(the same always-valid constrained calls), ``response_format`` as the JSON-schema constraint
(``with_structured_output(method="json_schema")`` uses the same), ``stop``, ``seed``,
``temperature``, ``top_p`` and ``max_tokens`` as call options, and the request's remaining time
as ``timeout``. Plain requests that wait together run as one batch
(:meth:`ChatCompletions.produce_batch`, :mod:`agent.llava.batching`), each with its own limits.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Hashable, Iterator, Sequence
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

    def batch_key(self, request: ChatCompletionRequest, messages: list[BaseMessage]) -> Hashable | None:
        """The key of the batches this request can join, or None when it must run alone.

        Plain requests batch: text only, no tools, no JSON output, no seed (a seed fixes one
        sequence's sampling). Requests batch together when their sampling settings are the same.
        """
        if request.tools or response_schema(request.response_format) is not None or request.seed is not None:
            return None
        if any(isinstance(m.content, list) and any(isinstance(b, dict) and b.get("type") == "image" for b in m.content)
               for m in messages):  # fmt: skip
            return None
        temperature = self.llm.temperature if request.temperature is None else request.temperature
        top_p = self.llm.top_p if request.top_p is None else request.top_p
        return ("plain", float(temperature), float(top_p))

    def produce_batch(
        self, requests: Sequence[tuple[list[BaseMessage], ChatCompletionRequest, threading.Event, float]]
    ) -> Iterator[tuple[int, Piece | BaseException]]:
        """Generate the replies of several plain requests at once (messages, request, cancel, deadline each).

        Yields ``(index, piece)`` in the order they come; a request that cannot run (its prompt
        over the context) gets ``(index, exception)``, the others go on.
        """
        from agent.llava.batching import BatchRequest, stream_batch

        _, temperature, top_p = self.batch_key(requests[0][1], requests[0][0])  # type: ignore[misc]
        batch = [
            BatchRequest(messages, max_tokens=request.token_limit, stop=request.stop_sequences, cancel=cancel,
                         timeout=max(deadline - time.monotonic(), 0.5))
            for messages, request, cancel, deadline in requests
        ]  # fmt: skip
        text: dict[int, list[str]] = {index: [] for index in range(len(batch))}
        for index, chunk in stream_batch(self.llm, batch, temperature=temperature, top_p=top_p):
            if isinstance(chunk, BaseException):
                yield index, chunk
                continue
            if chunk.content:
                text[index].append(chunk.content)
                yield index, TextPiece(chunk.content)
            if chunk.usage_metadata is not None:
                finish = chunk.response_metadata.get("finish_reason", "stop")
                usage = chunk.usage_metadata
                yield index, Final(
                    finish_reason=FINISH_REASONS.get(finish, finish),
                    prompt_tokens=usage["input_tokens"],
                    completion_tokens=usage["output_tokens"],
                    text="".join(text[index]),
                )

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
