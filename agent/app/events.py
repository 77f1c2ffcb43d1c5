"""What one agent turn produces: the typed stream events and the final :class:`AgentReply`.

:class:`TurnCollector` turns LangGraph stream parts (``messages`` and ``updates`` modes) into
these events and gathers the reply.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

NOT_RUN = "not_run"
"""A call's status when it was refused before it ran; also the ``response_metadata`` key of the tool
message that answers such a call (:mod:`agent.app.tool_limits`)."""


@dataclass
class AgentReply:
    """The outcome of one turn."""

    text: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """Each call made this turn: ``name``, ``args``, ``id`` and ``status`` (success, error, not_run)."""
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    """What tools produced (image and audio paths, search hits), each with its ``tool`` name."""
    thread_id: str = ""
    stopped: bool = False
    """True when the turn was interrupted with :meth:`MultimodalAgent.stop`."""
    limit_reached: bool = False
    """True when the step limit ended the turn."""


@dataclass(frozen=True)
class TokenEvent:
    """A piece of the model's answer, as it is generated."""

    text: str


@dataclass(frozen=True)
class ToolCallEvent:
    """The model asked for a tool; it is about to run."""

    name: str
    args: dict[str, Any]
    call_id: str


@dataclass(frozen=True)
class ToolResultEvent:
    """A tool finished (or failed: ``is_error``); ``artifact`` holds files and hits it produced."""

    name: str
    content: str
    artifact: Any
    call_id: str
    is_error: bool = False


@dataclass(frozen=True)
class ReplyEvent:
    """The turn is over; always the last event of a stream."""

    reply: AgentReply


AgentEvent = Union[TokenEvent, ToolCallEvent, ToolResultEvent, ReplyEvent]


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = [b.get("text", "") if isinstance(b, dict) else str(b) for b in content or []]
    return "".join(p for p in parts if isinstance(p, str))


class TurnCollector:
    """Turns LangGraph stream parts into agent events and gathers the reply."""

    def __init__(self, thread_id: str) -> None:
        self.thread_id = thread_id
        self.tokens: list[str] = []
        self.final_text: str | None = None
        self.tool_calls: list[dict[str, Any]] = []
        self.artifacts: list[dict[str, Any]] = []
        self.stopped = False
        self.limit_reached = False

    def consume(self, mode: str, data: Any) -> Iterator[AgentEvent]:
        from langchain_core.messages import AIMessage, AIMessageChunk, ToolMessage

        if mode == "messages":
            chunk, metadata = data
            if isinstance(chunk, AIMessageChunk) and metadata.get("langgraph_node") == "model":
                text = _content_text(chunk.content)
                if text:
                    self.tokens.append(text)
                    yield TokenEvent(text)
            return
        if mode != "updates" or not isinstance(data, Mapping):
            return
        for node, update in data.items():
            messages = update.get("messages", []) if isinstance(update, Mapping) else []
            for message in messages if isinstance(messages, list) else [messages]:
                if isinstance(message, AIMessage) and node == "model":
                    self.tokens.clear()
                    self.final_text = _content_text(message.content)
                    for call in message.tool_calls:
                        self.tool_calls.append(
                            {"name": call["name"], "args": call["args"], "id": call.get("id") or "", "status": "pending"}
                        )
                        yield ToolCallEvent(call["name"], dict(call["args"]), call.get("id") or "")
                elif isinstance(message, ToolMessage):
                    yield self._tool_result(message)

    def _tool_result(self, message: Any) -> ToolResultEvent:
        is_error = message.status == "error"
        refused = bool((getattr(message, "response_metadata", None) or {}).get(NOT_RUN))  # over the per-reply cap
        for call in self.tool_calls:
            if call["id"] == message.tool_call_id:
                call["status"] = NOT_RUN if refused else "error" if is_error else "success"
        name = message.name or ""
        artifact = message.artifact
        if artifact is not None and not is_error:
            items = artifact if isinstance(artifact, list) else [artifact]
            for item in items:
                self.artifacts.append({"tool": name, **item} if isinstance(item, dict) else {"tool": name, "value": item})
        return ToolResultEvent(name, _content_text(message.content), artifact, message.tool_call_id, is_error)

    def reply(self, limit_text: str) -> AgentReply:
        for call in self.tool_calls:
            if call["status"] == "pending":
                call["status"] = NOT_RUN
        if self.limit_reached:
            text = limit_text
        elif self.stopped or self.final_text is None:
            text = "".join(self.tokens)
        else:
            text = self.final_text
        return AgentReply(
            text=text.strip(),
            tool_calls=self.tool_calls,
            artifacts=self.artifacts,
            thread_id=self.thread_id,
            stopped=self.stopped,
            limit_reached=self.limit_reached,
        )
