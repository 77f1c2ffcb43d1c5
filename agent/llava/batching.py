"""Several plain chat requests in one ``generate``: the batched twin of :mod:`agent.llava.streaming`.

On a CPU, a 4-bit decode step costs about the same for one sequence as for four (the weights are
read and dequantized once per step whatever the batch), so a server that has several requests
waiting answers them faster together (``bench/bench_batch_decode.py`` measures it). Only plain
requests are batched: text only (an image's hundreds of prompt tokens would be padded into every
row), no tool or JSON constraint, no seed, one sampling setting for the whole batch.

Each row keeps what a single request has: its own stop sequences, token limit, time limit and
cancel event (a per-row stopping criterion ends that row alone; ``generate`` pads it from then
on), its text streamed as soon as it forms whole characters, and its own finish reason. Rows are
left-padded to the longest prompt; in float32 a row's logits match the request run alone (to
1e-4 on the 0.5B-sized checkpoint), in bf16 the padding changes the rounding (by about 2 on
logits of about 90), enough to flip a greedy choice of a random-weight model now and then.

:func:`stream_generate_batch` works on an encoded, left-padded batch and yields
``(row, text piece)`` and one ``(row, GenerationResult)`` per row, as soon as that row ends.
:func:`stream_batch` does the same for ``ChatLlava`` requests (LangChain messages in,
``AIMessageChunk`` s out, usage and finish reason in each row's last chunk).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.core.errors import ContextLengthError, InputError
from agent.llava.messages import messages_to_turns
from agent.llava.prompting import render_prompt
from agent.llava.repetition import repetition_guard
from agent.llava.streaming import (
    _END,
    GenerationResult,
    IncrementalDecoder,
    _QueueStreamer,
    find_stop,
    safe_length,
)

if TYPE_CHECKING:  # pragma: no cover
    from langchain_core.messages import BaseMessage

    from agent.llava.chat_model import ChatLlava
    from agent.llava.loading import LoadedModel

logger = logging.getLogger(__name__)


@dataclass
class BatchRow:
    """One request's own limits inside a batch."""

    max_new_tokens: int
    stops: Sequence[str] = ()
    cancel: threading.Event | None = None
    deadline: float | None = None
    """``time.monotonic()`` by which the row must end (``finish_reason="timeout"``)."""


@dataclass
class _RowState:
    decoder: IncrementalDecoder
    emitted: int = 0
    output_tokens: int = 0
    stop_at: int | None = None
    eos: bool = False
    finished: bool = False
    stopped_at_step: list[int] = field(default_factory=list)


def stream_generate_batch(
    loaded: LoadedModel,
    inputs: Any,
    rows: Sequence[BatchRow],
    *,
    temperature: float,
    top_p: float,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
) -> Iterator[tuple[int, str | GenerationResult]]:
    """Generate replies to a left-padded batch; yield ``(row, piece)`` and ``(row, GenerationResult)`` per row.

    Repetition control is the single-request path's (:mod:`agent.llava.repetition`, over each reply only).
    """
    import torch
    from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    model = loaded.model
    tokenizer = loaded.tokenizer
    inputs = inputs.to(loaded.input_device)
    prompt_length = int(inputs["input_ids"].shape[1])
    eos_ids = model.generation_config.eos_token_id
    eos = set(eos_ids if isinstance(eos_ids, list) else [eos_ids] if eos_ids is not None else [])
    states = [_RowState(IncrementalDecoder(tokenizer)) for _ in rows]
    stop_found = [False] * len(rows)  # written by this thread, read by the criterion in the generate thread

    class _PerRow(StoppingCriteria):
        """Ends each row on its own: its limit, its stop sequence, its cancel event, its deadline."""

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
            generated = input_ids.shape[1] - prompt_length
            now = time.monotonic()
            flags = []
            for index, row in enumerate(rows):
                stop = (
                    stop_found[index]
                    or generated >= row.max_new_tokens
                    or (row.cancel is not None and row.cancel.is_set())
                    or (row.deadline is not None and now >= row.deadline)
                )
                if stop and not states[index].stopped_at_step:
                    states[index].stopped_at_step.append(generated)  # its last real token is this step's
                flags.append(stop)
            return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)

    streamer = _QueueStreamer()
    generate_kwargs: dict[str, Any] = {
        **inputs,
        "max_new_tokens": max(row.max_new_tokens for row in rows),
        "streamer": streamer,
        "stopping_criteria": StoppingCriteriaList([_PerRow()]),
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    }
    if temperature > 0:
        generate_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        generate_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    guard = repetition_guard(prompt_length, repetition_penalty, no_repeat_ngram_size)
    if guard is not None:
        generate_kwargs["logits_processor"] = LogitsProcessorList([guard])
    errors: list[BaseException] = []
    abandon = threading.Event()

    class _Abandon(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
            return torch.full((input_ids.shape[0],), abandon.is_set(), dtype=torch.bool, device=input_ids.device)

    generate_kwargs["stopping_criteria"].append(_Abandon())

    def run() -> None:
        try:
            with torch.inference_mode():
                model.generate(**generate_kwargs)
        except BaseException as exc:  # handed to the consuming thread
            errors.append(exc)
        finally:
            streamer.end()

    def result(index: int) -> GenerationResult:
        state, row = states[index], rows[index]
        state.finished = True
        text = state.decoder.text[: state.stop_at] if state.stop_at is not None else state.decoder.finish()
        if state.stop_at is None and row.stops:
            final_stop = find_stop(text, row.stops)
            if final_stop is not None:
                state.stop_at, text = final_stop, text[:final_stop]
        if state.stop_at is not None or state.eos:
            reason = "stop"
        elif state.output_tokens >= row.max_new_tokens:
            reason = "length"
        elif row.cancel is not None and row.cancel.is_set():
            reason = "cancelled"
        elif row.deadline is not None and time.monotonic() >= row.deadline:
            reason = "timeout"
        else:
            reason = "stop"
        return GenerationResult(text=text, output_tokens=state.output_tokens, finish_reason=reason, mode="text")

    with loaded.lock:
        thread = threading.Thread(target=run, name="llava-generate-batch", daemon=True)
        thread.start()
        step = 0
        try:
            while True:
                item = streamer.queue.get()
                if item is _END:
                    break
                step += 1
                for index, token in enumerate(item):
                    state, row = states[index], rows[index]
                    if state.finished or state.eos or (state.stopped_at_step and step > state.stopped_at_step[0]):
                        if not state.finished:
                            yield index, result(index)
                        continue
                    state.output_tokens += 1
                    if token in eos:
                        state.eos = True
                        yield index, result(index)
                        continue
                    if state.stop_at is not None or not state.decoder.add([token]):
                        continue
                    text = state.decoder.text
                    if row.stops:
                        longest = max(len(s) for s in row.stops)
                        state.stop_at = find_stop(text, row.stops, max(0, state.emitted - longest))
                        if state.stop_at is not None:
                            stop_found[index] = True
                            text = text[: state.stop_at]
                    visible = len(text) if state.stop_at is not None else safe_length(text, row.stops)
                    if visible > state.emitted:
                        yield index, text[state.emitted : visible]
                        state.emitted = visible
                    if state.stop_at is not None or state.output_tokens >= row.max_new_tokens:
                        yield index, result(index)
        finally:
            abandon.set()
            thread.join()
    if errors:
        raise errors[0]
    for index in range(len(rows)):
        if not states[index].finished:
            yield index, result(index)


@dataclass
class BatchRequest:
    """One plain request of a batch: text-only messages and the request's own limits."""

    messages: list[BaseMessage]
    max_tokens: int | None = None
    stop: list[str] | None = None
    cancel: threading.Event | None = None
    timeout: float | None = None


def stream_batch(
    llm: ChatLlava,
    requests: Sequence[BatchRequest],
    *,
    temperature: float | None = None,
    top_p: float | None = None,
) -> Iterator[tuple[int, Any]]:
    """Run plain requests on ``llm`` in one generation.

    Yields ``(index, AIMessageChunk)`` as text arrives and each request's last chunk (usage,
    ``finish_reason``) when it ends; a request that cannot run (over the context) yields
    ``(index, exception)`` and the others go on.
    """
    from langchain_core.messages import AIMessageChunk

    from agent.llava.loading import use_model

    temperature = llm.temperature if temperature is None else temperature
    top_p = llm.top_p if top_p is None else top_p
    prepared: list[tuple[int, str, BatchRow]] = []
    with use_model(llm.spec) as loaded:
        for index, request in enumerate(requests):
            turns = messages_to_turns(request.messages, max_image_pixels=llm.max_image_pixels)
            if any(block.get("type") == "image" for turn in turns for block in turn["content"]):
                raise InputError(f"request {index} holds images; batches take text-only requests")
            rendered = render_prompt(loaded.processor, turns, max_images=llm.max_images, config=loaded.config)
            max_new = request.max_tokens or llm.max_new_tokens
            prompt_tokens = int(rendered.encode(loaded.processor)["input_ids"].shape[1])  # as a single request counts
            limit = loaded.context_length
            if limit is not None and prompt_tokens + max_new > limit:
                yield index, ContextLengthError.counted(prompt_tokens, max_new, limit)
                continue
            deadline = time.monotonic() + request.timeout if request.timeout else None
            stops = [s for s in (request.stop if request.stop is not None else llm.stop) or [] if s]
            prepared.append((index, rendered.text, BatchRow(max_new, stops, request.cancel, deadline)))
        if not prepared:
            return
        inputs = loaded.processor(text=[text for _, text, _ in prepared], return_tensors="pt", padding=True,
                                  padding_side="left")  # fmt: skip
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        emitted: dict[int, list[str]] = {position: [] for position in range(len(prepared))}
        for position, event in stream_generate_batch(
            loaded, inputs, [row for _, _, row in prepared], temperature=temperature, top_p=top_p,
            repetition_penalty=llm.repetition_penalty, no_repeat_ngram_size=llm.no_repeat_ngram_size,
        ):
            index = prepared[position][0]
            if isinstance(event, str):
                emitted[position].append(event)
                yield index, AIMessageChunk(content=event)
                continue
            said = "".join(emitted[position])
            remaining = event.text[len(said) :] if event.text.startswith(said) else ""
            if event.finish_reason == "timeout":
                logger.warning("A batched generation stopped by its time limit after %d tokens", event.output_tokens)
            yield index, AIMessageChunk(
                content=remaining,
                usage_metadata={
                    "input_tokens": int(prompt_tokens[position]),
                    "output_tokens": event.output_tokens,
                    "total_tokens": int(prompt_tokens[position]) + event.output_tokens,
                },
                response_metadata={"finish_reason": event.finish_reason, "model_name": llm.spec.model},
                chunk_position="last",
            )
