"""How often int8 weights (and bf16, NF4) pick the same next token as fp32, on real text through a real model.

Each precision loads ``--model`` (a LLaVA folder, e.g. the tests' SmolLM2-135M-Instruct checkpoint:
``python tests/real_model.py`` prints its path) through ``ChatLlava``'s loading path and reads
this repository's README and architecture notes 16 tokens per pass with a cache, so the int8
layers run their decode kernel (:data:`agent.core.int8_weights.KERNEL_ROWS`); at each position
the top token is compared with fp32's.

    python bench/bench_weights_agreement.py --model "$(python tests/real_model.py)" --tokens 2048
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRECISIONS = (("none", "none", "float32"), ("bf16", "none", "bfloat16"),
              ("int8-weights", "int8-weights", "float32"), ("4bit", "4bit", "float32"))
"""(label, quantization, dtype); the first is the reference."""


def top_tokens(model: str, quantization: str, dtype: str, text: str, tokens: int):
    """The top next token at each of the first ``tokens`` positions of ``text``."""
    import torch
    from transformers import DynamicCache

    from agent.core.int8_weights import KERNEL_ROWS
    from agent.core.model_manager import get_model_manager
    from agent.llava.loading import load_model, resolve_spec

    loaded = load_model(resolve_spec(model, quantization=quantization, dtype=dtype, device="cpu"))
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"][0][:tokens]
    language_model, head = loaded.model.model.language_model, loaded.model.lm_head
    chosen = []
    with torch.inference_mode():
        for begin in range(0, len(ids), 512):  # a fresh cache every 512 tokens bounds the work
            cache = DynamicCache()
            for start in range(begin, min(begin + 512, len(ids)), KERNEL_ROWS):
                piece = ids[start : min(start + KERNEL_ROWS, begin + 512, len(ids))][None]
                hidden = language_model(input_ids=piece, past_key_values=cache, use_cache=True).last_hidden_state
                chosen.append(head(hidden)[0].float().argmax(-1))
    get_model_manager().clear()
    return torch.cat(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a LLaVA folder whose language model is pretrained")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--output", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args()

    text = "\n".join((ROOT / p).read_text() for p in ("README.md", "docs/architecture.md"))
    reference = None
    report: dict = {}
    for label, quantization, dtype in PRECISIONS:
        started = time.perf_counter()
        tops = top_tokens(str(args.model), quantization, dtype, text, args.tokens)
        seconds = time.perf_counter() - started
        if reference is None:
            reference = tops
            continue
        agree, total = int((tops == reference).sum()), len(reference)
        report[label] = {"tokens": total, "top1_agreement": agree / total, "seconds": round(seconds, 1)}
        print(f"{label}: top-1 agreement with fp32 {agree}/{total} = {agree / total:.4f} ({seconds:.1f} s)", flush=True)
    if args.output:
        args.output.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
