"""The settings themselves: every section, field, type, default and check of the configuration.

:class:`AppConfig` and its sections are pydantic models; a value out of range, of the wrong type or
unknown is refused when the configuration is built. Where the values come from (a TOML file, the
environment, code) and how errors are worded is :mod:`agent.core.config`, which also re-exports
these names: import them from there.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from agent.core import defaults
from agent.core.chroma_auth import check_auth_settings
from agent.core.runtime import DTYPES, QUANTIZATIONS

APP_NAME = "llava-agent"
ENV_PREFIX = "LLAVA_AGENT_"
CONFIG_ENV = "LLAVA_AGENT_CONFIG"

ROUTING_MODES = defaults.ROUTING_MODES
RoutingMode = Literal[ROUTING_MODES]
Quantization = Literal[QUANTIZATIONS]  # the choices themselves live in agent.core.runtime
DType = Literal[DTYPES]
TextEmbedderRuntime = Literal[defaults.TEXT_EMBEDDER_RUNTIMES]

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
RepetitionPenalty = Annotated[
    float,
    Field(
        gt=0.0,
        le=defaults.MAX_REPETITION_PENALTY,
        description="Penalty on tokens the reply already used (1.0: none); the prompt and tool calls are exempt.",
    ),
]
NoRepeatNgramSize = Annotated[
    int, Field(ge=0, description="Forbid repeating any n-gram of this size within a reply (0: off); tool calls exempt.")
]
Decoder = Literal["auto", "transformers"]
KVCacheMode = Literal["auto", "static", "dynamic"]
HeadPrecision = Literal["auto", "model", "int8", "int4"]
PromptLookupMode = Literal["off", "calls", "always"]
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
    # NaN and infinities are never a setting (a budget of inf GB, a temperature of nan)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSection(_Section):
    """The chat model (``ChatLlava``)."""

    model: str | None = Field(
        None, description="Hub id or local folder of a LLaVA-family checkpoint; None picks a default for the device."
    )
    quantization: Quantization = Field("auto", description="auto: 4-bit NF4 on CUDA; on CPU the fastest of NF4, int8-weights and none measured on this CPU (none on MPS).")
    dtype: DType = Field("auto", description="Weights/compute dtype; auto: bf16 where native, else fp16 (GPU) or fp32.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N, mps.")
    adapter: str | None = Field(None, description="Folder of a LoRA adapter applied at load.")
    max_new_tokens: MaxNewTokens = defaults.MAX_NEW_TOKENS
    temperature: Temperature = defaults.TEMPERATURE
    top_p: TopP = defaults.TOP_P
    seed: int | None = None
    repetition_penalty: RepetitionPenalty = defaults.REPETITION_PENALTY
    no_repeat_ngram_size: NoRepeatNgramSize = defaults.NO_REPEAT_NGRAM_SIZE
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
    lm_head: HeadPrecision = Field("auto", description="auto: on CPU whichever of an int4 copy, an int8 copy and the model's own head measured fastest here; the model's own elsewhere.")
    fast_attention: bool = Field(True, description="On CPU, decode attention as grouped float32 matmuls, not bf16 SDPA.")
    cuda_graphs: bool = Field(True, description="Replay single-token decode steps as CUDA graphs on CUDA.")
    prompt_lookup: PromptLookupMode = Field(
        defaults.PROMPT_LOOKUP,
        description="Draft what a reply copies from the prompt and check it in one pass: in tool calls, always, off.",
    )
    allow_pickle_weights: bool = Field(
        False, description="Load a LoRA adapter stored as .bin (a pickle file can run code); safetensors only when off."
    )


class ToolsSection(_Section):
    """The tools and the model manager they share."""

    enabled: list[str] = Field(
        default_factory=lambda: ["caption_image", "generate_image", "search_images", "speak", "describe_video"]
    )
    device: str = "auto"
    caption_model: str = defaults.CAPTION_MODEL
    caption_adapter: str | None = Field(
        None, description="Folder of a LoRA adapter for the captioning model (`llava-agent finetune caption`)."
    )
    image_model: str = defaults.IMAGE_MODEL
    image_steps: int = Field(defaults.IMAGE_STEPS, ge=1, le=100, description="Denoising steps when a call gives none (1-4 for sd-turbo).")
    image_max_steps: int = Field(100, ge=1, le=100, description="The most denoising steps a call may ask for.")
    image_max_side: int = Field(2048, ge=64, le=2048, description="The widest and tallest picture a call may ask for, in pixels.")
    safety_checker: bool = Field(
        True, description="Keep a checkpoint's safety checker when it ships one (sd-turbo ships none)."
    )
    clip_model: str = defaults.CLIP_MODEL
    tts_engine: Literal["espeak-ng", "vits", "bark"] = "espeak-ng"
    vits_model: str = defaults.VITS_MODEL
    espeak_voice: str = defaults.ESPEAK_VOICE
    speak_voices: list[str] | Literal["all"] | None = Field(
        None,
        description="Voices the model may pick for speak (espeak-ng names, e.g. [\"en\", \"fr\"]), or \"all\"; "
        "default: 20 widely used languages. Only voices the installed espeak-ng has are offered.",
    )
    bark_model: str = defaults.BARK_MODEL
    bark_voice: str | None = Field(
        defaults.BARK_VOICE, description="Bark voice preset used when a call names none; None lets Bark pick a voice."
    )
    describe_video_max_frames: int = Field(
        defaults.DESCRIBE_VIDEO_MAX_FRAMES, ge=1, le=64, description="Keyframes describe_video looks at."
    )
    video_sampling: Literal["uniform", "scenes", "both"] = Field(
        "both", description="Keyframes at even intervals, at scene changes, or both."
    )
    video_description: Literal["auto", "chat_model", "captions"] = Field(
        "auto", description="auto: frames go to the chat model when it takes several images, else per-frame captions."
    )
    video_max_seconds: float = Field(defaults.MAX_VIDEO_SECONDS, gt=0, description="Longest stretch of video decoded per call.")
    video_max_pixels: int = Field(defaults.MAX_VIDEO_PIXELS, gt=0, description="Larger video frames are refused.")
    max_speech_chars: int = Field(defaults.MAX_SPEECH_CHARS, gt=0)
    video_model: str = Field(defaults.VIDEO_MODEL, description="Text-to-video checkpoint (CogVideoX or one with its interface).")
    video_allow_cpu: bool = Field(
        False, description="Let generate_video run on a CPU, where a default clip takes many hours; off: it refuses with an estimate."
    )
    video_max_frames: int = Field(defaults.VIDEO_MAX_FRAMES, ge=1, le=1000, description="Longest clip, in frames.")
    video_steps: int = Field(defaults.VIDEO_STEPS, ge=1, le=500, description="Denoising steps when a call gives none.")
    video_offload: Literal["auto", "none", "model", "sequential"] = Field(
        "auto", description="CUDA memory saver: auto picks by the GPU's free memory; model/sequential offload to CPU."
    )
    shape_model: str = Field(defaults.SHAPE_MODEL, description="Text-to-3D checkpoint (Shap-E).")
    shape_image_model: str = Field(defaults.SHAPE_IMAGE_MODEL, description="Image-to-3D checkpoint (Shap-E img2img).")
    shape_steps: int = Field(defaults.SHAPE_STEPS, ge=1, le=500, description="Denoising steps when a call gives none.")
    mesh_grid_size: int = Field(
        defaults.MESH_GRID_SIZE, ge=16, le=512, description="Samples per side of the grid a 3-D shape is meshed on."
    )
    memory_budget_gb: dict[str, float] = Field(
        default_factory=dict, description="Per-device budget for tool models, e.g. {cuda = 12, cpu = 8}."
    )
    artifacts_dir: Path | None = Field(None, description="Where generated files go; default <data_dir>/artifacts.")
    allowed_dirs: list[Path] | None = Field(
        None, description="Folders tools may read; default the working directory and the data folder."
    )
    max_image_pixels: MaxImagePixels = defaults.MAX_IMAGE_PIXELS
    allow_pickle_weights: bool = Field(
        False, description="Load tool checkpoints stored as .bin/.pt (pickle files can run code); safetensors only when off."
    )
    max_calls_per_reply: int = Field(
        8, ge=1, description="Tool calls run from one model reply; more are answered 'not run' so the model asks again."
    )
    timeout_s: float = Field(300.0, gt=0, description="Seconds a tool call may run (model loading included).")
    timeouts: dict[str, float] = Field(
        default_factory=dict, description="Per-tool time limits in seconds, e.g. {generate_image = 600}."
    )

    @field_validator("timeouts")
    @classmethod
    def _check_timeouts(cls, value: dict[str, float]) -> dict[str, float]:
        for tool, seconds in value.items():
            if not math.isfinite(seconds) or seconds <= 0:
                raise ValueError(f"the time limit of {tool!r} must be a positive number of seconds, got {seconds!r}")
        return value

    @field_validator("memory_budget_gb")
    @classmethod
    def _check_budgets(cls, value: dict[str, float]) -> dict[str, float]:
        for device, budget in value.items():
            if not math.isfinite(budget) or budget <= 0:
                raise ValueError(f"the budget of {device!r} must be a positive number of GB, got {budget!r}")
        return value


class MemorySection(_Section):
    """Conversations, long-term memory and the vector store."""

    chroma_url: str | None = Field(
        None, description="http(s)://host:port of a Chroma server; None = embedded. user:password@ in it is basic auth."
    )
    chroma_token: SecretStr | None = Field(
        None, description="Token for a Chroma server that requires one (LLAVA_AGENT_MEMORY__CHROMA_TOKEN); never printed."
    )
    chroma_token_header: Literal["Authorization", "X-Chroma-Token"] = Field(
        "Authorization", description="How the token is sent: 'Authorization' (Bearer) or 'X-Chroma-Token'."
    )
    chroma_username: str | None = Field(None, description="User name for a Chroma server with basic auth.")
    chroma_password: SecretStr | None = Field(
        None, description="Password for basic auth (LLAVA_AGENT_MEMORY__CHROMA_PASSWORD); never printed."
    )
    chroma_tenant: str = Field("default_tenant", min_length=1, description="Chroma tenant (server mode).")
    chroma_database: str = Field("default_database", min_length=1, description="Chroma database (server mode).")
    image_collection: str = "images"
    memory_collection: str = "memories"
    text_embedder: str = defaults.TEXT_EMBEDDER
    text_embedder_runtime: TextEmbedderRuntime = Field(
        "auto", description="What runs the text embedder: 'auto' (ONNX Runtime on a CPU where it can), 'onnx', 'torch'."
    )
    recall_k: int = Field(3, ge=0)
    recall_min_score: float = Field(
        0.3, ge=-1.0, le=1.0, description="Cosine similarity a memory needs to be added to the prompt automatically."
    )
    max_context_tokens: int | None = Field(None, gt=0, description="None reads the model's context length.")

    @model_validator(mode="after")
    def _check_chroma_auth(self) -> MemorySection:
        check_auth_settings(self)
        return self


class AgentSection(_Section):
    """The agent loop."""

    recursion_limit: int = Field(12, ge=2, description="Graph steps per turn before the agent stops with a message.")
    system_prompt: str | None = Field(None, description="Text appended to the built-in system prompt.")
    tool_choice: str | None = Field(
        None, description="Force the first model call of each turn: 'any' or a tool name; None lets the model choose."
    )
    long_term_memory: bool = Field(True, description="Add remember/recall tools and recalled facts to the prompt.")
    routing: RoutingMode = Field(
        defaults.ROUTING,
        description="Who picks the tool on a turn's first model call: 'model' (the model alone), 'semantic' (the "
        "request's meaning against each tool's example requests; no route means a plain answer) or 'hybrid' "
        "(semantic when it is sure, else the model). See agent.app.routing.",
    )
    routing_threshold: float = Field(
        defaults.ROUTING_THRESHOLD, ge=0.0, le=1.0, description="Least probability of the best tool for a semantic route (calibrated)."
    )
    routing_margin: float = Field(
        defaults.ROUTING_MARGIN, ge=0.0, le=1.0, description="Least lead of the routed tool over the other tools and over no tool (calibrated)."
    )
    routing_no_tool_threshold: float = Field(
        defaults.ROUTING_NO_TOOL_THRESHOLD, ge=0.0, le=1.0,
        description="Least probability of 'no tool' for a plain answer without the model deciding (calibrated; 1.0: never).",
    )
    routing_prior: float = Field(
        defaults.ROUTING_PRIOR_WEIGHT, ge=0.0, le=4.0,
        description="In hybrid mode, on a turn the router leaves to the model: the weight of the router's probabilities "
        "beside the model's own when it decides between words and each tool (a product of experts; 0: the model alone). "
        "Used with ChatLlava. See agent.decoding.decision_prior.",
    )
    ground_arguments: bool = Field(
        True,
        description="Snap arguments a tool's examples copy from the request (a path, the words to speak) to the "
        "user's words when the model copied them nearly right. See agent.app.grounding.",
    )


def _comma_list(value: Any) -> Any:
    """``"a, b"`` (an environment variable) -> ``["a", "b"]``; lists pass unchanged."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ServeSection(_Section):
    """The OpenAI-compatible server (``llava-agent serve``)."""

    host: str = Field(defaults.SERVE_HOST, description="Interface to listen on; any but loopback requires API keys.")
    port: int = Field(defaults.SERVE_PORT, ge=0, le=65535, description="0 picks a free port.")
    api_keys: list[str] = Field(
        default_factory=list,
        description="Bearer keys accepted (several allowed); an environment variable may list them comma-separated.",
    )
    api_keys_file: Path | None = Field(None, description="A file of API keys, one per line ('#' starts a comment).")
    cors_origins: list[str] = Field(
        default_factory=list, description="Browser origins allowed to call the server (CORS); none by default."
    )
    max_request_bytes: int = Field(defaults.SERVE_MAX_REQUEST_BYTES, gt=0)
    max_image_pixels: MaxImagePixels = defaults.SERVE_MAX_IMAGE_PIXELS
    max_images: int = Field(defaults.SERVE_MAX_IMAGES, ge=0, description="Images per request.")
    max_video_bytes: int = Field(
        defaults.SERVE_MAX_VIDEO_BYTES, gt=0, description="Largest video upload (POST /v1/uploads); larger get 413."
    )
    max_queue: int = Field(defaults.SERVE_MAX_QUEUE, ge=0, description="Requests waiting for the model; more get 429.")
    max_batch: int = Field(
        defaults.SERVE_MAX_BATCH, ge=1, le=64, description="Plain requests generated together when several wait; 1: never."
    )
    request_timeout_s: float = Field(defaults.SERVE_REQUEST_TIMEOUT_S, gt=0, description="Queue wait plus generation.")
    allow_remote_images: bool = Field(False, description="Let requests name http(s) image URLs the server fetches.")
    model_name: str | None = Field(
        None, description="Name clients use for the chat model; default the hub id or the local folder's name."
    )
    agent_model: str | None = Field(
        defaults.AGENT_MODEL_NAME, description="Name of the agent-as-a-model (tools run on the server); None: off."
    )
    public_url: str | None = Field(
        None, description="Base URL clients reach the server at (behind a proxy), for links to generated files."
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1", description="Proxies whose X-Forwarded-* headers are trusted (comma-separated, or '*')."
    )
    ui: bool = Field(True, description="Serve the chat page at / (false: the API only).")

    _split_keys = field_validator("api_keys", "cors_origins", mode="before")(_comma_list)


class AppConfig(_Section):
    """The resolved application configuration."""

    data_dir: Path = Field(default_factory=default_data_dir)
    model: ModelSection = Field(default_factory=ModelSection)
    tools: ToolsSection = Field(default_factory=ToolsSection)
    memory: MemorySection = Field(default_factory=MemorySection)
    agent: AgentSection = Field(default_factory=AgentSection)
    serve: ServeSection = Field(default_factory=ServeSection)

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
