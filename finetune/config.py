"""``TrainConfig``: every option of a fine-tuning run, documented and checked when it is built.

Each field carries its help text in ``metadata["help"]`` (the CLI builds its options from it),
and ``__post_init__`` rejects bad values with a message that quotes them, so a run never starts
with a setting that would fail an hour later. The resolved config is saved next to the adapter.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.core.errors import ConfigError
from agent.core.files import atomic_write_text

QUANTIZATIONS = ("auto", "4bit", "none")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
FORMAT_CHOICES = ("auto", "llava", "sharegpt", "messages", "hf")


def _field(default: Any, help: str, **kwargs: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    """Options of one LoRA/QLoRA fine-tuning run (see each field's ``help``)."""

    model: str = _field("", "Base model: a Hub id or local folder of a LLaVA-family checkpoint.")
    data: str = _field("", "Training data: a .json/.jsonl file or a datasets folder.")
    output_dir: str = _field("", "Where the adapter (and checkpoints/) are written.")
    image_folder: str | None = _field(
        None, "Folder image paths in the data are relative to; images outside it are refused (default: the current folder)."
    )
    format: str = _field("auto", f"Dataset format, one of {', '.join(FORMAT_CHOICES)}.")
    eval_data: str | None = _field(None, "Held-out data for evaluation loss (same format rules).")
    eval_split: float = _field(0.0, "Fraction of the training data held out for evaluation loss when no eval_data.")
    skip_invalid: bool = _field(False, "Leave out invalid samples (and count them) instead of stopping.")

    quantization: str = _field("auto", "auto: 4-bit NF4 base (QLoRA) on CUDA, none (LoRA) on CPU; or 4bit, none.")
    dtype: str = _field("auto", "Compute dtype: auto (bfloat16 on CUDA and on CPUs with native bf16, else float32), or explicit.")
    device: str = _field("auto", "auto, cpu or cuda.")

    lora_r: int = _field(16, "LoRA rank.")
    lora_alpha: int = _field(32, "LoRA scaling alpha.")
    lora_dropout: float = _field(0.05, "Dropout on the LoRA input.")
    target_modules: list[str] | None = _field(
        None, "Names of language-model linear layers to adapt (e.g. q_proj v_proj); default all of them."
    )
    train_projector: bool = _field(False, "Also train the multimodal projector (saved in full with the adapter).")

    learning_rate: float = _field(2e-4, "Peak learning rate.")
    lr_scheduler: str = _field("cosine", f"Schedule, one of {', '.join(SCHEDULERS)}.")
    warmup_ratio: float = _field(0.03, "Fraction of the steps spent warming up the learning rate.")
    weight_decay: float = _field(0.0, "AdamW weight decay.")
    epochs: float = _field(1.0, "Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = _field(None, "Stop after this many optimizer steps.")
    batch_size: int = _field(4, "Samples per device per step.")
    gradient_accumulation_steps: int = _field(1, "Steps whose gradients are summed before each update.")
    max_length: int = _field(2048, "Longest sample in tokens, image tokens included; longer ones are invalid.")
    max_image_pixels: int = _field(50_000_000, "Largest image (width x height) in the data; larger ones are invalid.")
    seed: int = _field(42, "Seed of initialisation, shuffling and dropout.")
    gradient_checkpointing: bool | None = _field(None, "Recompute activations to save memory; default on for 4-bit.")
    optimizer: str | None = _field(None, "transformers optim name; default paged_adamw_8bit for 4-bit CUDA, else adamw_torch.")

    save_steps: int = _field(100, "Save a checkpoint every N optimizer steps.")
    save_total_limit: int | None = _field(3, "Checkpoints kept (older ones deleted).")
    logging_steps: int = _field(10, "Log the loss every N steps.")
    eval_steps: int | None = _field(None, "Evaluate every N steps (default: at save steps).")
    resume: bool = _field(False, "Continue from the last complete checkpoint in output_dir/checkpoints.")
    overwrite: bool = _field(False, "Replace an existing adapter in output_dir.")

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):  # NaN and infinities are never a setting
            value = getattr(self, spec.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"`{spec.name}` should be a finite number, got {value!r}")
        for name in ("model", "data", "output_dir"):
            if not getattr(self, name):
                raise ConfigError(f"`{name}` is required, got {getattr(self, name)!r}")
        choices = {
            "format": FORMAT_CHOICES,
            "quantization": QUANTIZATIONS,
            "dtype": DTYPES,
            "device": DEVICES,
            "lr_scheduler": SCHEDULERS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"`{name}` should be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        positive = ("lora_r", "lora_alpha", "batch_size", "gradient_accumulation_steps", "max_length")
        positive += ("save_steps", "logging_steps", "max_image_pixels")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"`{name}` should be a positive integer, got {value!r}")
        for name in ("max_steps", "eval_steps", "save_total_limit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ConfigError(f"`{name}` should be a positive integer or None, got {value!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"`lora_dropout` should be in [0, 1), got {self.lora_dropout!r}")
        if not 0.0 <= self.eval_split < 1.0:
            raise ConfigError(f"`eval_split` should be in [0, 1), got {self.eval_split!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"`warmup_ratio` should be in [0, 1), got {self.warmup_ratio!r}")
        if self.learning_rate <= 0:
            raise ConfigError(f"`learning_rate` should be positive, got {self.learning_rate!r}")
        if self.epochs <= 0:
            raise ConfigError(f"`epochs` should be positive, got {self.epochs!r}")
        if self.target_modules is not None and (
            not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules)
        ):
            raise ConfigError(f"`target_modules` should be a non-empty list of layer names, got {self.target_modules!r}")
        if self.eval_data is not None and self.eval_split:
            raise ConfigError("set either `eval_data` or `eval_split`, not both")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown training options {unknown}; known ones are {sorted(known)}")
        return cls(**data)
