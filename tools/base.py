"""Conventions every llava-agent tool shares.

* ``response_format="content_and_artifact"``: the model reads a short text, the application gets
  an artifact dict (paths, scores, durations, seed...).
* A failure caused by the arguments or the environment (any :class:`LlavaAgentError`, or
  arguments outside the schema: a voice not in the enum, a size out of range) becomes a
  message worded for the model to recover from — "Error running caption_image with
  image='x.png': file 'x.png' does not exist; ... Please fix the arguments and try again." — and
  with ``handle_tool_error=False`` the tool raises it instead (the original error is its cause).
* Models come from the shared model manager, loaded on first call, never in ``__init__``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.tools import BaseTool, ToolException
from pydantic import ConfigDict, Field

from agent.errors import InputError, LlavaAgentError


class LlavaTool(BaseTool):
    """Base class of the built-in tools: error wording, config defaults, the model manager."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    response_format: str = "content_and_artifact"
    handle_tool_error: bool = True
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    manager: Any = Field(None, exclude=True, description="Model manager; None uses the process-wide one.")

    def _execute(self, **kwargs: Any) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def _run(self, *args: Any, run_manager: Any = None, **kwargs: Any) -> tuple[str, dict[str, Any]]:
        try:
            return self._execute(**kwargs)
        except LlavaAgentError as exc:
            raise ToolException(self.error_message(kwargs, exc)) from exc

    def error_message(self, arguments: dict[str, Any], error: Exception) -> str:
        """The text the model reads when a call fails."""
        shown = ", ".join(f"{key}={value!r}" for key, value in arguments.items() if value is not None)
        advice = (
            "Please fix the arguments and try again."
            if isinstance(error, InputError)
            else "Please try again later, use another tool, or tell the user what failed."
        )
        return f"Error running {self.name} with {shown}: {error}. {advice}"

    def validation_message(self, error: Any) -> str:
        """The text the model reads when a call's arguments do not fit the tool's schema."""
        shown, problems = [], []
        for item in error.errors():
            field = ".".join(str(part) for part in item.get("loc", ())) or "the arguments"
            kind, context = item.get("type", ""), item.get("ctx") or {}
            if kind == "missing":
                problems.append(f"{field} is missing")
                continue
            shown.append(f"{field}={item.get('input')!r}")
            if kind == "extra_forbidden":
                known = ", ".join(self.args_schema.model_fields) if isinstance(self.args_schema, type) else ""
                problems.append(f"{field} is not an argument of {self.name} (its arguments: {known})")
            elif kind == "literal_error":
                problems.append(f"{field} must be one of {context.get('expected')}")
            else:
                problems.append(f"{field}: {item.get('msg', 'not valid')}")
        head = f"Error running {self.name}" + (f" with {', '.join(shown)}" if shown else "")
        return f"{head}: {'; '.join(problems)}. Please fix the arguments and try again."

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        if self.handle_tool_error and not self.handle_validation_error:
            # arguments that break the schema reach the model as text too (or raise, with handle_tool_error=False)
            self.handle_validation_error = _ValidationMessage(self)

    def get_manager(self):
        from tools.model_manager import get_model_manager

        return self.manager or get_model_manager()

    def resolved_device(self) -> str:
        from tools.model_manager import resolve_device

        return resolve_device(self.device)


class _ValidationMessage:
    """``handle_validation_error`` of a tool: its :meth:`LlavaTool.validation_message` (with a short repr)."""

    def __init__(self, tool: LlavaTool) -> None:
        self.tool = tool

    def __call__(self, error: Any) -> str:
        return self.tool.validation_message(error)

    def __repr__(self) -> str:
        return f"<validation message of {self.tool.name}>"


def default_allowed_dirs() -> list[Path]:
    from agent.config import load_config

    return load_config().allowed_dirs


def default_artifacts_dir() -> Path:
    from agent.config import load_config

    return load_config().artifacts_dir
