"""``PairTrainConfig``: the options of ``finetune clip`` and ``finetune caption``, checked when built.

Each field carries its help text in ``metadata["help"]`` (the CLI builds its options from it);
bad values are refused with a message quoting them. The resolved config is saved with the model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.core.errors import ConfigError
from agent.core.files import atomic_write_text

CLIP_METHODS = ("lora", "last-layers")
DEFAULT_CLIP_METHOD = "lora"
"""Chosen by measurement on the coloured-shapes task (README, *Fine-tune CLIP*): LoRA reached the
same or a higher held-out recall@1 than training the last layers, with fewer trainable weights."""


def _field(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class PairTrainConfig:
    """One fine-tuning run on image-caption pairs (CLIP for search, BLIP for captions)."""

    pairs: str = _field("", "Image-caption pairs: a CSV/JSONL file, or a folder of images (with captions.csv/jsonl).")
    output: str = _field("", "Folder the fine-tuned model is written to (replaced atomically).")
    model: str = _field("", "Base model: hub id or local folder (default: the configured clip_model / caption_model).")
    image_folder: str | None = _field(None, "Folder image paths are relative to (default: the data file's folder).")
    eval_pairs: str | None = _field(None, "Held-out pairs for the before/after scores (default: split off --eval-split).")
    eval_split: float = _field(0.2, "Fraction of the pairs held out when no --eval-pairs is given.")
    skip_invalid: bool = _field(False, "Leave bad rows out (and count them) instead of stopping.")
    method: str = _field(DEFAULT_CLIP_METHOD, f"CLIP only: {' or '.join(CLIP_METHODS)} (LoRA is always used for captions).")
    last_layers: int = _field(2, "With last-layers: how many final transformer layers of each encoder are trained.")
    lora_r: int = _field(16, "LoRA rank.")
    lora_alpha: int = _field(32, "LoRA scaling alpha.")
    lora_dropout: float = _field(0.0, "Dropout on the LoRA input.")
    learning_rate: float = _field(5e-4, "Peak learning rate (cosine schedule after a short warm-up).")
    weight_decay: float = _field(0.01, "AdamW weight decay.")
    epochs: float = _field(5.0, "Passes over the training pairs (ignored when --max-steps is set).")
    max_steps: int | None = _field(None, "Stop after this many optimizer steps.")
    batch_size: int = _field(32, "Pairs per step (contrastive learning likes large batches).")
    recall_k: list[int] = _field([1, 5], "k values of the held-out recall@k (CLIP).")
    max_new_tokens: int = _field(30, "Longest generated caption when scoring (captions).")
    seed: int = _field(42, "Seed of initialisation, shuffling and the held-out split.")
    device: str = _field("auto", "auto, cpu or cuda.")
    merge: bool = _field(True, "Captions: also write the merged model (usable as tools.caption_model) next to the adapter.")
    overwrite: bool = _field(False, "Replace an existing output folder.")
    progress: bool = _field(True, "Show a progress bar.")

    def __post_init__(self) -> None:
        for name in ("pairs", "output"):
            if not getattr(self, name):
                raise ConfigError(f"`{name}` is required, got {getattr(self, name)!r}")
        if self.method not in CLIP_METHODS:
            raise ConfigError(f"`method` should be one of {', '.join(CLIP_METHODS)}, got {self.method!r}")
        for name in ("last_layers", "lora_r", "lora_alpha", "batch_size", "max_new_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"`{name}` should be a positive integer, got {value!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps <= 0):
            raise ConfigError(f"`max_steps` should be a positive integer or None, got {self.max_steps!r}")
        if not 0.0 < self.eval_split < 1.0:
            raise ConfigError(f"`eval_split` should be between 0 and 1, got {self.eval_split!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"`lora_dropout` should be in [0, 1), got {self.lora_dropout!r}")
        if self.learning_rate <= 0 or self.epochs <= 0 or self.weight_decay < 0:
            raise ConfigError(
                f"learning_rate ({self.learning_rate!r}) and epochs ({self.epochs!r}) should be positive, "
                f"weight_decay ({self.weight_decay!r}) not negative"
            )
        if not self.recall_k or any(not isinstance(k, int) or k < 1 for k in self.recall_k):
            raise ConfigError(f"`recall_k` should be positive integers, got {self.recall_k!r}")
        if self.batch_size < 2:
            raise ConfigError("`batch_size` should be at least 2: contrastive learning compares pairs in a batch")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)
