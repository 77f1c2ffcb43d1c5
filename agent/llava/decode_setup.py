"""What the decode loop is told and what it drives: its settings, its report, the model's parts.

:class:`DecodeSettings` holds the switches of :func:`agent.llava.decode_loop.decode` (the
``ChatLlava`` fields of the same names) and :class:`DecodeStats` what one reply cost.
:func:`model_parts` finds the pieces the loop drives (the multimodal backbone, its text decoder,
a plain linear head) or says why it cannot drive a model; :func:`unsupported_reason` adds the
generation settings it does not reproduce, so the caller uses ``generate`` for those.
:func:`prepare_decoding` builds ahead of the first reply what the loop would build at it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_args

from agent.core import defaults
from agent.core.config import HeadPrecision, KVCacheMode, PromptLookupMode
from agent.core.errors import InputError
from agent.llava import decode_attention
from agent.llava.kv_cache import CACHE_KEYWORDS, cache_keyword
from agent.llava.output_head import loaded_head, resolve_head_mode
from agent.llava.prefix_cache import DEFAULT_MAX_ENTRIES, DEFAULT_MAX_MIB

if TYPE_CHECKING:  # pragma: no cover
    from agent.llava.loading import LoadedModel

KV_CACHE_MODES = get_args(KVCacheMode)
HEAD_MODES = get_args(HeadPrecision)
PROMPT_LOOKUP_MODES = get_args(PromptLookupMode)


# generation-config settings this loop does not implement, with the value that means "off"
_UNSUPPORTED_GENERATION = {
    "num_beams": 1,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "min_length": 0,
    "min_new_tokens": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
    "min_p": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "guidance_scale": None,
    "penalty_alpha": None,
    "dola_layers": None,
    "watermarking_config": None,
    "assistant_model": None,
    "prompt_lookup_num_tokens": None,
}


@dataclass(frozen=True)
class DecodeSettings:
    """Switches of the decode loop (the ``ChatLlava`` fields of the same names)."""

    prefix_cache: bool = True
    prefix_cache_entries: int = DEFAULT_MAX_ENTRIES
    prefix_cache_mib: int = DEFAULT_MAX_MIB
    jump_forward: bool = True
    few_row_logits: bool = True
    kv_cache: str = "auto"
    lm_head: str = "auto"
    fast_attention: bool = True
    cuda_graphs: bool = True
    prompt_lookup: str = defaults.PROMPT_LOOKUP

    def __post_init__(self) -> None:
        if self.kv_cache not in KV_CACHE_MODES:
            raise InputError(f"kv_cache must be one of {KV_CACHE_MODES}, got {self.kv_cache!r}")
        if self.prompt_lookup not in PROMPT_LOOKUP_MODES:
            raise InputError(
                f"prompt_lookup must be one of {PROMPT_LOOKUP_MODES}, got {self.prompt_lookup!r}"
            )
        if self.lm_head not in HEAD_MODES:
            raise InputError(f"lm_head must be one of {HEAD_MODES}, got {self.lm_head!r}")
        if self.prefix_cache_entries < 0 or self.prefix_cache_mib < 0:
            raise InputError(
                f"prefix_cache_entries and prefix_cache_mib must be >= 0, got {self.prefix_cache_entries} "
                f"and {self.prefix_cache_mib}"
            )


@dataclass
class DecodeStats:
    """What one reply cost (reported in ``response_metadata["decode"]``)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens whose keys and values came from the prefix cache."""
    prefill_seconds: float = 0.0
    first_token_seconds: float | None = None
    """From the start of the loop to the first generated token."""
    generated_tokens: int = 0
    forward_passes: int = 0
    """Passes after the prefill."""
    forced_tokens: int = 0
    """Tokens appended by jump-forward, without a pass of their own."""
    few_row_steps: int = 0
    """Steps whose logits were computed for the allowed rows only."""
    graph_steps: int = 0
    drafted_tokens: int = 0
    """Tokens proposed by prompt lookup and checked in the pass after the token before them."""
    accepted_tokens: int = 0
    """Drafted tokens kept (each one a pass saved)."""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "prefill_seconds": round(self.prefill_seconds, 4),
            "first_token_seconds": None
            if self.first_token_seconds is None
            else round(self.first_token_seconds, 4),
            "generated_tokens": self.generated_tokens,
            "forward_passes": self.forward_passes,
            "forced_tokens": self.forced_tokens,
            "few_row_steps": self.few_row_steps,
            "graph_steps": self.graph_steps,
            "drafted_tokens": self.drafted_tokens,
            "accepted_tokens": self.accepted_tokens,
            "seconds": round(self.seconds, 4),
        }


# --- the model's parts ----------------------------------------------------------------------


@dataclass
class ModelParts:
    backbone: Any  # the multimodal model without head (handles images)
    language_model: Any  # its text decoder
    head: Any  # the plain linear head
    text_config: Any
    image_token_id: int | None
    context: Hashable  # what else the keys/values depend on (the active adapter)


def model_parts(model: Any) -> ModelParts | str:
    """The pieces the loop drives, or why it cannot drive this model."""
    import torch

    base = model
    context: Hashable = None
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        active = getattr(model, "active_adapter", None)
        config = model.peft_config.get(active) if isinstance(active, str) else None
        if config is None or getattr(config, "is_prompt_learning", False):
            return "the adapter is not a LoRA-style adapter"
        base = model.get_base_model()
        context = ("adapter", active)
    backbone = getattr(base, "model", None)
    language_model = getattr(backbone, "language_model", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if backbone is None or language_model is None:
        return f"{type(base).__name__} has no .model.language_model"
    if type(head) is not torch.nn.Linear:
        return f"its head is a {type(head).__name__}, not a plain linear layer"
    for module in (backbone, language_model):
        if cache_keyword(module) is None:
            return f"{type(module).__name__}.forward takes no cache argument (none of {', '.join(CACHE_KEYWORDS)})"
    config = base.config
    text_config = getattr(config, "text_config", config)
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(text_config, name, None) not in (None, 1, 1.0):
            return f"text_config.{name} rescales the logits"
    layer_types = getattr(text_config, "layer_types", None) or []
    if any(kind != "full_attention" for kind in layer_types) or getattr(
        text_config, "use_sliding_window", False
    ):
        return "the language model has sliding-window or non-attention layers"
    image_token_id = getattr(config, "image_token_id", None)
    if image_token_id is None:
        image_token_id = getattr(config, "image_token_index", None)
    return ModelParts(backbone, language_model, head, text_config, image_token_id, context)


def unsupported_reason(loaded: LoadedModel, options: dict[str, Any]) -> str | None:
    """Why this loop cannot reproduce ``generate`` for this model and these options (None: it can)."""
    parts = cached_parts(loaded)
    if isinstance(parts, str):
        return parts
    generation_config = loaded.model.generation_config
    for name, off in _UNSUPPORTED_GENERATION.items():
        value = getattr(generation_config, name, off)
        if value not in (off, None) and not (name == "min_length" and value == 0):
            return f"generation_config.{name}={value!r}"
    return None


def cached_parts(loaded: LoadedModel) -> ModelParts | str:
    parts = loaded.accelerators.get("parts")
    if parts is None:
        parts = model_parts(loaded.model)
        loaded.accelerators["parts"] = parts
    return parts


def resolve_kv_mode(mode: str) -> str:
    return "static" if mode == "auto" else mode


def prepare_decoding(loaded: LoadedModel, settings: DecodeSettings) -> None:
    """Build now what the first decode would build (the head copy, the CPU decode attention), so a
    first reply does not wait for them; nothing for a model the loop cannot drive."""
    parts = cached_parts(loaded)
    if isinstance(parts, str) or unsupported_reason(loaded, {}) is not None:
        return  # every reply goes to ``generate``: nothing of the loop's is needed
    device = parts.head.weight.device
    loaded_head(loaded, parts.head, resolve_head_mode(settings.lm_head, device))
    if settings.fast_attention:
        install_fast_attention(loaded)


def install_fast_attention(loaded: LoadedModel) -> None:
    if "attention" not in loaded.accelerators:
        with loaded.accelerators_lock:
            loaded.accelerators["attention"] = decode_attention.install(loaded.model)


# --- spelling ----------------------------------------------------------------------------------


def token_speller(tokenizer: Any) -> Callable[[bytes], list[int] | None]:
    """Bytes -> the tokenizer's ids for them (used to spell forced stretches)."""

    def spell(data: bytes) -> list[int] | None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return list(tokenizer.encode(text, add_special_tokens=False))

    return spell
