"""One typed configuration for the whole application.

Sources, later ones winning: built-in defaults, a TOML file, environment variables
(``LLAVA_AGENT_<SECTION>__<FIELD>``, e.g. ``LLAVA_AGENT_MODEL__QUANTIZATION=4bit``; top-level
fields drop the section: ``LLAVA_AGENT_DATA_DIR``), then explicit overrides passed in code.

Every value is validated on load; an error quotes the bad value, where it came from, and the
allowed values. The resolved configuration can be written next to any artifact that depends
on it (adapters, indexes) with :func:`save_config_snapshot`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.core import defaults
from agent.core.errors import ConfigError
from agent.core.files import atomic_write_text
from agent.core.runtime import DTYPES, QUANTIZATIONS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

APP_NAME = "llava-agent"
ENV_PREFIX = "LLAVA_AGENT_"
CONFIG_ENV = "LLAVA_AGENT_CONFIG"

Quantization = Literal[QUANTIZATIONS]  # the choices themselves live in agent.core.runtime
DType = Literal[DTYPES]

# The chat model's settings, shared by ``[model]`` here and by ``ChatLlava``'s fields, so both
# accept exactly the same values.
MaxNewTokens = Annotated[int, Field(gt=0, description="Most tokens generated per reply.")]
Temperature = Annotated[float, Field(ge=0.0, le=defaults.MAX_TEMPERATURE, description="0 decodes greedily.")]
TopP = Annotated[float, Field(gt=0.0, le=1.0, description="Nucleus sampling mass.")]
MaxImages = Annotated[
    int | None,
    Field(ge=0, description="Images kept as pixels per prompt (0: none); None follows the model's capability."),
]
MaxImagePixels = Annotated[int, Field(gt=0, description="Larger images are refused before decoding.")]
Decoder = Literal["auto", "transformers"]
KVCacheMode = Literal["auto", "static", "dynamic"]
HeadPrecision = Literal["auto", "model", "int8"]
PrefixCacheEntries = Annotated[
    int, Field(ge=0, description="Prompt prefixes kept for reuse per model (least recently used dropped; 0: none).")
]
PrefixCacheMiB = Annotated[
    int, Field(ge=0, description="Most MiB of keys/values the prompt cache keeps per model (within the device's budget).")
]


def default_data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP_NAME, appauthor=False))


def default_config_path() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir(APP_NAME, appauthor=False)) / "config.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    """The chat model (``ChatLlava``)."""

    model: str | None = Field(
        None, description="Hub id or local folder of a LLaVA-family checkpoint; None picks a default for the device."
    )
    quantization: Quantization = Field("auto", description="auto: 4-bit NF4 on CUDA and on CPU (none without bitsandbytes or on MPS).")
    dtype: DType = Field("auto", description="Weights/compute dtype; auto: bf16 where native, else fp16 (GPU) or fp32.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N, mps.")
    adapter: str | None = Field(None, description="Folder of a LoRA adapter applied at load.")
    max_new_tokens: MaxNewTokens = defaults.MAX_NEW_TOKENS
    temperature: Temperature = defaults.TEMPERATURE
    top_p: TopP = defaults.TOP_P
    seed: int | None = None
    max_images: MaxImages = None
    allow_remote_images: bool = Field(False, description="Fetch http(s) image URLs found in messages.")
    trust_remote_code: bool = False
    decoder: Decoder = Field("auto", description="auto: the decode loop (prefix reuse, jump-forward); transformers: model.generate.")
    prefix_cache: bool = Field(True, description="Reuse the keys/values of the prompt prefix shared with earlier calls.")
    prefix_cache_entries: PrefixCacheEntries = defaults.PREFIX_CACHE_ENTRIES
    prefix_cache_mib: PrefixCacheMiB = defaults.PREFIX_CACHE_MIB
    jump_forward: bool = Field(True, description="Append the stretches of a tool call the grammar forces in one pass.")
    few_row_logits: bool = Field(True, description="When the constraint allows few tokens, compute only their logits.")
    kv_cache: KVCacheMode = Field("auto", description="static: preallocated, written in place; dynamic: grown by concatenation.")
    lm_head: HeadPrecision = Field("auto", description="auto: an int8 copy of the head on CPU, the model's own elsewhere.")
    fast_attention: bool = Field(True, description="On CPU, decode attention as grouped float32 matmuls, not bf16 SDPA.")
    cuda_graphs: bool = Field(True, description="Replay single-token decode steps as CUDA graphs on CUDA.")


class ToolsSection(_Section):
    """The tools and the model manager they share."""

    enabled: list[str] = Field(
        default_factory=lambda: ["caption_image", "generate_image", "search_images", "speak"]
    )
    device: str = "auto"
    caption_model: str = defaults.CAPTION_MODEL
    image_model: str = defaults.IMAGE_MODEL
    image_steps: int = Field(defaults.IMAGE_STEPS, ge=1, le=100, description="Denoising steps when a call gives none (1-4 for sd-turbo).")
    safety_checker: bool = Field(
        True, description="Keep a checkpoint's safety checker when it ships one (sd-turbo ships none)."
    )
    clip_model: str = defaults.CLIP_MODEL
    tts_engine: Literal["espeak-ng", "vits"] = "espeak-ng"
    vits_model: str = defaults.VITS_MODEL
    espeak_voice: str = defaults.ESPEAK_VOICE
    max_speech_chars: int = Field(defaults.MAX_SPEECH_CHARS, gt=0)
    memory_budget_gb: dict[str, float] = Field(
        default_factory=dict, description="Per-device budget for tool models, e.g. {cuda = 12, cpu = 8}."
    )
    artifacts_dir: Path | None = Field(None, description="Where generated files go; default <data_dir>/artifacts.")
    allowed_dirs: list[Path] | None = Field(
        None, description="Folders tools may read; default the working directory and the data folder."
    )
    max_image_pixels: MaxImagePixels = defaults.MAX_IMAGE_PIXELS


class MemorySection(_Section):
    """Conversations, long-term memory and the vector store."""

    chroma_url: str | None = Field(None, description="http(s)://host:port of a Chroma server; None = embedded.")
    image_collection: str = "images"
    memory_collection: str = "memories"
    text_embedder: str = defaults.TEXT_EMBEDDER
    recall_k: int = Field(3, ge=0)
    recall_min_score: float = Field(
        0.3, ge=-1.0, le=1.0, description="Cosine similarity a memory needs to be added to the prompt automatically."
    )
    max_context_tokens: int | None = Field(None, gt=0, description="None reads the model's context length.")


class AgentSection(_Section):
    """The agent loop."""

    recursion_limit: int = Field(12, ge=2, description="Graph steps per turn before the agent stops with a message.")
    system_prompt: str | None = Field(None, description="Text appended to the built-in system prompt.")
    tool_choice: str | None = Field(
        None, description="Force the first model call of each turn: 'any' or a tool name; None lets the model choose."
    )
    long_term_memory: bool = Field(True, description="Add remember/recall tools and recalled facts to the prompt.")


class AppConfig(_Section):
    """The resolved application configuration."""

    data_dir: Path = Field(default_factory=default_data_dir)
    model: ModelSection = Field(default_factory=ModelSection)
    tools: ToolsSection = Field(default_factory=ToolsSection)
    memory: MemorySection = Field(default_factory=MemorySection)
    agent: AgentSection = Field(default_factory=AgentSection)

    @property
    def artifacts_dir(self) -> Path:
        return Path(self.tools.artifacts_dir or self.data_dir / "artifacts").expanduser()

    @property
    def allowed_dirs(self) -> list[Path]:
        if self.tools.allowed_dirs is not None:
            return [Path(p).expanduser() for p in self.tools.allowed_dirs]
        return [Path.cwd(), self.data_dir.expanduser()]

    @property
    def chroma_dir(self) -> Path:
        return self.data_dir.expanduser() / "chroma"

    @property
    def conversations_db(self) -> Path:
        return self.data_dir.expanduser() / "conversations.sqlite"


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
        node[path[-1]] = _parse_env_value(raw)
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


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        value = error.get("input")
        message = error["msg"]
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
        lines.extend(f"{k} = {literal(v)}" for k, v in values.items() if v is not None)
    return "\n".join(lines) + "\n"


def save_config_snapshot(config: AppConfig, folder: Path, name: str = "llava_agent_config.toml") -> Path:
    """Save the resolved configuration next to an artifact that depends on it."""
    target = Path(folder) / name
    atomic_write_text(target, config_to_toml(config))
    return target
