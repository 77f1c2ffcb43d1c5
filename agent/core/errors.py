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
    """A prompt does not fit in the model's context window."""


class ToolError(LlavaAgentError, RuntimeError):
    """A tool failed while running; the message is written for the model to read."""


class StoreError(LlavaAgentError, RuntimeError):
    """A vector store or conversation store cannot be opened or written."""


class DatasetError(InputError):
    """A fine-tuning dataset is malformed; the message lists the bad rows."""
