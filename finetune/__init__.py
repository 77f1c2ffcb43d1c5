"""Fine-tuning: LoRA/QLoRA adapters trained on your own instruction data.

Importing this package is cheap; torch, transformers and peft load only when a function runs.

    import finetune
    report = finetune.validate("data.json", image_folder="images")
    result = finetune.train(model="llava-hf/llava-interleave-qwen-0.5b-hf", data="data.json",
                            image_folder="images", output_dir="adapters/mine")
    finetune.merge("adapters/mine", "models/mine")
    finetune.evaluate("held_out.json", model="llava-hf/llava-interleave-qwen-0.5b-hf",
                      adapter="adapters/mine", image_folder="images")
    finetune.train_clip(pairs="photos/captions.csv", output="models/my-clip")        # image search
    finetune.train_caption(pairs="photos/captions.csv", output="adapters/my-captions")  # captions
"""

from __future__ import annotations

from finetune.caption import train_caption
from finetune.clip import PairTrainResult, train_clip

# The functions share their modules' names; binding them here (the modules import nothing heavy
# at top level) keeps ``finetune.train`` the function even after ``import finetune.train``.
from finetune.collator import ConversationEncoder, TrainingCollator
from finetune.config import TrainConfig
from finetune.evaluate import EvalResult, evaluate
from finetune.formats import Sample
from finetune.merge import merge
from finetune.pair_config import PairTrainConfig
from finetune.train import TrainResult, train
from finetune.validate import ValidationReport, validate

__all__ = [
    "ConversationEncoder",
    "EvalResult",
    "PairTrainConfig",
    "PairTrainResult",
    "Sample",
    "TrainConfig",
    "TrainResult",
    "TrainingCollator",
    "ValidationReport",
    "evaluate",
    "merge",
    "train",
    "train_caption",
    "train_clip",
    "validate",
]
