"""The OpenAI wire format: the chat-completions request, responses, stream chunks and errors.

Only shapes live here (no model, no I/O), so they are tested alone. Field names and meanings
follow OpenAI's ``/v1/chat/completions``; what a local model cannot honour is refused with a
400 naming the field, never silently ignored (``n > 1``, ``logprobs``, penalties, ``logit_bias``).
Fields clients add that change nothing here (``store``, ``metadata``, ``service_tier``...) are
accepted and ignored.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.core.errors import (
    ConfigError,
    ContextLengthError,
    ImageError,
    InputError,
    ModelLoadError,
    ModelNotFoundError,
    PathNotAllowedError,
    QuantizationError,
)
from agent.core.files import without_server_paths

MAX_STOP_SEQUENCES = 4
MAX_USER_CHARS = 256
MAX_TOOLS = 32
MAX_SCHEMA_BYTES = 32_000
"""Tool and response schemas are compiled into a token automaton (seconds of CPU for a big one), so their size is capped."""
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1
"""The seeds the random number generator takes (a signed or unsigned 64-bit number), as ``ChatLlava.seed``."""
JSON_MODE_SCHEMA = {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean", "null"]}}
"""What ``{"type": "json_object"}`` writes: a flat object. Any-depth JSON compiles into an automaton too large to
build per request (33 s at a 512-token vocabulary); nested output takes a ``json_schema``."""

FINISH_REASONS = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "timeout": "length"}
"""Our finish reasons -> OpenAI's (a generation cut by the time limit is reported as cut: ``length``)."""


class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_for(exc: BaseException, request_id: str = "") -> APIError:
    """The API error a library exception becomes (an unexpected one is a 500 that reveals nothing)."""
    from langchain_core.exceptions import OutputParserException

    from agent.llava.reply_chunk import GenerationTimeoutError

    no_retry = {"x-should-retry": "false"}  # the official clients retry 5xx unless told not to
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextLengthError):
        return APIError(400, str(exc), code="context_length_exceeded", param="messages")
    if isinstance(exc, PathNotAllowedError):  # the folders and where the path led are not the caller's business
        return APIError(400, without_server_paths(str(exc)), code="path_not_allowed", param="messages")
    if isinstance(exc, ImageError):
        return APIError(400, str(exc), code="invalid_image", param="messages")
    if isinstance(exc, GenerationTimeoutError):
        return APIError(504, str(exc), type="timeout_error", code="generation_timeout", headers=no_retry)
    if isinstance(exc, (ModelNotFoundError, ModelLoadError, QuantizationError)):
        return APIError(503, f"the model is not available: {exc}", type="server_error", code="model_unavailable",
                        headers=no_retry)  # fmt: skip
    if isinstance(exc, (InputError, ConfigError)):
        return APIError(400, str(exc))
    if isinstance(exc, OutputParserException):
        return APIError(500, f"the model's reply could not be parsed (request {request_id})", type="server_error",
                        code="unparsable_reply", headers=no_retry)  # fmt: skip
    return APIError(500, f"internal error (request {request_id}); the server log has the details", type="server_error",
                    headers=no_retry)  # fmt: skip


# ----- the request ----------------------------------------------------------------------------


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionSpec(_Lenient):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolSpec(_Lenient):
    type: Literal["function"]
    function: FunctionSpec


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    """The body of ``POST /v1/chat/completions`` (messages are checked when converted)."""

    model: str = Field(min_length=1, max_length=256)
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = Field(None, max_length=MAX_USER_CHARS)
    n: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def stop_sequences(self) -> list[str] | None:
        if self.stop is None:
            return None
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


def parse_request(raw: bytes) -> ChatCompletionRequest:
    """Parse and check a request body; every problem is a 400 naming the field."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body is a JSON {type(data).__name__}, not an object; send a JSON object")
    try:
        request = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"])
        value = first.get("input")
        shown = "" if first["type"] == "missing" else f" (got {json.dumps(value, default=str)[:100]})"
        raise APIError(400, f"{param}: {first['msg']}{shown}", param=param, code="invalid_value") from None
    _refuse_unsupported(request)
    return request


def _refuse_unsupported(request: ChatCompletionRequest) -> None:
    if request.n not in (None, 1):
        raise APIError(400, f"n={request.n} is not supported: this server returns one choice; send n=1 or leave it out",
                       param="n", code="unsupported_value")  # fmt: skip
    if request.logprobs or request.top_logprobs:
        raise APIError(400, "logprobs are not supported by this server; leave logprobs and top_logprobs out",
                       param="logprobs", code="unsupported_value")  # fmt: skip
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name):
            raise APIError(400, f"{name} is not supported by this server; leave it out or send 0",
                           param=name, code="unsupported_value")  # fmt: skip
    if request.logit_bias:
        raise APIError(400, "logit_bias is not supported by this server; leave it out", param="logit_bias",
                       code="unsupported_value")  # fmt: skip
    if request.seed is not None and not MIN_SEED <= request.seed <= MAX_SEED:
        raise APIError(400, f"seed {str(request.seed)[:40]} is out of range; send a whole number from {MIN_SEED} "
                       f"to {MAX_SEED}", param="seed", code="invalid_value")  # fmt: skip
    stops = request.stop_sequences
    if stops is not None:
        if len(stops) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in stops):
            raise APIError(400, f"stop takes up to {MAX_STOP_SEQUENCES} non-empty strings, got {stops!r:.200}",
                           param="stop", code="invalid_value")  # fmt: skip
    if request.tool_choice is not None and not request.tools and request.tool_choice != "none":
        raise APIError(400, "tool_choice is only allowed when tools are given; send tools too or leave tool_choice out",
                       param="tool_choice")  # fmt: skip
    if request.tools and len(request.tools) > MAX_TOOLS:
        raise APIError(400, f"{len(request.tools)} tools is over the limit of {MAX_TOOLS}; send fewer", param="tools")
    for name, value in (("tools", [t.model_dump() for t in request.tools or []]),
                        ("response_format", request.response_format)):  # fmt: skip
        if value and len(json.dumps(value)) > MAX_SCHEMA_BYTES:
            raise APIError(400, f"{name} is over {MAX_SCHEMA_BYTES:,} bytes of JSON schema, the limit of this server; "
                           "send smaller schemas", param=name, code="schema_too_large")  # fmt: skip
    if request.tools and request.response_format and request.response_format.get("type") != "text":
        raise APIError(400, "response_format and tools cannot be combined in one request; use one or the other",
                       param="response_format")  # fmt: skip


def response_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema the whole reply must follow, from OpenAI's ``response_format`` (None: free text)."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return dict(JSON_MODE_SCHEMA)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise APIError(400, "response_format.json_schema.schema must be a JSON schema object; send "
                           '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}',
                           param="response_format.json_schema.schema")  # fmt: skip
        return schema
    raise APIError(400, f"response_format type {kind!r} is not supported; use 'text', 'json_object' or 'json_schema'",
                   param="response_format.type")  # fmt: skip


# ----- responses and chunks --------------------------------------------------------------------


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class CompletionWriter:
    """Builds the response objects of one completion: same id, creation time and model in each."""

    def __init__(self, model: str, completion_id: str | None = None) -> None:
        self.id = completion_id or new_completion_id()
        self.created = int(time.time())
        self.model = model

    def chunk(
        self,
        delta: dict[str, Any] | None,
        *,
        finish_reason: str | None = None,
        usage: dict[str, int] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One ``chat.completion.chunk``; ``delta=None`` gives the usage-only chunk (no choices)."""
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if usage is not None:
            body["usage"] = usage
        if extra:
            body.update(extra)
        return body

    def completion(
        self,
        message: dict[str, Any],
        *,
        finish_reason: str,
        usage: dict[str, int],
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage,
        }
        if extra:
            body.update(extra)
        return body


def assistant_message(text: str, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The ``message`` of a choice: content is null when the reply is only tool calls (as OpenAI sends it)."""
    message: dict[str, Any] = {"role": "assistant", "content": text if (text or not tool_calls) else None}
    if tool_calls:  # "index" belongs to stream deltas only
        message["tool_calls"] = [{k: v for k, v in call.items() if k != "index"} for call in tool_calls]
    return message


def openai_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """LangChain tool calls (name, args, id) -> OpenAI ``tool_calls`` (arguments as a JSON string)."""
    return [
        {
            "index": index,
            "id": call.get("id") or "call_" + secrets.token_hex(8),
            "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call.get("args") or {}, ensure_ascii=False)},
        }
        for index, call in enumerate(calls)
    ]


def sse(data: dict[str, Any]) -> bytes:
    """One server-sent event. JSON keeps every newline of the text escaped, so no text can end an event early."""
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
