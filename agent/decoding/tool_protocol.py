"""The tool protocol: how tools are shown to the model and how a call is written and parsed.

This module is the single definition of the format. Inference (``ChatLlava``), constrained
decoding (:mod:`agent.decoding.constraint`) and fine-tuning data all go through it, so a model sees in
its history, is trained on, and emits exactly one format. It follows the Hermes / Qwen2.5
convention, which vLLM's Hermes parser and LLaMA-Factory (``tool_format=qwen``) also read.

**Tools** are listed in the system turn, one OpenAI-format JSON schema per line inside a
``<tools>`` block (see :func:`tools_system_prompt`)::

    <tools>
    {"type": "function", "function": {"name": "caption_image", "description": "...", "parameters": {...}}}
    </tools>

**A call** is a ``<tool_call>`` block holding exactly
``json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)`` -- separators
``", "`` and ``": "``, argument keys in the order of the tool's schema::

    <tool_call>
    {"name": "caption_image", "arguments": {"image": "cat.png", "detail": "short"}}
    </tool_call>

Several calls in one reply are separated by one newline. A reply may start with text; calls,
when present, come after it and end the reply.

**A result** goes back to the model as a user turn holding one block per tool message::

    <tool_response>
    A cat sitting on a mat.
    </tool_response>

A call starts only where ``<tool_call>`` begins a line -- column 0, or the start of the reply
after any whitespace -- outside a fenced code block (````` ``` ````` or ``~~~``); see
:func:`call_opener_positions`. ``<tool_call>`` anywhere else is ordinary text, so a reply can
quote the tag (a file named ``<tool_call>.png``, a fenced example) without running anything.

Parsing (:func:`parse_tool_calls`) is strict about the inside of a ``<tool_call>`` block (valid
JSON object with a string ``name`` and an object ``arguments``) and raises
:class:`ToolCallParseError` quoting the raw text otherwise (``ChatLlava`` re-raises it as LangChain's
``OutputParserException``). A
``</tool_call>`` with no opener before it is ordinary text.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from agent.core.errors import InputError

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"
TOOLS_OPEN = "<tools>"
TOOLS_CLOSE = "</tools>"

_ROLES = ("system", "user", "assistant", "tool")
TOOL_CHOICE_KEYWORDS = ("auto", "any", "required", "none")


class ToolCallParseError(InputError):
    """A ``<tool_call>`` block in model output is unclosed or not a valid call; ``llm_output`` is the raw text."""

    def __init__(self, message: str, *, llm_output: str) -> None:
        super().__init__(message)
        self.llm_output = llm_output


def normalise_tool_choice(tool_choice: Any, tool_names: Sequence[str]) -> str | None:
    """The one reading of ``tool_choice``: None, ``"auto"``, ``"any"``, ``"none"`` or a tool name.

    Accepts the forms callers use: None, booleans (True = at least one call), ``"required"``
    (= ``"any"``), a tool name, or ``{"type": "function", "function": {"name": ...}}``. Unknown
    names raise :class:`InputError` listing the bound tools.
    """
    if tool_choice is None:
        return None
    if tool_choice is True:
        return "any"
    if tool_choice is False:
        return "none"
    if isinstance(tool_choice, dict):
        function = (
            tool_choice.get("function") if isinstance(tool_choice.get("function"), dict) else tool_choice
        )
        name = function.get("name")
        if not isinstance(name, str):
            raise InputError(
                f"tool_choice {tool_choice!r} names no tool; use {{'type': 'function', 'function': {{'name': ...}}}}"
            )
        tool_choice = name
    if not isinstance(tool_choice, str):
        raise InputError(f"tool_choice {tool_choice!r} is not supported; use auto, any, none or a tool name")
    if tool_choice == "required":
        return "any"
    if tool_choice in TOOL_CHOICE_KEYWORDS:
        return tool_choice
    if tool_choice not in tool_names:
        bound = ", ".join(tool_names) or "(none)"
        raise InputError(
            f"tool_choice {tool_choice!r} is not one of the bound tools ({bound}) nor one of "
            f"{', '.join(TOOL_CHOICE_KEYWORDS)}"
        )
    return tool_choice




def tools_system_prompt(schemas: list[dict]) -> str:
    """The system-turn text that shows ``schemas`` to the model and says how to call them."""
    lines = "\n".join(json.dumps(schema, ensure_ascii=False) for schema in schemas)
    return (
        "# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"{TOOLS_OPEN}\n{lines}\n{TOOLS_CLOSE}\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n"
        f'{TOOL_CALL_OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n{TOOL_CALL_CLOSE}'
    )


def format_tool_call(name: str, arguments: dict) -> str:
    """The exact text of one call: ``<tool_call>\\n{json}\\n</tool_call>``."""
    if not isinstance(arguments, dict):
        raise InputError(f"arguments of tool call {name!r} must be a dict, got {type(arguments).__name__}")
    payload = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{payload}\n{TOOL_CALL_CLOSE}"


def _call_name_and_arguments(call: dict) -> tuple[str, dict]:
    """Read a call in HF/OpenAI form ({"function": {...}}) or flat form ({"name", "arguments"|"args"})."""
    if not isinstance(call, dict):
        raise InputError(f"a tool call must be a dict, got {call!r:.120}")
    body = call.get("function", call)
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        raise InputError(f"tool call {call!r:.120} has no function name")
    arguments = body.get("arguments", body.get("args", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise InputError(
                f"arguments of tool call {name!r} are not valid JSON ({exc}): {arguments!r:.200}"
            ) from None
    if not isinstance(arguments, dict):
        raise InputError(f"arguments of tool call {name!r} must be a JSON object, got {arguments!r:.200}")
    return name, arguments


def format_tool_calls(calls: list[dict]) -> str:
    """Several calls, one block each, joined by a newline.

    Each call is ``{"type": "function", "function": {"name", "arguments"}}`` or a flat
    ``{"name", "arguments"}`` / LangChain ``{"name", "args"}`` dict; string arguments are JSON-decoded.
    """
    return "\n".join(format_tool_call(*_call_name_and_arguments(call)) for call in calls)


def format_tool_response(content: str) -> str:
    """The text a tool result is shown as: ``<tool_response>\\n...\\n</tool_response>``."""
    return f"{TOOL_RESPONSE_OPEN}\n{content}\n{TOOL_RESPONSE_CLOSE}"


def new_tool_call_id() -> str:
    """A fresh tool call id, ``call_<32 hex digits>``."""
    return f"call_{uuid.uuid4().hex}"


_FENCES = ("```", "~~~")
_BLANKS = " \t\r\n"


def call_opener_positions(text: str) -> list[int]:
    """Where ``<tool_call>`` starts a call in ``text``: at a line start, outside fenced blocks.

    A line start is column 0 of any line, or the first non-whitespace character of the text.
    A line whose content (after at most three spaces) starts with ````` ``` ````` or ``~~~`` opens or
    closes a fenced block; nothing inside one is a call.
    """
    positions: list[int] = []
    fenced = False
    offset = 0
    leading = len(text) - len(text.lstrip(_BLANKS))
    for line in (piece + "\n" for piece in text.split("\n")):  # only "\n" ends a line, as in decoding
        content = line.lstrip(" ")
        if content[:3] in _FENCES and len(line) - len(content) <= 3:
            fenced = not fenced
        elif not fenced:
            if line.startswith(TOOL_CALL_OPEN):
                positions.append(offset)
            elif offset <= leading < offset + len(line) and text.startswith(TOOL_CALL_OPEN, leading):
                positions.append(leading)
        offset += len(line)
    return positions


def first_call_position(text: str) -> int:
    """Where the first call starts in ``text`` (see :func:`call_opener_positions`), or -1."""
    positions = call_opener_positions(text)
    return positions[0] if positions else -1


def parse_tool_calls(text: str) -> tuple[str, list[dict]]:
    """Split a reply into its text and its tool calls.

    Only openers at a line start outside fenced blocks start a call (:func:`call_opener_positions`).
    Returns ``(text outside the calls, stripped, [{"name", "args", "id"}, ...])``. Raises
    :class:`ToolCallParseError` (quoting the raw text) when a ``<tool_call>`` block is unclosed, is
    not a JSON object, or lacks a string ``name`` or an object ``arguments``.
    """
    outside: list[str] = []
    calls: list[dict] = []
    position = 0
    openers = call_opener_positions(text)
    while True:
        start = next((p for p in openers if p >= position), -1)
        if start < 0:
            outside.append(text[position:])
            break
        outside.append(text[position:start])
        body_start = start + len(TOOL_CALL_OPEN)
        end = text.find(TOOL_CALL_CLOSE, body_start)
        if end < 0:
            raise ToolCallParseError(
                f"unclosed {TOOL_CALL_OPEN} block (no {TOOL_CALL_CLOSE}) in model output: {text!r}",
                llm_output=text,
            )
        body = text[body_start:end].strip()
        try:
            payload = json.loads(body)
        except json.JSONDecodeError as exc:
            raise ToolCallParseError(
                f"{TOOL_CALL_OPEN} block is not valid JSON ({exc}): {body!r}; full model output: {text!r}",
                llm_output=text,
            ) from None
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str) or not payload["name"]:
            raise ToolCallParseError(
                f'{TOOL_CALL_OPEN} block must be a JSON object with a string "name": {body!r}; '
                f"full model output: {text!r}",
                llm_output=text,
            )
        arguments = payload.get("arguments", {})
        if not isinstance(arguments, dict):
            raise ToolCallParseError(
                f'"arguments" of the {TOOL_CALL_OPEN} block must be a JSON object: {body!r}; '
                f"full model output: {text!r}",
                llm_output=text,
            )
        calls.append({"name": payload["name"], "args": arguments, "id": new_tool_call_id()})
        position = end + len(TOOL_CALL_CLOSE)
    return "".join(outside).strip(), calls


def _turn_blocks(content: Any, where: str) -> list[dict]:
    """Normalise turn content to a list of blocks; text blocks become ``{"type": "text", "text": ...}``."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, (list, tuple)):
        raise InputError(
            f"{where}: content must be a string or a list of blocks, got {type(content).__name__}"
        )
    blocks: list[dict] = []
    for index, block in enumerate(content):
        if isinstance(block, str):
            blocks.append({"type": "text", "text": block})
        elif isinstance(block, dict) and block.get("type") == "text":
            text = block.get("text", "")
            if not isinstance(text, str):
                raise InputError(f"{where}, block {index}: text must be a string, got {type(text).__name__}")
            blocks.append({"type": "text", "text": text})
        elif isinstance(block, dict) and isinstance(block.get("type"), str):
            blocks.append(block)  # images and other media pass through untouched
        else:
            raise InputError(
                f"{where}, block {index}: a block must be a dict with a 'type', got {block!r:.120}"
            )
    return blocks


def _append_text(blocks: list[dict], text: str, separator: str) -> list[dict]:
    """Append ``text`` to the last text block (with ``separator`` when it is not empty) or add a block."""
    if blocks and blocks[-1].get("type") == "text":
        previous = blocks[-1]["text"]
        joined = f"{previous}{separator}{text}" if previous.strip() else text
        return [*blocks[:-1], {"type": "text", "text": joined}]
    return [*blocks, {"type": "text", "text": text}]


def _tool_response_text(blocks: list[dict]) -> str:
    return "".join(block["text"] for block in blocks if block.get("type") == "text")


def to_template_turns(turns: list[dict], schemas: list[dict] | None) -> list[dict]:
    """Rewrite turns so that any checkpoint's own chat template renders tools, calls and results.

    The output has only ``system``/``user``/``assistant`` roles and list-of-blocks content:
    ``schemas`` become :func:`tools_system_prompt` text appended to the system turn (created
    when missing); an assistant's ``tool_calls`` become :func:`format_tool_calls` text appended to
    its text; consecutive ``tool`` turns become one user turn holding their
    :func:`format_tool_response` blocks joined by a newline (images a tool returned follow it).
    The input is not modified.
    """
    out: list[dict] = []
    pending_responses: list[str] = []
    pending_media: list[dict] = []

    def flush_tool_turns() -> None:
        if pending_responses:
            text = "\n".join(format_tool_response(r) for r in pending_responses)
            out.append({"role": "user", "content": [{"type": "text", "text": text}, *pending_media]})
            pending_responses.clear()
            pending_media.clear()

    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise InputError(f"turn {index} must be a dict with 'role' and 'content', got {turn!r:.120}")
        role = turn.get("role")
        if role not in _ROLES:
            raise InputError(f"turn {index} has role {role!r}; use one of {', '.join(_ROLES)}")
        where = f"turn {index} ({role})"
        blocks = _turn_blocks(turn.get("content"), where)
        if role == "tool":
            pending_responses.append(_tool_response_text(blocks))
            pending_media.extend(block for block in blocks if block.get("type") != "text")
            continue
        flush_tool_turns()
        if role == "assistant" and turn.get("tool_calls"):
            try:
                calls_text = format_tool_calls(list(turn["tool_calls"]))
            except InputError as exc:
                raise InputError(f"{where}: {exc}") from None
            blocks = _append_text(blocks, calls_text, "\n")
        elif turn.get("tool_calls"):
            raise InputError(f"{where} has tool_calls; only assistant turns may carry tool calls")
        out.append({"role": role, "content": blocks})
    flush_tool_turns()

    if schemas:
        prompt = tools_system_prompt(list(schemas))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": _append_text(out[0]["content"], prompt, "\n\n")}
        else:
            out.insert(0, {"role": "system", "content": [{"type": "text", "text": prompt}]})
    return out


__all__ = [
    "TOOL_CHOICE_KEYWORDS",
    "ToolCallParseError",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "TOOL_RESPONSE_CLOSE",
    "TOOL_RESPONSE_OPEN",
    "format_tool_call",
    "format_tool_calls",
    "call_opener_positions",
    "first_call_position",
    "format_tool_response",
    "new_tool_call_id",
    "parse_tool_calls",
    "to_template_turns",
    "normalise_tool_choice",
    "tools_system_prompt",
]
