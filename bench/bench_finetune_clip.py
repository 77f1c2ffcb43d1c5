"""LoRA or last layers? CLIP fine-tuning on the coloured-shapes pairs, both methods, same budget.

A tiny random-init CLIP (initializer_range 0.2) is fine-tuned on 144 shape images with captions
("a red circle"; 12 distinct captions) and scored on 24 held-out ones: text-to-image recall@1
(chance 1/12) after each number of steps, per method and seed, plus the trainable weights and
the time. The default of ``finetune clip --method`` was chosen from this table.

    python bench/bench_finetune_clip.py --steps 100 200 300 --seeds 42 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from finetune.clip import train_clip  # noqa: E402
from tests.shape_pairs import write_shape_pairs  # noqa: E402
from tests.tool_models import build_clip  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 200, 300])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1])
    parser.add_argument("--methods", nargs="+", default=["lora", "last-layers"])
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-clip-"))
    train = write_shape_pairs(work, 144, 0, "train")
    test = write_shape_pairs(work, 24, 1, "test", fmt="jsonl")
    model = build_clip(work / "clip", initializer_range=0.2)
    for method in args.methods:
        for steps in args.steps:
            for seed in args.seeds:
                started = time.perf_counter()
                result = train_clip(pairs=str(train), eval_pairs=str(test), model=str(model), output=str(work / "out"),
                                    method=method, max_steps=steps, batch_size=32, learning_rate=args.learning_rate,
                                    seed=seed, progress=False, overwrite=True)
                row = {"method": method, "steps": steps, "seed": seed, "recall@1": round(result.after["recall@1"], 3),
                       "before": round(result.before["recall@1"], 3), "trainable": result.trainable_parameters,
                       "loss": round(result.train_loss, 3), "seconds": round(time.perf_counter() - started, 1)}
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
