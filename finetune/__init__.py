"""Fine-tuning: LoRA/QLoRA adapters trained on your own instruction data.

Importing this package is cheap; torch, transformers and peft load only when a function runs.

    import finetune
    report = finetune.validate("data.json", image_folder="images")
    result = finetune.train(model="llava-hf/llava-interleave-qwen-0.5b-hf", data="data.json",
                            image_folder="images", output_dir="adapters/mine")
    finetune.merge(base="llava-hf/llava-interleave-qwen-0.5b-hf", adapter="adapters/mine",
                   output_dir="models/mine")
    finetune.evaluate(model="llava-hf/llava-interleave-qwen-0.5b-hf", adapter="adapters/mine",
                      data="held_out.json", image_folder="images")
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_LAZY = {
    "train": "finetune.train",
    "TrainResult": "finetune.train",
    "TrainConfig": "finetune.config",
    "validate": "finetune.validate",
    "ValidationReport": "finetune.validate",
    "merge": "finetune.merge",
    "evaluate": "finetune.evaluate",
    "EvalResult": "finetune.evaluate",
    "Sample": "finetune.formats",
    "ConversationEncoder": "finetune.collator",
    "TrainingCollator": "finetune.collator",
}

if TYPE_CHECKING:  # pragma: no cover
    from finetune.collator import ConversationEncoder, TrainingCollator
    from finetune.config import TrainConfig
    from finetune.evaluate import EvalResult, evaluate
    from finetune.formats import Sample
    from finetune.merge import merge
    from finetune.train import TrainResult, train
    from finetune.validate import ValidationReport, validate

__all__ = [
    "ConversationEncoder",
    "EvalResult",
    "Sample",
    "TrainConfig",
    "TrainResult",
    "TrainingCollator",
    "ValidationReport",
    "evaluate",
    "merge",
    "train",
    "validate",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'finetune' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
