"""The last chunk of a reply: a finished generation turned into LangChain's message chunk.

The text not streamed yet, the parsed tool calls (as ``tool_call_chunks``), the finish reason
(``tool_calls`` when the reply is calls), token usage and the decode report. Half a tool call is
never returned: a generation that ran out of time inside one raises :class:`GenerationTimeoutError`,
and one the caller cancelled returns only what was said before it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk

from agent.core.errors import LlavaAgentError
from agent.decoding.tool_protocol import ToolCallParseError, first_call_position, parse_tool_calls

logger = logging.getLogger(__name__)


class GenerationTimeoutError(LlavaAgentError, TimeoutError):
    """Generation hit ``timeout`` in the middle of a tool call, so no valid call can be returned."""


def final_chunk(
    result: Any,
    emitted: str,
    prompt_tokens: int,
    *,
    model_name: str,
    timeout: float | None,
    structured: bool = False,
    time_to_first_token: float | None = None,
) -> ChatGenerationChunk:
    """The reply's last chunk from ``result`` (a :class:`agent.llava.streaming.GenerationResult`),
    after ``emitted`` text was streamed; its content is the text not streamed yet."""
    tool_call_chunks: list[dict[str, Any]] = []
    finish_reason = result.finish_reason
    text = result.text
    if structured and finish_reason == "timeout":
        raise GenerationTimeoutError(
            f"generation ran past timeout={timeout}s before the JSON output was complete "
            f"({result.text!r:.200}); raise the timeout or lower max_new_tokens"
        )
    if finish_reason == "cancelled":  # the caller walked away: what was said, never half a call
        text = result.text if result.mode == "text" else emitted
    elif result.mode == "tool_call" and not structured:
        if finish_reason == "timeout":
            raise GenerationTimeoutError(
                f"generation ran past timeout={timeout}s in the middle of a tool call "
                f"({result.text!r:.200}); raise the timeout or lower max_new_tokens"
            )
        try:
            _, calls = parse_tool_calls(result.text)
        except ToolCallParseError as exc:
            raise OutputParserException(str(exc), llm_output=exc.llm_output) from exc
        text = result.text[: first_call_position(result.text)].rstrip() if calls else result.text
        tool_call_chunks = [
            {
                "type": "tool_call_chunk",
                "name": call["name"],
                "args": json.dumps(call["args"], ensure_ascii=False),
                "id": call["id"],
                "index": index,
            }
            for index, call in enumerate(calls)
        ]
        if calls:
            finish_reason = "tool_calls"
    # the text not streamed yet (held back while it might have been a call or a stop)
    remaining = text[len(emitted) :] if text.startswith(emitted) else ""
    if finish_reason == "timeout":
        logger.warning(
            "Generation stopped by timeout=%ss after %d tokens", timeout, result.output_tokens
        )
    message = AIMessageChunk(
        content=remaining,
        tool_call_chunks=tool_call_chunks,
        usage_metadata={
            "input_tokens": prompt_tokens,
            "output_tokens": result.output_tokens,
            "total_tokens": prompt_tokens + result.output_tokens,
        },
        response_metadata={
            "finish_reason": finish_reason,
            "model_name": model_name,
            **({"decode": result.decode} if result.decode is not None else {}),
            **(
                {"time_to_first_token": round(time_to_first_token, 4)}
                if time_to_first_token is not None
                else {}
            ),
        },
        chunk_position="last",
    )
    return ChatGenerationChunk(message=message, generation_info={"finish_reason": finish_reason})


__all__ = ["GenerationTimeoutError", "final_chunk"]
