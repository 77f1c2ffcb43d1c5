"""Collation: samples to model inputs, through the same rendering ``ChatLlava`` uses at inference.

A sample becomes chat turns (:func:`finetune.formats.to_chat_turns`), which
:func:`agent.llava.prompting.render_prompt` renders with the checkpoint's own template and
:meth:`RenderedPrompt.encode` turns into ``input_ids`` and ``pixel_values``: exactly what the
model receives from ``ChatLlava``. Nothing here renders text a second way.

Labels cover only what the model should learn to write: the assistant turns. Their character
spans are found by rendering the conversation prefix by prefix (``turns[:i]`` with the
generation prompt, ``turns[:i+1]`` without): what the second adds to the first is the
assistant's reply, for any template whose rendering grows by appending. A reply ends with the
tokenizer's end-of-sequence token, so the model learns to stop: templates that write it
(ChatML's ``<|im_end|>``) get it labelled where it stands; templates that do not (llava-1.5's
``USER: ... ASSISTANT: ...``) get it inserted after every reply, as the original LLaVA training did
(so, for those templates only, earlier replies in a multi-turn sample carry an EOS that
``ChatLlava``'s rendering of the same history does not show).

Image tokens are never cut: a sample longer than ``max_length`` raises
:class:`SampleTooLongError`, which validation reports before training starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.core.errors import DatasetError, ImageError
from agent.core.images import DEFAULT_MAX_PIXELS, load_image
from agent.llava.prompting import render_prompt
from finetune.formats import Sample, SampleError, to_chat_turns

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


class SampleTooLongError(DatasetError):
    """A sample does not fit in ``max_length`` tokens; it is reported, never truncated."""


@dataclass
class EncodedSample:
    """One sample ready for the model (lists, not yet padded) plus what validation reports."""

    input_ids: list[int]
    labels: list[int]
    extra: dict[str, torch.Tensor]
    """Processor outputs besides the text ids (``pixel_values``, ``image_sizes``...)."""
    text: str
    image_tokens: int

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def assistant_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def load_pictures(
    sample: Sample, image_folder: str | Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[Image]:
    """Open a sample's images as RGB pictures (paths under ``image_folder``, at most ``max_pixels`` each).

    Only the image formats the chat accepts are decoded, and an image's size is checked before its
    pixels are (a decompression bomb is refused without being decoded).
    """

    pictures = []
    for image in sample.images:
        if not isinstance(image, str):
            width, height = image.size
            if width * height > max_pixels:
                raise DatasetError(
                    f"{sample.location}: an image is {width}x{height} pixels, over the limit of {max_pixels}; "
                    "resize it or raise --max-image-pixels"
                )
            pictures.append(image.convert("RGB"))
            continue
        try:
            path = resolve_image_path(image, image_folder)
        except ValueError as exc:
            raise DatasetError(f"{sample.location}: {exc}") from None
        if not path.is_file():
            raise DatasetError(f"{sample.location}: image {image!r} not found (looked at {path})")
        try:
            pictures.append(load_image(path, max_pixels=max_pixels))
        except ImageError as exc:
            raise DatasetError(f"{sample.location}: image {image!r} cannot be used ({exc})") from None
    return pictures


def resolve_image_path(image: str, image_folder: str | Path | None) -> Path:
    """Where an image path of a dataset points, confined to ``image_folder`` (default: the working folder).

    Relative paths are taken under the folder; absolute paths, ``..`` and symlinks are allowed only
    when they end up inside it. Raises ``ValueError`` (a :class:`finetune.formats.SampleError`)
    naming the image and the folder otherwise, so a dataset can never read files elsewhere.
    """

    root = Path(image_folder if image_folder is not None else ".").expanduser()
    try:
        root = root.resolve()
        candidate = Path(image).expanduser()
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise SampleError(f"image {image!r} cannot be resolved ({exc})") from None
    if resolved != root and not resolved.is_relative_to(root):
        raise SampleError(
            f"image {image!r} is outside the image folder {root}; dataset images must lie under --image-folder "
            "(give paths relative to it)"
        )
    return resolved


class ConversationEncoder:
    """Encode samples for training: ids, assistant-only labels, pixel values.

    ``processor`` is the base model's processor; ``model_config`` its config (it decides the image
    policy, as at inference). ``max_length`` bounds the full sequence, image tokens included.
    """

    def __init__(
        self,
        processor: Any,
        *,
        model_config: Any = None,
        max_length: int | None = None,
        image_folder: str | Path | None = None,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.processor = processor
        self.max_image_pixels = max_image_pixels
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.model_config = model_config
        self.max_length = max_length
        self.image_folder = image_folder
        self.image_token = getattr(processor, "image_token", None) or "<image>"
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        if self.tokenizer.eos_token_id is None:
            raise DatasetError(
                "the tokenizer has no eos_token; set one (tokenizer.eos_token = ...) so replies can end"
            )

    # -- rendering ----------------------------------------------------------------------
    def render(self, turns: list[dict[str, Any]], *, add_generation_prompt: bool) -> Any:
        return render_prompt(
            self.processor, turns, add_generation_prompt=add_generation_prompt, config=self.model_config
        )

    def assistant_spans(self, turns: list[dict[str, Any]], text: str) -> list[tuple[int, int, bool]]:
        """Character spans ``(start, end, ends_with_eos)`` of the assistant replies in ``text``."""
        eos = self.tokenizer.eos_token
        spans = []
        for position, turn in enumerate(turns):
            if turn["role"] != "assistant":
                continue
            before = self.render(turns[:position], add_generation_prompt=True).text
            through = self.render(turns[: position + 1], add_generation_prompt=False).text
            if not (through.startswith(before) and text.startswith(through)):
                raise DatasetError(
                    "the chat template does not render conversations by appending turns (turn "
                    f"{position} changes the text before it), so assistant replies cannot be located; "
                    "use a checkpoint whose template renders each turn after the previous ones"
                )
            reply = through[len(before) :].rstrip()
            spans.append((len(before), len(before) + len(reply), reply.endswith(eos)))
        return spans

    # -- encoding -----------------------------------------------------------------------
    def encode(self, sample: Sample) -> EncodedSample:
        """Render, tokenize and label one sample; raise ``DatasetError`` if it cannot be used."""
        pictures = load_pictures(sample, self.image_folder, self.max_image_pixels)
        turns = to_chat_turns(sample, pictures)
        rendered = self.render(turns, add_generation_prompt=False)
        features = rendered.encode(self.processor)
        model_ids = features["input_ids"][0].tolist()
        if self.max_length is not None and len(model_ids) > self.max_length:
            # Checked before the per-turn work below, so refusing an over-long sample costs one render and
            # one encoding (linear), and all later work is bounded by max_length.
            raise SampleTooLongError(
                f"{sample.location}: at least {len(model_ids)} tokens ({model_ids.count(self.image_token_id)} of "
                f"them image tokens) is longer than max_length {self.max_length}; image tokens are never cut, so "
                "raise --max-length or shorten the conversation"
            )
        spans = self.assistant_spans(turns, rendered.text)
        plain = self.tokenizer(rendered.text, return_offsets_mapping=True)
        input_ids, labels = self._align(model_ids, plain["input_ids"], plain["offset_mapping"], spans, sample)
        extra = {k: v for k, v in features.items() if k not in ("input_ids", "attention_mask")}
        image_tokens = sum(1 for token in input_ids if token == self.image_token_id)
        encoded = EncodedSample(input_ids, labels, extra, rendered.text, image_tokens)
        if self.max_length is not None and encoded.length > self.max_length:
            raise SampleTooLongError(
                f"{sample.location}: {encoded.length} tokens ({image_tokens} of them image tokens) is longer "
                f"than max_length {self.max_length}; image tokens are never cut, so raise --max-length or "
                "shorten the conversation"
            )
        if encoded.assistant_tokens == 0:
            raise DatasetError(f"{sample.location}: no assistant tokens to learn from")
        return encoded

    def _align(
        self,
        model_ids: list[int],
        plain_ids: list[int],
        offsets: list[tuple[int, int]],
        spans: list[tuple[int, int, bool]],
        sample: Sample,
    ) -> tuple[list[int], list[int]]:
        """Label the processor's ids using the plain tokenization's character offsets.

        The processor's ids equal the plain tokenization except that each image token is
        expanded into a run of image tokens; image tokens are never labelled.
        """
        eos_id = self.tokenizer.eos_token_id
        span_of: list[int | None] = []
        current = 0  # spans and offsets both run left to right: one pass over each (linear)
        for start, end in offsets:
            while current < len(spans) and spans[current][1] <= start:
                current += 1
            owner = current if current < len(spans) and start < spans[current][1] and end > spans[current][0] else None
            span_of.append(owner)
        last_token_of_span = {owner: index for index, owner in enumerate(span_of) if owner is not None}
        input_ids: list[int] = []
        labels: list[int] = []
        cursor = 0
        index = 0
        while index < len(plain_ids):
            token = plain_ids[index]
            if token == self.image_token_id:
                run = 0
                while index + run < len(plain_ids) and plain_ids[index + run] == self.image_token_id:
                    run += 1
                expanded = 0
                while cursor + expanded < len(model_ids) and model_ids[cursor + expanded] == self.image_token_id:
                    expanded += 1
                if expanded < run:
                    raise self._mismatch(sample)
                input_ids.extend(model_ids[cursor : cursor + expanded])
                labels.extend([IGNORE_INDEX] * expanded)
                cursor += expanded
                index += run
                continue
            if cursor >= len(model_ids) or model_ids[cursor] != token:
                raise self._mismatch(sample)
            owner = span_of[index]
            input_ids.append(token)
            labels.append(token if owner is not None else IGNORE_INDEX)
            if owner is not None and last_token_of_span[owner] == index and not spans[owner][2]:
                input_ids.append(eos_id)  # the template writes no end of turn: teach the model to stop
                labels.append(eos_id)
            cursor += 1
            index += 1
        if cursor != len(model_ids):
            raise self._mismatch(sample)
        return input_ids, labels

    def _mismatch(self, sample: Sample) -> DatasetError:
        return DatasetError(
            f"{sample.location}: the processor's tokens differ from the tokenizer's beyond image-token "
            "expansion; this processor is not supported for training"
        )


class TrainingCollator:
    """Turn a list of samples into a right-padded batch (``input_ids``, ``attention_mask``, ``labels``...)."""

    def __init__(self, encoder: ConversationEncoder) -> None:
        self.encoder = encoder
        tokenizer = encoder.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def __call__(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        return pad_batch([self.encoder.encode(sample) for sample in samples], self.pad_id)


def pad_batch(encoded: list[EncodedSample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded samples into tensors; processor extras are concatenated along dim 0."""
    import torch

    width = max(item.length for item in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, item in enumerate(encoded):
        input_ids[row, : item.length] = torch.tensor(item.input_ids)
        labels[row, : item.length] = torch.tensor(item.labels)
        attention[row, : item.length] = 1
    batch: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    for key in sorted({key for item in encoded for key in item.extra}):
        parts = [item.extra[key] for item in encoded if key in item.extra]
        batch[key] = torch.cat(parts, dim=0)
    return batch
