"""The error hierarchy shared by every part of llava-agent.

Every error says what was wrong (quoting the offending value) and what to do about it.
Library code raises these; the agent turns them into tool messages the model can recover
from, and the CLI prints them as one line.
"""

from __future__ import annotations


class LlavaAgentError(Exception):
    """Base class of every error raised by llava-agent."""


class ConfigError(LlavaAgentError, ValueError):
    """A configuration value is missing, malformed or out of range."""


class ModelNotFoundError(LlavaAgentError, FileNotFoundError):
    """A model is neither in the local cache nor reachable (offline, wrong id or path)."""


class ModelLoadError(LlavaAgentError, RuntimeError):
    """A model was found but could not be loaded (missing backend, bad files, out of memory)."""


class QuantizationError(ModelLoadError):
    """The requested quantization cannot run here (bitsandbytes missing or unusable)."""


class InputError(LlavaAgentError, ValueError):
    """An input given by the caller is invalid (message, tool argument, dataset row...)."""


class ImageError(InputError):
    """An image is missing, empty, corrupt, unsupported or too large."""


class VideoError(InputError):
    """A video is missing, empty, truncated, not a video, too large or too long."""


class PathNotAllowedError(InputError, PermissionError):
    """A path resolves outside the folders the application may read or write."""


class ContextLengthError(InputError):
    """A prompt does not fit in the model's context window.

    ``over_by`` is how many tokens too many the prompt and the reply budget are together, when
    the model counted them (a caller can then leave out that much and try again).
    """

    def __init__(self, message: str, *, over_by: int | None = None) -> None:
        super().__init__(message)
        self.over_by = over_by

    @classmethod
    def counted(cls, prompt_tokens: int, max_new_tokens: int, limit: int) -> ContextLengthError:
        """The error for a prompt of ``prompt_tokens`` that, with ``max_new_tokens``, is over ``limit``."""
        return cls(
            f"the prompt is {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}, together over the "
            f"model's context of {limit} tokens; shorten the messages (or send fewer images) or lower max_new_tokens",
            over_by=prompt_tokens + max_new_tokens - limit,
        )


class ToolError(LlavaAgentError, RuntimeError):
    """A tool failed while running; the message is written for the model to read."""


class StoreError(LlavaAgentError, RuntimeError):
    """A vector store or conversation store cannot be opened or written."""


class DatasetError(InputError):
    """A fine-tuning dataset is malformed; the message lists the bad rows."""
