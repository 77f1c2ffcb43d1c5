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

import importlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.tools import BaseTool, ToolException
from pydantic import ConfigDict, Field

from agent.core.config import AppConfig
from agent.core.errors import InputError, LlavaAgentError, ToolError
from agent.core.model_manager import get_model_manager
from agent.core.runtime import resolve_device
from agent.core.untrusted import shortened

PIPELINE_LOAD_LOCK = threading.RLock()
"""Held while a tool imports and builds a diffusers pipeline. diffusers' and transformers' lazy
modules can fail ("cannot import name 'DiffusionPipeline' from 'diffusers'") when two threads
import from them for the first time at once, which the agent's parallel tool calls do."""


@dataclass
class SharedPipeline:
    """A diffusers pipeline as the model manager shares it, with what its loader worked out.

    Hold ``lock`` for each call: a pipeline keeps per-call state (its scheduler's timesteps and
    step index), so two calls at once on one pipeline, as the agent's parallel tool calls would
    make, must take turns.
    """

    pipeline: Any
    details: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class LlavaTool(BaseTool):
    """Base class of the built-in tools: error wording, config defaults, the model manager."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    response_format: str = "content_and_artifact"
    handle_tool_error: bool = True
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    manager: Any = Field(None, exclude=True, description="Model manager; None uses the process-wide one.")
    allow_pickle_weights: bool = Field(False, description="Load .bin/.pt checkpoints (pickle files can run code).")

    def _execute(self, **kwargs: Any) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def _run(self, *args: Any, run_manager: Any = None, **kwargs: Any) -> tuple[str, dict[str, Any]]:
        try:
            return self._execute(**kwargs)
        except LlavaAgentError as exc:
            raise ToolException(self.error_message(kwargs, exc)) from exc

    def error_message(self, arguments: dict[str, Any], error: Exception) -> str:
        """The text the model reads when a call fails (long argument values shortened: the model wrote them)."""
        shown = ", ".join(f"{key}={shortened(repr(value))}" for key, value in arguments.items() if value is not None)
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
            shown.append(f"{field}={shortened(repr(item.get('input')))}")
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
        return self.manager or get_model_manager()

    def resolved_device(self) -> str:
        return resolve_device(self.device)


class _ValidationMessage:
    """``handle_validation_error`` of a tool: its :meth:`LlavaTool.validation_message` (with a short repr)."""

    def __init__(self, tool: LlavaTool) -> None:
        self.tool = tool

    def __call__(self, error: Any) -> str:
        return self.tool.validation_message(error)

    def __repr__(self) -> str:
        return f"<validation message of {self.tool.name}>"


def built_in_defaults() -> AppConfig:
    """The built-in configuration (no file, no environment): what a tool built without a config uses.

    Tools built from a configuration (``build_tools(config)``, ``Tool.from_config(config)``) get
    every folder from it; one constructed directly falls back to these documented defaults, never
    to whatever config file happens to be on the machine.
    """
    return AppConfig()


def default_allowed_dirs() -> list[Path]:
    """Folders a tool built without ``allowed_dirs`` may read: the working directory and the default data folder."""
    return built_in_defaults().allowed_dirs


def default_artifacts_dir() -> Path:
    """Where a tool built without ``artifacts_dir`` writes: ``<default data folder>/artifacts``."""
    return built_in_defaults().artifacts_dir


def require_package(module: str, extra: str, purpose: str) -> Any:
    """Import an optional package, or raise a :class:`ToolError` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ToolError(
            f"{purpose} needs the Python package {module!r}, which cannot be imported here ({exc}); install it "
            f"with `pip install 'llava-agent[{extra}]'`"
        ) from None
