"""The decode loop behind ``ChatLlava``: prefill what is new, then one token (or one forced stretch) per pass.

``model.generate`` prefills the whole prompt every call, runs one forward pass per token, and
computes the logits of the whole vocabulary at every step. This loop does the same arithmetic
with three differences, each behind a switch of :class:`DecodeSettings`:

1. **prefix reuse** (``prefix_cache``): the longest prefix shared with an earlier call of the
   same model is taken from :class:`agent.llava.prefix_cache.PrefixCache`; only the rest of the
   prompt is prefilled. Prompts are always prefilled in aligned chunks
   (:func:`agent.llava.prefix_cache.chunk_boundaries`), with or without reuse, so a reused
   position holds bitwise what a cold prefill computes. After the reply the sequence is stored;
   its prompt's complete chunks are what later calls may reuse.
2. **jump-forward** (``jump_forward``): inside a tool call, what the grammar alone decides is
   appended in one pass with the token before it (:mod:`agent.decoding.jump_forward`); and
   (``few_row_logits``) where the constraint allows few tokens, only their rows of the head are
   computed (:meth:`agent.llava.output_head.OutputHead.rows`) -- exact: the other logits are
   the ones the mask sets to ``-inf``. And (``prompt_lookup``) where the reply is copying text
   that appears earlier (a path, the words to speak), the rest of it is drafted
   (:mod:`agent.decoding.prompt_lookup`) and fed after the picked token in the same pass; the
   longest run of the draft the model agrees with is kept (:meth:`Sampler.judge`), the keys and
   values of the rest are cut from the cache, and the token decided where the draft went wrong
   is fed with the next pass.
3. **cheaper steps** (``kv_cache``, ``lm_head``, ``fast_attention``): keys and values are
   written in place into preallocated buffers instead of concatenated (:mod:`agent.llava.kv_cache`),
   the head may be an int4 or int8 copy whose best tokens the model's rows rescore
   (:mod:`agent.llava.output_head`), and on CPU decode steps
   compute attention as grouped float32 matmuls instead of bf16 SDPA
   (:mod:`agent.llava.decode_attention`). On CUDA, single-token steps replay a captured CUDA
   graph (:mod:`agent.llava.cuda_graphs`).

Sampling follows ``generate``: the generation config's repetition penalty, the caller's logits
processors (``logits_processor``, ``transformers``-style ``(input_ids, scores) -> scores``, given
the prompt and every token so far, as ``generate`` gives them), the constraint, then temperature,
the generation config's top-k, top-p, and a draw from the softmax; at temperature 0 the argmax.
Processors must be functions of their inputs (as ``transformers``' own are): a stretch forced by
jump-forward is appended without asking them, exactly as when each of its tokens is the only one
the constraint allows. Models or generation configs this loop does not reproduce exactly (beam
search, n-gram bans, sliding-window layers, prompt-learning adapters, a head that is not a plain
linear layer) are reported by :func:`unsupported_reason`, and the caller uses ``generate`` for them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_args

from agent.core import defaults
from agent.core.config import HeadPrecision, KVCacheMode, PromptLookupMode
from agent.core.errors import InputError
from agent.decoding.prompt_lookup import PromptLookup
from agent.llava import decode_attention
from agent.llava.cuda_graphs import graph_decoder
from agent.llava.kv_cache import CACHE_KEYWORDS, KVBuffers, cache_arguments, cache_keyword
from agent.llava.output_head import loaded_head, resolve_head_mode
from agent.llava.prefix_cache import (
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_MIB,
    PrefixMatch,
    chunk_boundaries,
    image_spans,
    reusable_length,
)
from agent.llava.sampling import Sampler, _History, _judge, _pick, config_processors

if TYPE_CHECKING:  # pragma: no cover

    from agent.llava.loading import LoadedModel

logger = logging.getLogger(__name__)

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
    parts = _cached_parts(loaded)
    if isinstance(parts, str):
        return parts
    generation_config = loaded.model.generation_config
    for name, off in _UNSUPPORTED_GENERATION.items():
        value = getattr(generation_config, name, off)
        if value not in (off, None) and not (name == "min_length" and value == 0):
            return f"generation_config.{name}={value!r}"
    return None


def _cached_parts(loaded: LoadedModel) -> ModelParts | str:
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
    parts = _cached_parts(loaded)
    if isinstance(parts, str) or unsupported_reason(loaded, {}) is not None:
        return  # every reply goes to ``generate``: nothing of the loop's is needed
    device = parts.head.weight.device
    loaded_head(loaded, parts.head, resolve_head_mode(settings.lm_head, device))
    if settings.fast_attention:
        _install_fast_attention(loaded)


def _install_fast_attention(loaded: LoadedModel) -> None:
    if "attention" not in loaded.accelerators:
        with loaded.accelerators_lock:
            loaded.accelerators["attention"] = decode_attention.install(loaded.model)


# --- sampling -------------------------------------------------------------------------------


def token_speller(tokenizer: Any) -> Callable[[bytes], list[int] | None]:
    """Bytes -> the tokenizer's ids for them (used to spell forced stretches)."""

    def spell(data: bytes) -> list[int] | None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return list(tokenizer.encode(text, add_special_tokens=False))

    return spell


# --- the loop -------------------------------------------------------------------------------


def _image_inputs_between(image_inputs: dict[str, Any], spans: tuple, start: int, end: int) -> dict[str, Any]:
    """The image inputs of the images whose placeholders lie in ``[start, end)``."""
    import torch

    wanted = [index for span in spans if start <= span.start < end for index in span.images]
    if not wanted:
        return {}
    total = int(image_inputs["pixel_values"].shape[0]) if "pixel_values" in image_inputs else None
    if total is None or wanted == list(range(total)):
        return dict(image_inputs)
    rows = torch.tensor(wanted, device=image_inputs["pixel_values"].device)
    return {k: v.index_select(0, rows.to(v.device)) for k, v in image_inputs.items()}


def decode(
    loaded: LoadedModel,
    inputs: Any,
    *,
    options: dict[str, Any],
    settings: DecodeSettings,
    emit: Callable[[list[int]], None],
    should_stop: Callable[[], bool],
    constraint_processor: Any = None,
    logits_processor: Sequence[Any] = (),
) -> DecodeStats:
    """Generate a reply to the encoded batch-1 ``inputs``; every new token id goes to ``emit``.

    ``should_stop`` is asked before each prefill chunk and after each emitted stretch
    (cancellation, timeout). ``logits_processor`` are applied to every step's logits before the
    constraint (see the module's docstring). Returns what the reply cost.
    """
    import numpy as np
    import torch

    started = time.perf_counter()
    stats = DecodeStats()
    parts = _cached_parts(loaded)
    if isinstance(parts, str):
        raise InputError(f"the decode loop cannot drive this model: {parts}")
    input_ids = inputs["input_ids"]
    if input_ids.shape[0] != 1:
        raise InputError(
            f"the decode loop generates one sequence at a time, got a batch of {input_ids.shape[0]}"
        )
    device = input_ids.device
    max_new_tokens = int(options["max_new_tokens"])
    prompt_length = int(input_ids.shape[1])
    stats.prompt_tokens = prompt_length
    tokens = input_ids[0].to("cpu").numpy().astype(np.int64)
    image_inputs = {
        k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask") and v is not None
    }
    spans = image_spans(input_ids.to("cpu"), parts.image_token_id, image_inputs)

    eos = loaded.model.generation_config.eos_token_id
    eos_ids = {int(e) for e in ([eos] if isinstance(eos, int) else list(eos or []))}
    temperature = float(options.get("temperature") or 0.0)
    sampler = Sampler(
        temperature,
        float(options.get("top_p") or 1.0),
        getattr(loaded.model.generation_config, "top_k", None),
    )
    processors = [*config_processors(loaded.model.generation_config), *logits_processor]
    history = _History(tokens, max_new_tokens, device) if processors else None
    head = loaded_head(loaded, parts.head, resolve_head_mode(settings.lm_head, device))
    if settings.fast_attention:
        _install_fast_attention(loaded)
    kv_mode = resolve_kv_mode(settings.kv_cache)
    graphs = None
    if settings.cuda_graphs and kv_mode == "static":  # None unless on CUDA
        graphs = graph_decoder(loaded, parts, prompt_length + max_new_tokens + 1)
    prefix_cache = loaded.prefix_cache
    capacity = prompt_length + max_new_tokens + 1
    bounds = chunk_boundaries(prompt_length, spans)

    # -- prefill what is new --------------------------------------------------------------------
    reused = 0
    kv: KVBuffers | None = None
    if settings.prefix_cache:
        prefix_cache.configure(settings.prefix_cache_entries, settings.prefix_cache_mib << 20)
        match = prefix_cache.match(tokens, spans, parts.context)
        if match is not None:
            # a chunk boundary at or before the match and before the last prompt position (which gives the first logits)
            reused = max(b for b in bounds if b <= min(match.length, prompt_length - 1))
            if reused > 0:
                with torch.inference_mode():
                    kv = prefix_cache.take(PrefixMatch(reused, match.entry), capacity)
    if graphs is not None:
        kv = graphs.adopt(kv, reused)
    elif kv is None:
        kv = KVBuffers(parts.text_config.num_hidden_layers, capacity)
    kv.set_dynamic(kv_mode == "dynamic")
    stats.cached_tokens = reused
    with torch.inference_mode():  # aligned chunks, SDPA: the same kernels on the same inputs for a
        # position whether its prefix was reused or not (see prefix_cache.chunk_boundaries)
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            if end <= reused:
                continue
            if should_stop():  # cancelled or out of time before the prompt is read: no reply
                stats.prefill_seconds = stats.seconds = time.perf_counter() - started
                return stats
            output = parts.backbone(
                input_ids=input_ids[:, start:end],
                **cache_arguments(parts.backbone, kv.cache),
                use_cache=True,
                **_image_inputs_between(image_inputs, spans, start, end),
            )
            hidden = output.last_hidden_state[:, -1]
            del output
            if kv.length != end:  # the model kept its keys and values elsewhere: every later step would be wrong
                raise RuntimeError(
                    f"{type(parts.backbone).__name__} did not write positions {start}..{end} into the "
                    f"decode loop's key/value cache (it holds {kv.length}); this transformers version "
                    "is not supported by the decode loop: use decoder='transformers'"
                )
    stats.prefill_seconds = time.perf_counter() - started
    # grouped float32 attention for the decode steps (this thread only), see decode_attention
    with decode_attention.enabled(settings.fast_attention):
        # -- decode ---------------------------------------------------------------------------------
        processor = constraint_processor
        if processor is not None:
            processor.begin()
        jump = settings.jump_forward and processor is not None and hasattr(processor, "forced_run")
        spell = token_speller(loaded.tokenizer) if jump or settings.prompt_lookup != "off" else None
        lookup = _prompt_lookup(loaded, settings.prompt_lookup, processor, tokens, spell)
        fed: list[int] = []
        generated = 0
        stored = False
        carried: list[int] = []  # a token decided while checking a draft, written but not yet fed

        def emit_tokens(new: list[int]) -> None:
            nonlocal generated
            if stats.first_token_seconds is None:
                stats.first_token_seconds = time.perf_counter() - started
            generated += len(new)
            emit(new)
            if history is not None:
                history.extend(new)
            if processor is not None:
                processor.accept(new)
            if lookup is not None:
                lookup.extend(new)

        def finished(last: int) -> bool:
            return last in eos_ids or generated >= max_new_tokens or should_stop()

        try:
            with torch.inference_mode():
                while True:
                    picked = True  # the first token of this step was chosen by the model, not forced
                    if carried:  # decided, and written, while the last draft was checked
                        chosen, carried = carried, []
                    else:
                        remaining = max_new_tokens - generated
                        forced = processor.forced_run(remaining, spell) if jump else []
                        if forced:
                            stats.forced_tokens += len(forced)
                            chosen, picked = forced, False
                        else:
                            chosen = [
                                _pick(
                                    hidden,
                                    head,
                                    processor,
                                    sampler,
                                    remaining,
                                    stats,
                                    settings.few_row_logits,
                                    processors,
                                    history,
                                )
                            ]
                        emit_tokens(chosen)
                        if finished(chosen[-1]):
                            break
                    if jump and picked:  # a stretch forced right after the pick rides in the same pass
                        more = processor.forced_run(max_new_tokens - generated, spell)
                        if more:
                            stats.forced_tokens += len(more)
                            emit_tokens(more)
                            chosen = chosen + more
                            if finished(more[-1]):
                                break
                    draft = _draft(lookup, settings.prompt_lookup, processor, max_new_tokens - generated)
                    step = torch.tensor([chosen + draft], dtype=torch.long, device=device)
                    if graphs is not None and len(chosen) == 1 and not draft:
                        hidden = graphs.step(kv, step)
                        stats.graph_steps += 1
                    else:
                        output = parts.language_model(
                            input_ids=step, **cache_arguments(parts.language_model, kv.cache), use_cache=True
                        )
                        states = output.last_hidden_state[0]
                        hidden = states[-1:]
                        del output
                    fed.extend(chosen)
                    stats.forward_passes += 1
                    if not draft:
                        continue
                    # -- keep the longest run of the draft the model would have written itself ----------
                    stats.drafted_tokens += len(draft)
                    kept, stop = 0, False
                    for index, token in enumerate(draft):
                        # the logits before this drafted token, computed only when the ones before it were kept
                        position = len(chosen) - 1 + index
                        instead = _judge(
                            states[position : position + 1],
                            head,
                            processor,
                            sampler,
                            token,
                            max_new_tokens - generated,
                            stats,
                            settings.few_row_logits,
                            processors,
                            history,
                        )
                        written = token if instead is None else instead
                        emit_tokens([written])
                        if instead is None:
                            kept += 1
                        else:
                            carried = [instead]
                        stop = finished(written)
                        if stop or instead is not None:
                            break
                    fed.extend(draft[:kept])
                    stats.accepted_tokens += kept
                    kv.truncate(prompt_length + len(fed))  # forget the keys and values of what was not kept
                    if stop:
                        break
                    hidden = states[len(chosen) - 1 + kept : len(chosen) + kept]
            stored = True
        finally:
            stats.generated_tokens = generated
            stats.seconds = time.perf_counter() - started
            if stored and settings.prefix_cache:
                sequence = np.concatenate([tokens, np.asarray(fed, dtype=np.int64)])
                if kv.length == sequence.shape[0]:
                    if graphs is not None:  # the graph's buffers are reused by the next reply: keep a copy
                        kv = kv.copy_prefix(kv.length, kv.length)
                    reusable = reusable_length(prompt_length, spans)  # the prompt's complete chunks
                    prefix_cache.store(sequence, spans, parts.context, kv, reusable)
                else:  # pragma: no cover - a bug, never a reason to fail the reply
                    logger.warning(
                        "prefix not stored: cache holds %d positions for %d tokens", kv.length, len(sequence)
                    )
        return stats


def _prompt_lookup(
    loaded: LoadedModel, mode: str, processor: Any, prompt: Any, spell: Any
) -> PromptLookup | None:
    """The drafter of this reply, or None when prompt lookup is off or cannot apply."""
    if mode == "off" or spell is None:
        return None
    if processor is not None and hasattr(processor, "constraint"):
        vocabulary = processor.constraint.vocabulary
    elif mode == "always":
        from agent.decoding.token_index import token_vocabulary

        try:
            vocabulary = token_vocabulary(loaded.tokenizer)
        except InputError:  # a tokenizer without EOS: no byte table, no drafts
            return None
    else:
        return None
    return PromptLookup(vocabulary.token_bytes, prompt.tolist(), spell)


def _draft(lookup: PromptLookup | None, mode: str, processor: Any, remaining: int) -> list[int]:
    """Tokens to check in the next pass: a draft where prompt lookup applies, else none."""
    if lookup is None or remaining <= 0:
        return []
    in_call = processor is not None and getattr(processor, "mode", None) == "tool_call"
    if mode == "calls" and not in_call:
        return []
    draft = lookup.draft(remaining)
    if draft and processor is not None and hasattr(processor, "valid_prefix"):
        draft = draft[: processor.valid_prefix(draft)]
    return draft
