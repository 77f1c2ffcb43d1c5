"""Generate in a background thread and yield the reply text as tokens arrive.

:func:`stream_generate` is the one generation path behind :class:`agent.llava.chat_model.ChatLlava`.
The tokens come from :func:`agent.llava.decode_loop.decode` (prefix reuse, jump-forward, cheaper
steps), or from ``model.generate`` for what that loop does not drive (``decode_settings=None``,
or :func:`agent.llava.decode_setup.unsupported_reason`). It holds the model's lock for the whole
generation (so threads sharing a model take turns),
decodes tokens incrementally (no word buffering: each token's text is yielded as soon as it
forms whole characters), honours stop sequences (generation is stopped and the text trimmed
before the stop), enforces a timeout, and, with a tool-call constraint, only yields text once
the constraint says the reply is free text, never while it may be or is a tool call.

It yields ``str`` pieces, then one :class:`GenerationResult`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.llava.decode_loop import decode
from agent.llava.decode_setup import DecodeSettings, unsupported_reason
from agent.llava.repetition import repetition_guard

if TYPE_CHECKING:  # pragma: no cover
    from agent.llava.loading import LoadedModel

logger = logging.getLogger(__name__)

_END = object()


@dataclass
class GenerationResult:
    """The whole reply once generation ends."""

    text: str
    """The reply text (trimmed before a stop sequence, special tokens removed)."""
    output_tokens: int
    finish_reason: str
    """"stop" (end of sequence or stop sequence), "length" (max_new_tokens), "timeout" or "cancelled"."""
    mode: str
    """The tool-call constraint's final mode ("text", "tool_call", "undecided"); "text" without one."""
    decode: dict[str, Any] | None = None
    """What the decode loop reports (:class:`agent.llava.decode_setup.DecodeStats`); None with ``generate``."""
    first_token_at: float | None = None
    """``time.perf_counter()`` when the first generated token reached this thread (None if none did)."""


class IncrementalDecoder:
    """Decode a growing list of token ids into text, one piece per step, without re-decoding everything.

    Uses a short window of previous tokens so byte-level and SentencePiece spacing come out right,
    and holds back pieces ending in an incomplete UTF-8 character.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self._prefix_offset = 0
        self._read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, ids: Sequence[int]) -> str:
        """Add new token ids; return the text they complete ("" while a character is incomplete)."""
        self.ids.extend(ids)
        prefix_text = self._decode(self.ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self.ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            piece = new_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self.ids)
            self.text += piece
            return piece
        return ""

    def finish(self) -> str:
        """The full text, including any trailing incomplete piece."""
        full = self._decode(self.ids)
        return full if full.startswith(self.text) else self.text


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Index of the earliest stop sequence in ``text[start:]`` (as an index into ``text``), or None."""
    found = [index for stop in stops if (index := text.find(stop, start)) >= 0]
    return min(found) if found else None


def without_leading(text: str, markers: Sequence[str]) -> str:
    """``text`` without the markers it opens with (after blank space), and the blank space after them.

    ``text`` unchanged when it opens with anything else; "" while it is blank or may still become
    a marker, so that nothing is shown before the model has written past its opening.
    """
    if not markers:
        return text
    rest, dropped = text.lstrip(), False
    while rest:
        marker = next((m for m in markers if rest.startswith(m)), None)
        if marker is None:
            if any(m.startswith(rest) for m in markers):
                return ""
            return rest if dropped else text
        rest, dropped = rest[len(marker) :].lstrip(), True
    return ""


def safe_length(text: str, stops: Sequence[str]) -> int:
    """How much of ``text`` can be shown: all of it, minus a tail that may be the start of a stop."""
    for size in range(min(len(text), max((len(s) for s in stops), default=1) - 1), 0, -1):
        tail = text[-size:]
        if any(stop.startswith(tail) for stop in stops):
            return len(text) - size
    return len(text)


def _stopping_criteria(
    cancel: threading.Event, timeout: float | None, external: threading.Event | None = None
) -> list[Any]:
    import torch
    from transformers import MaxTimeCriteria, StoppingCriteria

    class _Cancelled(StoppingCriteria):
        def __call__(
            self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
        ) -> torch.BoolTensor:
            stopped = cancel.is_set() or (external is not None and external.is_set())
            return torch.full((input_ids.shape[0],), stopped, dtype=torch.bool, device=input_ids.device)

    criteria: list[Any] = [_Cancelled()]
    if timeout is not None:
        criteria.append(MaxTimeCriteria(max_time=timeout))
    return criteria


class _QueueStreamer:
    """A ``transformers`` streamer that hands generated token ids to the consuming thread."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first sends the prompt
            self._prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.queue.put(_END)


def stream_generate(
    loaded: LoadedModel,
    inputs: Any,
    *,
    options: dict[str, Any],
    stops: Sequence[str] = (),
    timeout: float | None = None,
    constraint_processor: Any = None,
    hold_back: Sequence[str] = (),
    decode_settings: DecodeSettings | None = None,
    cancel: threading.Event | None = None,
    logits_processor: Sequence[Any] = (),
    drop_leading: Sequence[str] = (),
) -> Iterator[str | GenerationResult]:
    """Generate a reply to the encoded ``inputs``; yield text pieces, then a :class:`GenerationResult`.

    Text is never yielded from a ``hold_back`` marker on (nor a tail that may start one): with
    tools bound, the ``<tool_call>`` opener and what follows it belong to the calls, not the text.
    Setting ``cancel`` (from any thread) ends generation at the next token, even while nothing is
    being yielded (inside a tool call or a JSON reply); the reply ends with ``finish_reason="cancelled"``.
    ``logits_processor`` (``transformers``-style processors, as ``model.generate`` takes them) are
    applied to every step's logits, before the constraint, by either decoder. The options'
    ``repetition_penalty`` and ``no_repeat_ngram_size`` become one more processor, run first
    (:func:`agent.llava.repetition.repetition_guard`: over the reply only, never inside a tool call).
    A reply that opens with one of the ``drop_leading`` markers loses it (:func:`without_leading`),
    before stops are looked for and text is yielded: a small model that writes ``<tool_response>``
    after a tool result, echoing the prompt's framing, still answers in words.
    """
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    model = loaded.model
    tokenizer = loaded.tokenizer
    inputs = inputs.to(loaded.input_device)
    if (
        "pixel_values" in inputs
        and inputs["pixel_values"] is not None
        and inputs["pixel_values"].is_floating_point()
    ):
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    max_new_tokens = int(options["max_new_tokens"])
    stop_event = threading.Event()
    streamer = _QueueStreamer()
    generate_kwargs: dict[str, Any] = {
        **inputs,
        "max_new_tokens": max_new_tokens,
        "streamer": streamer,
        "stopping_criteria": StoppingCriteriaList(_stopping_criteria(stop_event, timeout, cancel)),
        "pad_token_id": tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
    }
    temperature = float(options.get("temperature") or 0.0)
    if temperature > 0:
        generate_kwargs.update(
            do_sample=True, temperature=temperature, top_p=float(options.get("top_p") or 1.0)
        )
    else:
        generate_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    # The reply-only repetition control (options ``repetition_penalty``, ``no_repeat_ngram_size``)
    # runs first, then the caller's processors, then the constraint: by either decoder.
    guard = repetition_guard(
        int(inputs["input_ids"].shape[1]),
        float(options.get("repetition_penalty") or 1.0),
        int(options.get("no_repeat_ngram_size") or 0),
        active=(lambda: getattr(constraint_processor, "mode", "text") != "tool_call") if constraint_processor else None,
    )
    logits_processor = [*([guard] if guard is not None else []), *logits_processor]
    processors = [*logits_processor, *([constraint_processor] if constraint_processor is not None else [])]
    if processors:
        generate_kwargs["logits_processor"] = LogitsProcessorList(processors)
    errors: list[BaseException] = []
    if decode_settings is not None and (reason := unsupported_reason(loaded, options)) is not None:
        logger.info("Using transformers' generate for this model: %s", reason)
        decode_settings = None
    decode_stats: list[Any] = []

    def run() -> None:
        try:
            if decode_settings is None:
                with torch.inference_mode():
                    model.generate(**generate_kwargs)
                return
            deadline = started + timeout if timeout is not None else None
            decode_stats.append(
                decode(
                    loaded,
                    inputs,
                    options=options,
                    settings=decode_settings,
                    emit=streamer.queue.put,
                    should_stop=lambda: (
                        stop_event.is_set()
                        or (cancel is not None and cancel.is_set())
                        or (deadline is not None and time.perf_counter() >= deadline)
                    ),
                    constraint_processor=constraint_processor,
                    logits_processor=logits_processor,
                )
            )
        except BaseException as exc:  # handed to the consuming thread
            errors.append(exc)
        finally:
            streamer.end()

    def mode() -> str:
        return getattr(constraint_processor, "mode", "text") if constraint_processor is not None else "text"

    decoder = IncrementalDecoder(tokenizer)
    emitted = 0
    stop_at: int | None = None
    output_tokens = 0
    longest_stop = max((len(s) for s in stops), default=0)
    guarded = [*stops, *hold_back]
    first_token_at: float | None = None
    with loaded.lock:
        if options.get("seed") is not None:
            torch.manual_seed(int(options["seed"]))
        started = time.perf_counter()
        thread = threading.Thread(target=run, name="llava-generate", daemon=True)
        thread.start()
        try:
            while True:
                item = streamer.queue.get()
                if item is _END:
                    break
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                output_tokens += len(item)
                if stop_at is not None or not decoder.add(item):
                    continue
                text = without_leading(decoder.text, drop_leading)
                current_mode = mode()
                if stops and current_mode != "tool_call":
                    stop_at = find_stop(text, stops, max(0, emitted - longest_stop))
                    if stop_at is not None:
                        stop_event.set()
                        text = text[:stop_at]
                if current_mode == "text":
                    visible = len(text) if stop_at is not None else safe_length(text, guarded)
                    for marker in hold_back:
                        if (found := text.find(marker, max(0, emitted - len(marker)))) >= 0:
                            visible = min(visible, found)
                    if visible > emitted:
                        yield text[emitted:visible]
                        emitted = visible
        finally:
            stop_event.set()
            thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    text = without_leading(decoder.text if stop_at is not None else decoder.finish(), drop_leading)[:stop_at]
    if stop_at is None and stops and mode() != "tool_call":
        final_stop = find_stop(text, stops)
        if final_stop is not None:
            stop_at, text = final_stop, text[:final_stop]
    if stop_at is not None:
        finish_reason = "stop"
    elif cancel is not None and cancel.is_set():
        finish_reason = "cancelled"
    elif output_tokens >= max_new_tokens:
        finish_reason = "length"
    elif timeout is not None and elapsed >= timeout:
        finish_reason = "timeout"
    else:
        finish_reason = "stop"
    yield GenerationResult(
        text=text,
        output_tokens=output_tokens,
        finish_reason=finish_reason,
        mode=mode(),
        decode=decode_stats[0].as_dict() if decode_stats else None,
        first_token_at=first_token_at,
    )
