"""Conventions every llava-agent tool shares.

* ``response_format="content_and_artifact"``: the model reads a short text, the application gets
  an artifact dict (paths, scores, durations, seed...).
* A failure caused by the arguments or the environment (any :class:`LlavaAgentError`) becomes a
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

    def get_manager(self):
        from tools.model_manager import get_model_manager

        return self.manager or get_model_manager()

    def resolved_device(self) -> str:
        from tools.model_manager import resolve_device

        return resolve_device(self.device)


def default_allowed_dirs() -> list[Path]:
    from agent.config import load_config

    return load_config().allowed_dirs


def default_artifacts_dir() -> Path:
    from agent.config import load_config

    return load_config().artifacts_dir


def ranged(kind: type, minimum: float, maximum: float, *, optional: bool = False) -> Any:
    """A numeric argument type whose JSON schema shows its allowed range: ``Side = ranged(int, 64, 2048)``.

    Constrained decoding enforces what the schema says, so a model can never write, say, a
    200-digit seed (which no tool can use and no conversation store can save). Only the schema
    changes: the tool still checks the range itself at run time, with its own message, for
    callers that do not constrain decoding. ``optional`` allows ``None`` too.
    """
    from typing import Annotated

    from pydantic import WithJsonSchema

    branch = {"type": "integer" if kind is int else "number", "minimum": minimum, "maximum": maximum}
    schema = {"anyOf": [branch, {"type": "null"}]} if optional else branch
    return Annotated[kind | None if optional else kind, WithJsonSchema(schema)]  # type: ignore[operator]
