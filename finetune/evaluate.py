"""Evaluate a model (with or without an adapter) on a held-out file: loss and exact-match accuracy.

Answers are generated through :class:`agent.llava.chat_model.ChatLlava`, the path users take: each
sample's conversation up to its last assistant turn becomes LangChain messages, the model
answers greedily, and the answer counts as correct when it equals the reference reply
(surrounding whitespace ignored; ``case_sensitive=False`` also ignores case). The loss is the
mean cross-entropy over the reference replies' tokens, computed on the same loaded model with
the training collator.
"""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.core.errors import ConfigError
from finetune.collator import ConversationEncoder, load_pictures, pad_batch
from finetune.formats import IMAGE_PLACEHOLDER, Sample
from finetune.validate import validate

if TYPE_CHECKING:
    from langchain_core.messages import BaseMessage
    from PIL.Image import Image

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Loss and exact-match accuracy on a held-out set, with each prediction."""

    loss: float
    accuracy: float
    samples: int
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "accuracy": self.accuracy, "samples": self.samples}


def _image_block(picture: Image) -> dict[str, Any]:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"type": "image", "url": f"data:image/png;base64,{data}", "mime_type": "image/png"}


def to_messages(sample: Sample, pictures: list[Image]) -> tuple[list[BaseMessage], str]:
    """The conversation before the last assistant reply as LangChain messages, and that reply."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    remaining = iter(pictures)
    messages: list[BaseMessage] = []
    for turn in sample.turns[:-1]:
        text = turn["content"]
        if turn["role"] == "system":
            messages.append(SystemMessage(content=text))
        elif turn["role"] == "assistant":
            messages.append(AIMessage(content=text))
        else:
            blocks: list[dict[str, Any]] = []
            for number, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
                if number > 0:
                    blocks.append(_image_block(next(remaining)))
                if piece.strip():
                    blocks.append({"type": "text", "text": piece.strip()})
            messages.append(HumanMessage(content=blocks))
    return messages, sample.turns[-1]["content"]


def evaluate(
    data: str | Path,
    *,
    model: str | None = None,
    adapter: str | None = None,
    chat_model: Any = None,
    image_folder: str | Path | None = None,
    format: str | None = None,
    max_new_tokens: int = 32,
    max_length: int | None = None,
    batch_size: int = 8,
    case_sensitive: bool = True,
    device: str = "auto",
    quantization: str = "none",
    skip_invalid: bool = False,
) -> EvalResult:
    """Loss and exact-match accuracy of ``model`` (+ ``adapter``) on the held-out ``data``.

    Pass either ``model`` (and optionally ``adapter``) or a ready ``chat_model``
    (a :class:`agent.llava.chat_model.ChatLlava`).
    """
    import torch
    from tqdm.auto import tqdm


    if chat_model is None:
        if not model:

            raise ConfigError("evaluate needs `model` (a base checkpoint) or a ready `chat_model`")
        # imported here: it brings LangChain, which the rest of ``finetune`` (and the CLI's start) does without
        from agent.llava.chat_model import ChatLlava

        chat_model = ChatLlava(
            model=model,
            adapter=adapter,
            quantization=quantization,
            device=device,
            temperature=0.0,
            max_new_tokens=max_new_tokens,
        )
    loaded = chat_model.loaded
    encoder = ConversationEncoder(
        loaded.processor, model_config=loaded.config, max_length=max_length, image_folder=image_folder
    )
    report = validate(data, image_folder=image_folder, format=format, encoder=encoder, skip_invalid=skip_invalid)
    samples = report.samples

    # Loss: teacher-forced over the reference replies, weighted by their token counts.
    total_loss, total_tokens = 0.0, 0
    pad_id = encoder.tokenizer.pad_token_id if encoder.tokenizer.pad_token_id is not None else encoder.tokenizer.eos_token_id
    network = loaded.model
    device_of_inputs = loaded.input_device
    with torch.no_grad():
        for start in tqdm(range(0, len(samples), batch_size), desc="eval loss", unit="batch"):
            encoded = [encoder.encode(sample) for sample in samples[start : start + batch_size]]
            batch = pad_batch(encoded, pad_id)
            batch = {k: v.to(device_of_inputs) for k, v in batch.items()}
            if "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].to(network.dtype)
            tokens = sum(item.assistant_tokens for item in encoded)
            total_loss += float(network(**batch).loss) * tokens
            total_tokens += tokens

    # Exact match: generated through ChatLlava.
    greedy = chat_model.model_copy(update={"temperature": 0.0, "max_new_tokens": max_new_tokens})
    correct = 0
    predictions = []
    for sample in tqdm(samples, desc="eval answers", unit="sample"):
        messages, reference = to_messages(sample, load_pictures(sample, image_folder))
        answer = str(greedy.invoke(messages).content)
        match = _same(answer, reference, case_sensitive)
        correct += match
        predictions.append({"location": sample.location, "reference": reference, "answer": answer, "match": match})
    result = EvalResult(
        loss=total_loss / max(total_tokens, 1),
        accuracy=correct / len(samples),
        samples=len(samples),
        predictions=predictions,
    )
    logger.info("Eval on %s: loss %.4f, exact match %.1f%%", data, result.loss, 100 * result.accuracy)
    return result


def _same(answer: str, reference: str, case_sensitive: bool) -> bool:
    answer, reference = answer.strip(), reference.strip()
    return answer == reference if case_sensitive else answer.lower() == reference.lower()
