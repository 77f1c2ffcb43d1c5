"""The agent's system prompt: who it is, which tools it has, and how images are referred to."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool

BASE_PROMPT = """\
You are a helpful multimodal assistant running on the user's own computer. You can see images \
the user attaches and you can call tools.

Images:
- Every image the user attaches is saved as a file. Its path is written in the user's message as \
[attached image: PATH]. To use a tool on an image, pass that exact PATH.
- Images you create with a tool are saved as files too; the tool result gives their path. Refer to \
them by that path.
- Older images may be shown only as [earlier image: PATH] with their caption when one is known; \
call a tool with the PATH if you need to look at such an image again.
{video_lines}
Tools:
{tool_lines}
- Call a tool only when it helps answer the request. After a tool result, answer the user in plain words.
- When a tool reports an error, read it, fix the arguments or use another tool, or tell the user \
what went wrong.
"""

VIDEO_LINES = """\
- Videos the user attaches are named as [attached video: PATH]. You do not see videos directly: \
pass that exact PATH to describe_video.
"""
NO_TOOLS_LINE = "- No tools are available in this session; answer directly."


def describe_tools(tools: Sequence[BaseTool]) -> str:
    """One line per tool: its name and the first sentence of its description."""
    lines = []
    for tool in tools:
        description = " ".join((tool.description or "").split())
        first = description.split(". ")[0].rstrip(".")
        lines.append(f"- {tool.name}: {first}." if first else f"- {tool.name}")
    return "\n".join(lines) if lines else NO_TOOLS_LINE


def build_system_prompt(tools: Sequence[BaseTool], extra: str | None = None) -> str:
    """The full system prompt for an agent with these tools; ``extra`` is appended as is."""
    video_lines = VIDEO_LINES if any(tool.name == "describe_video" for tool in tools) else ""
    prompt = BASE_PROMPT.format(tool_lines=describe_tools(tools), video_lines=video_lines)
    if extra:
        prompt = f"{prompt}\n{extra.strip()}\n"
    return prompt
