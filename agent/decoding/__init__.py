"""The decoding engine: the tool-call protocol and the constraint that keeps every call valid.

No LangChain here: it works on plain schemas, strings and token ids.
"""

from __future__ import annotations

from agent.core.lazy import lazy_exports

_EXPORTS = {
    "ToolCallConstraint": "agent.decoding.constraint",
    "json_output_constraint": "agent.decoding.constraint",
    "format_tool_call": "agent.decoding.tool_protocol",
    "parse_tool_calls": "agent.decoding.tool_protocol",
    "normalise_tool_choice": "agent.decoding.tool_protocol",
    "to_template_turns": "agent.decoding.tool_protocol",
    "ToolCallParseError": "agent.decoding.tool_protocol",
    "json_schema_regex": "agent.decoding.schema_regex",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
