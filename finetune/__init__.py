"""Fine-tuning: LoRA/QLoRA adapters trained on your own instruction data.

Importing this package is cheap; torch, transformers and peft load only when a function runs.

    import finetune
    report = finetune.validate("data.json", image_folder="images")
    result = finetune.train(model="llava-hf/llava-interleave-qwen-0.5b-hf", data="data.json",
                            image_folder="images", output_dir="adapters/mine")
    finetune.merge("adapters/mine", "models/mine")
    finetune.train_tool_adapter("llava-hf/llava-interleave-qwen-0.5b-hf", "adapters/tools")  # tool use
    finetune.evaluate("held_out.json", model="llava-hf/llava-interleave-qwen-0.5b-hf",
                      adapter="adapters/mine", image_folder="images")
"""

from __future__ import annotations

# The functions share their modules' names; binding them here (the modules import nothing heavy
# at top level) keeps ``finetune.train`` the function even after ``import finetune.train``.
from finetune.collator import ConversationEncoder, TrainingCollator
from finetune.config import TrainConfig
from finetune.evaluate import EvalResult, evaluate
from finetune.formats import Sample
from finetune.merge import merge
from finetune.tool_adapter import ToolAdapterResult, train_tool_adapter
from finetune.train import TrainResult, train
from finetune.validate import ValidationReport, validate

__all__ = [
    "ConversationEncoder",
    "EvalResult",
    "Sample",
    "TrainConfig",
    "TrainResult",
    "ToolAdapterResult",
    "TrainingCollator",
    "ValidationReport",
    "evaluate",
    "merge",
    "train_tool_adapter",
    "train",
    "validate",
]
