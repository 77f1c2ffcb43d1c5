"""Fine-tune the captioning model (BLIP or any image-to-text checkpoint) with LoRA on image-caption pairs.

Reads top to bottom: settings; data (:mod:`finetune.pairs`, a held-out part); the base model
with LoRA on every linear layer of its vision and text parts and on its patch embedding (peft); the loop (the model's own
captioning loss on the reference caption, AdamW, warm-up then cosine decay); held-out exact
match and BLEU before and after, on captions generated the way ``caption_image`` generates
them; save: the adapter (what ``tools.caption_adapter`` takes), and with ``merge`` a complete
merged model in ``<output>/merged`` (what ``tools.caption_model`` takes), written beside the
target and moved into place at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.core.errors import ModelLoadError, ModelNotFoundError
from agent.core.runtime import quiet_library_notices, resolve_device
from finetune.clip import PairTrainResult, check_output, configured_model, save_model_folder
from finetune.metrics import bleu, exact_match
from finetune.pair_config import PairTrainConfig
from finetune.pairs import (
    Captioner,
    Pair,
    cosine_schedule,
    load_images,
    read_pairs,
    shuffled_batches,
    split_pairs,
    step_plan,
)

if TYPE_CHECKING:
    from agent.core.config import AppConfig

logger = logging.getLogger(__name__)

MERGED_FOLDER = "merged"


def load_captioner(model: str, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        loaded = AutoModelForImageTextToText.from_pretrained(model, dtype="float32")
        processor = AutoProcessor.from_pretrained(model)
    except OSError as exc:
        raise ModelNotFoundError(f"captioning model {model!r} cannot be found ({exc}); pass a local folder or a cached hub id") from None
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{model!r} cannot be loaded as an image-to-text model ({exc})") from None
    return loaded.to(device), processor


def linear_layer_names(model: Any) -> list[str]:
    """Leaf names of the model's linear and 2-D convolution layers (the image patch embedding): the LoRA targets.

    A layer whose weight is tied to an embedding (BLIP's output head shares the word embeddings)
    is left out: merging LoRA into it would change the input embeddings too.
    """
    import torch

    embeddings = {m.weight.data_ptr() for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and module.weight.data_ptr() not in embeddings}
    return sorted(names)


def caption_batch(processor: Any, images: Sequence[Any], captions: Sequence[str], device: str,
                  start_token: int | None = None) -> dict[str, Any]:
    """Model inputs with the captions as targets; the text starts with ``start_token`` when given, as
    generation starts (BLIP generates after its ``[DEC]`` token, its tokenizer writes ``[CLS]`` there)."""
    batch = processor(images=list(images), text=list(captions), padding=True, return_tensors="pt")
    batch = {key: value.to(device) for key, value in batch.items()}
    if start_token is not None:
        batch["input_ids"][:, 0] = start_token
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    batch["labels"] = labels
    return batch


def generate_captions(model: Any, processor: Any, images: Sequence[Any], device: str, max_new_tokens: int,
                      batch_size: int = 16) -> list[str]:
    """Greedy captions, as ``caption_image`` (detail "short") writes them."""
    import torch

    captions: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = processor(images=list(images[start : start + batch_size]), return_tensors="pt").to(device)
            output = model.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=max_new_tokens)
            captions.extend(text.strip() for text in processor.batch_decode(output, skip_special_tokens=True))
    return captions


def caption_scores(model: Any, processor: Any, pairs: Sequence[Pair], images: Sequence[Any], device: str,
                   max_new_tokens: int) -> tuple[dict[str, float], list[str]]:
    predictions = generate_captions(model, processor, images, device, max_new_tokens)
    references = [p.caption for p in pairs]
    return {"exact_match": exact_match(predictions, references), "bleu": bleu(predictions, references)}, predictions


def train_caption(config: PairTrainConfig | None = None, *, captioner: Captioner | None = None,
                  app_config: AppConfig | str | Path | None = None, **options: Any) -> PairTrainResult:
    """LoRA fine-tuning of a captioning model on image-caption pairs; ``options`` are :class:`PairTrainConfig` fields.

    Without a ``model`` the base is the configured ``tools.caption_model`` (of ``app_config``, see
    :func:`finetune.clip.configured_model`): the model ``caption_image`` uses.
    """
    # ---- 1. settings -----------------------------------------------------------------
    config = replace(config, **options) if config is not None else PairTrainConfig(**options)
    if not config.model:
        config = replace(config, model=configured_model("caption_model", app_config))
    started = time.monotonic()
    output = check_output(config)

    # ---- 2. data (checked before torch is even imported) -------------------------------
    report = read_pairs(config.pairs, image_folder=config.image_folder, captioner=captioner,
                        skip_invalid=config.skip_invalid)
    if config.eval_pairs:
        train_pairs = list(report.pairs)
        eval_pairs = read_pairs(config.eval_pairs, image_folder=config.image_folder, captioner=captioner,
                                skip_invalid=config.skip_invalid).pairs
    else:
        train_pairs, eval_pairs = split_pairs(report.pairs, config.eval_split, config.seed)
    eval_images = load_images(eval_pairs)
    import torch
    from tqdm.auto import tqdm

    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ModelLoadError("caption fine-tuning needs peft; install it with `pip install peft`") from None
    device = resolve_device(config.device)
    device = "cpu" if device == "mps" else device
    random.seed(config.seed)
    torch.manual_seed(config.seed)

    # ---- 3. model --------------------------------------------------------------------
    base, processor = load_captioner(config.model, device)
    base.eval()
    before, _ = caption_scores(base, processor, eval_pairs, eval_images, device, config.max_new_tokens)
    targets = linear_layer_names(base)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, bias="none")
    start_token = getattr(getattr(base.config, "text_config", None), "bos_token_id", None)
    with quiet_library_notices():
        model = get_peft_model(base, lora)
    parameters = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in parameters)
    logger.info("Caption LoRA on %s: %d trainable parameters", ", ".join(targets), trainable)

    # ---- 4. loop ---------------------------------------------------------------------
    batch_size, total, warmup = step_plan(len(train_pairs), config.batch_size, config.epochs, config.max_steps)
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_schedule(step, total, warmup))
    model.train()
    history: list[dict[str, Any]] = []
    bar = tqdm(total=total, desc="Fine-tuning the captioner", unit="step", disable=not config.progress)
    batches = shuffled_batches(train_pairs, batch_size, config.seed)
    for step, batch in zip(range(total), batches, strict=False):  # batches never run out
        inputs = caption_batch(processor, load_images(batch), [p.caption for p in batch], device, start_token)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            loss = model(**inputs).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        history.append({"step": step + 1, "loss": float(loss.detach()), "learning_rate": schedule.get_last_lr()[0]})
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    bar.close()
    model.eval()

    # ---- 5. scores -------------------------------------------------------------------
    after, predictions = caption_scores(model, processor, eval_pairs, eval_images, device, config.max_new_tokens)
    logger.info("Held-out captions before %s, after %s", before, after)

    # ---- 6. save ---------------------------------------------------------------------
    train_loss = sum(h["loss"] for h in history[-10:]) / min(10, len(history)) if history else None
    examples = [{"image": str(p.image), "reference": p.caption, "prediction": text}
                for p, text in list(zip(eval_pairs, predictions, strict=True))[:20]]
    result = PairTrainResult(output, "lora", total, train_loss, before, after, trainable, len(train_pairs),
                             len(eval_pairs), time.monotonic() - started,
                             {"data": report.summary(), "base_model": config.model, "examples": examples})

    def write_merged(staging: Path) -> None:  # after the adapter is saved: merging changes the model in place
        merged = model.merge_and_unload()
        merged.save_pretrained(staging / MERGED_FOLDER, safe_serialization=True)
        processor.save_pretrained(staging / MERGED_FOLDER)

    save_model_folder(model, processor, output, config, result, history, f"caption loss: {Path(config.pairs).name}",
                      then=write_merged if config.merge else None)
    return result
