"""One typed configuration for the whole application.

Sources, later ones winning: built-in defaults, a TOML file, environment variables
(``LLAVA_AGENT_<SECTION>__<FIELD>``, e.g. ``LLAVA_AGENT_MODEL__QUANTIZATION=4bit``; top-level
fields drop the section: ``LLAVA_AGENT_DATA_DIR``), then explicit overrides passed in code.

Every value is validated on load; an error quotes the bad value, where it came from, and the
allowed values. The resolved configuration can be written next to any artifact that depends
on it (adapters, indexes) with :func:`save_config_snapshot`. The settings themselves (sections,
fields, defaults, checks) are :mod:`agent.core.config_schema`; their names are re-exported here.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from agent.core.chroma_auth import SECRET_FIELDS, redact_url
from agent.core.config_schema import (
    APP_NAME,
    CONFIG_ENV,
    ENV_PREFIX,
    ROUTING_MODES,
    AgentSection,
    AppConfig,
    Decoder,
    DType,
    HeadPrecision,
    KVCacheMode,
    MaxImagePixels,
    MaxImages,
    MaxNewTokens,
    MemorySection,
    ModelSection,
    NoRepeatNgramSize,
    PrefixCacheEntries,
    PrefixCacheMiB,
    PromptLookupMode,
    Quantization,
    RepetitionPenalty,
    RoutingMode,
    ServeSection,
    Temperature,
    TextEmbedderRuntime,
    ToolsSection,
    TopP,
    default_config_path,
    default_data_dir,
)
from agent.core.errors import ConfigError
from agent.core.files import atomic_write_text

__all__ = [
    "APP_NAME", "CONFIG_ENV", "ENV_PREFIX", "ROUTING_MODES", "AgentSection", "AppConfig", "ConfigError",
    "DType", "Decoder", "HeadPrecision", "KVCacheMode", "MaxImagePixels", "MaxImages", "MaxNewTokens",
    "MemorySection", "NoRepeatNgramSize", "RepetitionPenalty", "Temperature", "TopP", "ModelSection", "PrefixCacheEntries",
    "PrefixCacheMiB", "PromptLookupMode", "Quantization", "RoutingMode", "ServeSection", "TextEmbedderRuntime",
    "ToolsSection", "config_to_toml", "default_config_path", "default_data_dir", "env_overrides", "load_config",
    "save_config_snapshot",
]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _parse_env_value(raw: str) -> Any:
    """Environment values are TOML/JSON literals when they parse as such, else plain strings."""
    try:
        return json.loads(raw)
    except ValueError:
        pass
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _field_annotation(path: list[str]) -> Any:
    """The type annotation of the setting at ``path`` (``["model", "model"]``), or None when unknown."""
    model: Any = AppConfig
    annotation: Any = None
    for part in path:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        annotation = fields[part].annotation
        model = annotation
    return annotation


def _is_text_setting(annotation: Any) -> bool:
    import types
    import typing

    origin = typing.get_origin(annotation)
    options = typing.get_args(annotation) if origin in (typing.Union, types.UnionType) else (annotation,)
    return any(option in (str, SecretStr) for option in options) and not any(
        option in (int, float, bool, list, dict) or typing.get_origin(option) in (list, dict) for option in options
    )


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    sections = {name for name, field in AppConfig.model_fields.items() if isinstance(field.default_factory, type)}
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key == CONFIG_ENV:
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        if len(path) == 1 and path[0] not in AppConfig.model_fields:
            raise ConfigError(
                f"environment variable {key} names no setting; top-level settings are "
                f"{', '.join(sorted(AppConfig.model_fields))}, section settings use "
                f"{ENV_PREFIX}<SECTION>__<FIELD> with a section in {', '.join(sorted(sections))}"
            )
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        value = _parse_env_value(raw)
        if value is None:
            raise ConfigError(
                f"environment variable {key} = {raw!r}: null is not a value here (it would silently pick the "
                "default); unset the variable to use the default, or give a value"
            )
        if _is_text_setting(_field_annotation(path)) and not isinstance(value, str):
            value = raw  # a text setting keeps its text: a token of digits stays a string
        node[path[-1]] = value
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; create it or pass another --config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc}); check its permissions and encoding") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _redacted(value: Any, key: str = "") -> Any:
    """A value fit for an error message: secrets (tokens, passwords, URL passwords) masked."""

    if key in SECRET_FIELDS or isinstance(value, SecretStr):
        return "***"
    if isinstance(value, Mapping):
        return {k: _redacted(v, str(k)) for k, v in value.items()}
    if isinstance(value, str) and "@" in value and "://" in value:
        return redact_url(value)
    return value


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        value = _redacted(error.get("input"), str(error["loc"][-1]) if error["loc"] else "")
        message = error["msg"]
        if isinstance(value, Mapping):  # a whole section failed one of its checks: the message says which setting
            lines.append(f"{where}: {message.removeprefix('Value error, ')}")
            continue
        if error["type"] == "extra_forbidden":
            section = AppConfig
            for part in error["loc"][:-1]:
                annotation = section.model_fields[str(part)].annotation
                section = annotation if isinstance(annotation, type) else section
            message = f"unknown setting; known settings here are {', '.join(sorted(section.model_fields))}"
            lines.append(f"{where}: {message}")
            continue
        if error["type"] == "literal_error":
            message = f"not allowed; {message[0].lower()}{message[1:]}"
        lines.append(f"{where} = {value!r}: {message}")
    return f"invalid configuration ({source}):\n  " + "\n  ".join(lines)


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | AppConfig | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AppConfig:
    """Build the configuration from a TOML path, a dict, or the default file, plus the environment.

    With ``source=None`` the file named by ``LLAVA_AGENT_CONFIG`` is read, else the default
    config file if it exists, else the built-in defaults.
    """
    if isinstance(source, AppConfig):
        data: dict[str, Any] = source.model_dump(exclude_unset=True)
        origin = "AppConfig"
    elif isinstance(source, Mapping):
        data, origin = dict(source), "dict"
    else:
        environ_map = os.environ if environ is None else environ
        path: Path | None
        if source is not None:
            path = Path(source).expanduser()
        elif environ_map.get(CONFIG_ENV):
            path = Path(environ_map[CONFIG_ENV]).expanduser()
        else:
            path = default_config_path()
            path = path if path.exists() else None
        data = _read_toml(path) if path is not None else {}
        origin = str(path) if path is not None else "defaults"
    merged = _deep_merge(data, env_overrides(environ))
    if overrides:
        merged = _deep_merge(merged, overrides)
    try:
        return AppConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, origin + " + environment")) from None


def config_to_toml(config: AppConfig) -> str:
    """Render a configuration as TOML (only the value types the config uses)."""

    def literal(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        if isinstance(value, Path):
            return json.dumps(str(value))
        if isinstance(value, str):
            return json.dumps(value)
        if isinstance(value, list):
            return "[" + ", ".join(literal(v) for v in value) + "]"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {literal(v)}" for k, v in value.items()) + "}"
        raise TypeError(f"cannot write {value!r} as TOML")


    data = config.model_dump()
    lines = [f"{k} = {literal(v)}" for k, v in data.items() if not isinstance(v, dict) and v is not None]
    for section, values in data.items():
        if not isinstance(values, dict):
            continue
        lines.append(f"\n[{section}]")
        for key, value in values.items():
            if isinstance(value, SecretStr):  # secrets are never written out: not shown, not in snapshots
                lines.append(f"# {key} is set (hidden)")
            elif value is not None:
                lines.append(f"{key} = {literal(redact_url(value) if key == 'chroma_url' else value)}")
    return "\n".join(lines) + "\n"


def save_config_snapshot(config: AppConfig, folder: Path, name: str = "llava_agent_config.toml") -> Path:
    """Save the resolved configuration next to an artifact that depends on it."""
    target = Path(folder) / name
    atomic_write_text(target, config_to_toml(config))
    return target
