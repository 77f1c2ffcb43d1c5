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
linear layer) are reported by :func:`agent.llava.decode_setup.unsupported_reason`, and the caller uses
``generate`` for them. The settings, the report and the model's parts are :mod:`agent.llava.decode_setup`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from agent.core.errors import InputError
from agent.decoding.prompt_lookup import PromptLookup
from agent.llava import decode_attention
from agent.llava.cuda_graphs import graph_decoder
from agent.llava.decode_setup import (
    DecodeSettings,
    DecodeStats,
    cached_parts,
    install_fast_attention,
    resolve_kv_mode,
    token_speller,
)
from agent.llava.kv_cache import KVBuffers, cache_arguments
from agent.llava.output_head import loaded_head, resolve_head_mode
from agent.llava.prefix_cache import PrefixMatch, chunk_boundaries, image_spans, reusable_length
from agent.llava.sampling import Sampler, _History, _judge, _pick, config_processors

if TYPE_CHECKING:  # pragma: no cover
    from agent.llava.loading import LoadedModel

logger = logging.getLogger(__name__)

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
    parts = cached_parts(loaded)
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
        install_fast_attention(loaded)
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
