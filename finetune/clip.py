"""Fine-tune a CLIP model on the user's image-caption pairs, for ``search_images``. Reads top to bottom:

1. settings: a :class:`~finetune.pair_config.PairTrainConfig`, the device;
2. data: every pair read and checked (:mod:`finetune.pairs`), a held-out part set aside;
3. model: the base CLIP, then what trains — ``lora`` (default: LoRA on every attention and MLP
   projection of both encoders, the two projections and the temperature trained in full) or
   ``last-layers`` (the final transformer layers of both encoders, their last norms, both
   projections and the temperature). The default was chosen by measurement: on the synthetic
   coloured-shapes task LoRA reached the same or a higher held-out recall@1 with fewer trainable
   weights (README, *Fine-tune CLIP*), and it leaves the pretrained weights alone until merged;
4. loop: the symmetric InfoNCE loss (image-to-text and text-to-image cross-entropy over the
   batch), where pairs with the same caption in one batch count as matches of each other, not
   as negatives; AdamW, warm-up then cosine decay, a progress bar;
5. scores: held-out text-to-image recall@k before and after (:func:`finetune.metrics.recall_at_k`);
6. save: a complete CLIP folder (LoRA merged in) with its processor, the training config, the
   scores, the log and a loss-curve PNG, written beside the target and moved into place at once.

The output folder is a plain CLIP checkpoint: set ``tools.clip_model`` to it and rebuild the
image index (``llava-agent index --reindex``).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.core.errors import ConfigError, ModelLoadError, ModelNotFoundError
from agent.core.runtime import quiet_library_notices, resolve_device
from finetune.folders import publish_folder, staging_folder
from finetune.loss_curve import draw_loss_curve
from finetune.metrics import chance_recall_at_1, recall_at_k
from finetune.ownership import check_not_an_input, check_replaceable, write_marker
from finetune.pair_config import PairTrainConfig
from finetune.pairs import (
    Captioner,
    Pair,
    PairsReport,
    cosine_schedule,
    load_images,
    read_pairs,
    shuffled_batches,
    split_pairs,
    step_plan,
)

if TYPE_CHECKING:
    import torch

    from agent.core.config import AppConfig

logger = logging.getLogger(__name__)

METRICS_NAME = "finetune_metrics.json"
CONFIG_NAME = "finetune_config.json"
HISTORY_NAME = "log_history.json"
LOSS_CURVE_NAME = "loss_curve.png"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


@dataclass
class PairTrainResult:
    """What a finished pair fine-tuning produced and how it scored on the held-out pairs."""

    output: Path
    method: str
    steps: int
    train_loss: float | None
    before: dict[str, float]
    after: dict[str, float]
    trainable_parameters: int
    train_pairs: int
    eval_pairs: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "method": self.method, "steps": self.steps, "train_loss": self.train_loss,
                "before": self.before, "after": self.after, "trainable_parameters": self.trainable_parameters,
                "train_pairs": self.train_pairs, "eval_pairs": self.eval_pairs, "seconds": round(self.seconds, 2),
                **self.extra}


# ---------------------------------------------------------------------------- pure pieces
def symmetric_info_nce(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor, captions: Sequence[str] | None = None
) -> torch.Tensor:
    """CLIP's contrastive loss: the mean of the image-to-text and text-to-image cross-entropies.

    Embeddings are normalised here; ``logit_scale`` is the log of the temperature's inverse (as
    CLIP stores it). With ``captions``, pairs sharing a caption are all targets of each other
    (the target row is spread evenly over them) instead of being pushed apart as negatives.
    """
    import torch
    import torch.nn.functional as F

    image_embeds = F.normalize(image_embeds, dim=-1)
    text_embeds = F.normalize(text_embeds, dim=-1)
    logits = logit_scale.exp().clamp(max=100.0) * image_embeds @ text_embeds.T
    if captions is None:
        targets = torch.eye(len(logits), device=logits.device)
    else:
        same = [[a == b for b in captions] for a in captions]
        targets = torch.tensor(same, dtype=logits.dtype, device=logits.device)
        targets = targets / targets.sum(dim=1, keepdim=True)
    image_to_text = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    text_to_image = -(targets.T * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return (image_to_text + text_to_image) / 2


def _features(output: Any) -> Any:
    return getattr(output, "pooler_output", output)


# ---------------------------------------------------------------------------- model pieces
def load_clip(model: str, device: str) -> tuple[Any, Any]:
    from transformers import CLIPModel, CLIPProcessor

    try:
        clip = CLIPModel.from_pretrained(model, dtype="float32")
        processor = CLIPProcessor.from_pretrained(model)
    except OSError as exc:
        raise ModelNotFoundError(
            f"CLIP model {model!r} cannot be found ({exc}); pass a local folder or a cached hub id"
        ) from None
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{model!r} cannot be loaded as a CLIP model ({exc})") from None
    return clip.to(device), processor


def choose_trainable(model: Any, config: PairTrainConfig) -> Any:
    """Freeze what does not train; returns the model (wrapped by peft for ``lora``)."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if config.method == "lora":
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise ModelLoadError("--method lora needs peft; install it with `pip install peft`") from None
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=LORA_TARGETS, modules_to_save=["visual_projection", "text_projection"])
        with quiet_library_notices():
            model = get_peft_model(model, lora)
        model.base_model.model.logit_scale.requires_grad_(True)
        return model
    layers = config.last_layers
    for encoder in (model.vision_model.encoder.layers, model.text_model.encoder.layers):
        for layer in list(encoder)[-layers:]:
            for parameter in layer.parameters():
                parameter.requires_grad_(True)
    for module in (model.vision_model.post_layernorm, model.text_model.final_layer_norm,
                   model.visual_projection, model.text_projection):
        for parameter in module.parameters():
            parameter.requires_grad_(True)
    model.logit_scale.requires_grad_(True)
    return model


def _clip_of(model: Any) -> Any:
    """The CLIPModel itself (under peft's wrappers when there are some)."""
    return model.base_model.model if hasattr(model, "peft_config") else model


def _text_batch(processor: Any, clip: Any, captions: Sequence[str], device: str) -> dict[str, Any]:
    max_length = min(77, int(clip.config.text_config.max_position_embeddings))
    return processor.tokenizer(list(captions), padding=True, truncation=True, max_length=max_length,
                               return_tensors="pt").to(device)


def embed(model: Any, processor: Any, images: Sequence[Any], captions: Sequence[str], device: str,
          batch_size: int = 64) -> tuple[Any, Any]:
    """Normalised image and text embeddings (NumPy) of held-out pairs."""
    import numpy as np
    import torch

    clip = _clip_of(model)
    image_chunks, text_chunks = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            pixels = processor(images=list(images[start : start + batch_size]), return_tensors="pt")["pixel_values"]
            image_chunks.append(_features(clip.get_image_features(pixel_values=pixels.to(device))).float().cpu())
        for start in range(0, len(captions), batch_size):
            batch = _text_batch(processor, clip, captions[start : start + batch_size], device)
            text_chunks.append(_features(clip.get_text_features(**batch)).float().cpu())
    images_np = torch.nn.functional.normalize(torch.cat(image_chunks), dim=-1).numpy()
    texts_np = torch.nn.functional.normalize(torch.cat(text_chunks), dim=-1).numpy()
    return np.asarray(images_np), np.asarray(texts_np)


def held_out_recall(model: Any, processor: Any, pairs: Sequence[Pair], images: Sequence[Any], ks: Sequence[int],
                    device: str) -> dict[str, float]:
    image_vectors, text_vectors = embed(model, processor, images, [p.caption for p in pairs], device)
    captions = [p.caption for p in pairs]
    return recall_at_k(text_vectors @ image_vectors.T, captions, captions, ks)


# ---------------------------------------------------------------------------- the run
def _data(config: PairTrainConfig, captioner: Captioner | None) -> tuple[PairsReport, list[Pair], list[Pair]]:
    report = read_pairs(config.pairs, image_folder=config.image_folder, captioner=captioner,
                        skip_invalid=config.skip_invalid)
    if config.eval_pairs:
        held = read_pairs(config.eval_pairs, image_folder=config.image_folder, captioner=captioner,
                          skip_invalid=config.skip_invalid).pairs
        return report, list(report.pairs), list(held)
    train_pairs, held = split_pairs(report.pairs, config.eval_split, config.seed)
    return report, train_pairs, held


def check_output(config: PairTrainConfig) -> Path:
    """The output folder, once it is known not to be (or hold) an input, and to be replaceable when it exists."""
    output = Path(config.output).expanduser()
    check_not_an_input(output, {"base model": config.model, "pairs": config.pairs, "image folder": config.image_folder,
                                "evaluation pairs": config.eval_pairs}, option="--output")
    if output.exists() and not config.overwrite:
        raise ConfigError(f"output folder {output} already exists; pass --overwrite to replace it or choose another")
    check_replaceable(output, option="--output")  # --overwrite replaces only a folder this project wrote
    return output


def configured_model(name: str, app_config: AppConfig | str | Path | None = None) -> str:
    """``tools.<name>`` of the llava-agent config: the file ``app_config`` names (default: ``LLAVA_AGENT_CONFIG``,
    else the user's config file), with the environment's settings over it."""
    from agent.core.config import load_config

    return str(getattr(load_config(app_config).tools, name))


def train_clip(config: PairTrainConfig | None = None, *, captioner: Captioner | None = None,
               app_config: AppConfig | str | Path | None = None, **options: Any) -> PairTrainResult:
    """Fine-tune CLIP on image-caption pairs; ``options`` are :class:`PairTrainConfig` fields.

    Without a ``model`` the base is the configured ``tools.clip_model`` (of ``app_config``, see
    :func:`configured_model`): the CLIP the image search uses.
    """
    # ---- 1. settings -----------------------------------------------------------------
    config = replace(config, **options) if config is not None else PairTrainConfig(**options)
    if not config.model:
        config = replace(config, model=configured_model("clip_model", app_config))
    started = time.monotonic()
    output = check_output(config)

    # ---- 2. data (checked before torch is even imported) -------------------------------
    report, train_pairs, eval_pairs = _data(config, captioner)
    eval_images = load_images(eval_pairs)
    import torch
    from tqdm.auto import tqdm

    device = resolve_device(config.device)
    device = "cpu" if device == "mps" else device
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    logger.info("CLIP fine-tuning on %d pairs, %d held out, %s", len(train_pairs), len(eval_pairs), config.method)

    # ---- 3. model --------------------------------------------------------------------
    base, processor = load_clip(config.model, device)
    before = held_out_recall(base, processor, eval_pairs, eval_images, config.recall_k, device)
    before["chance@1"] = chance_recall_at_1([p.caption for p in eval_pairs])
    model = choose_trainable(base, config)
    parameters = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in parameters)
    logger.info("Trainable parameters: %d (%s)", trainable, config.method)

    # ---- 4. loop ---------------------------------------------------------------------
    batch_size, total, warmup = step_plan(len(train_pairs), config.batch_size, config.epochs, config.max_steps)
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_schedule(step, total, warmup))
    clip = _clip_of(model)
    model.train()
    history: list[dict[str, Any]] = []
    bar = tqdm(total=total, desc="Fine-tuning CLIP", unit="step", disable=not config.progress)
    batches = shuffled_batches(train_pairs, batch_size, config.seed)
    for step, batch in zip(range(total), batches, strict=False):  # batches never run out
        pixels = processor(images=load_images(batch), return_tensors="pt")["pixel_values"].to(device)
        text = _text_batch(processor, clip, [p.caption for p in batch], device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            image_embeds = _features(clip.get_image_features(pixel_values=pixels))
            text_embeds = _features(clip.get_text_features(**text))
            loss = symmetric_info_nce(image_embeds.float(), text_embeds.float(), clip.logit_scale,
                                      [p.caption for p in batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100.0))
        history.append({"step": step + 1, "loss": float(loss.detach()), "learning_rate": schedule.get_last_lr()[0]})
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    bar.close()
    model.eval()

    # ---- 5. scores -------------------------------------------------------------------
    if config.method == "lora":
        model = model.merge_and_unload()
    after = held_out_recall(model, processor, eval_pairs, eval_images, config.recall_k, device)
    after["chance@1"] = before["chance@1"]
    logger.info("Held-out recall before %s, after %s", before, after)

    # ---- 6. save ---------------------------------------------------------------------
    train_loss = sum(h["loss"] for h in history[-10:]) / min(10, len(history)) if history else None
    result = PairTrainResult(output, config.method, total, train_loss, before, after, trainable, len(train_pairs),
                             len(eval_pairs), time.monotonic() - started, {"data": report.summary()})
    save_model_folder(model, processor, output, config, result, history, f"CLIP loss: {Path(config.pairs).name}")
    return result


def save_model_folder(model: Any, processor: Any, output: Path, config: PairTrainConfig, result: PairTrainResult,
                      history: list[dict[str, Any]], title: str, then: Any = None) -> Path:
    """Write a model folder (weights, processor, config, scores, log, loss curve) atomically; ``then(staging)``
    adds more before the folder is moved into place."""
    staging = staging_folder(output)
    model.save_pretrained(staging, safe_serialization=True)
    processor.save_pretrained(staging)
    config.save(staging / CONFIG_NAME)
    (staging / METRICS_NAME).write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    (staging / HISTORY_NAME).write_text(json.dumps(history, indent=2) + "\n")
    draw_loss_curve([(h["step"], h["loss"]) for h in history], (), staging / LOSS_CURVE_NAME, title=title)
    write_marker(staging, "fine_tuned_model")
    if then is not None:
        then(staging)
    logger.info("Writing %s", output)
    return publish_folder(staging, output)
