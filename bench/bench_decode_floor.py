"""How fast can one decode step be on this machine? Bytes per token, memory bandwidth, and the kernels alone.

A batch-1 decode step reads every weight of the language model once, the head (or its quantized
copy) once and the keys/values of the whole context once. This script loads a checkpoint the way
``ChatLlava`` does (``quantization`` as the chat model takes it; the decode loop's head copy
built), counts those bytes, measures what this machine's cores read per second, and times the
step's matrix multiplies alone (each language-model linear layer and the head copy with one
position, as a decode step calls them). So it prints three numbers to set beside a measured
decode rate (``bench/bench_turns.py --decode-variants``):

* the **bandwidth ceiling**: bytes per token / the best read rate, the rate no kernel can pass;
* the **kernels-only rate**: what the step would reach with no other work (attention, norms,
  Python) -- how far the kernels themselves are from the ceiling;
* the gap to the measured step is everything else.

Usage::

    python bench/bench_decode_floor.py --model-dir <checkpoint> [--context 3089] [--quantization auto]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def read_rate(threads: int, mib: int = 512, repeats: int = 5) -> float:
    """Best bytes/s of summing a ``mib`` MiB float32 tensor (a streaming read) with ``threads`` threads."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
        best = 0.0
        for _ in range(repeats):
            started = time.perf_counter()
            data.sum()
            best = max(best, data.numel() * 4 / (time.perf_counter() - started))
        return best
    finally:
        torch.set_num_threads(previous)


def median_ms(call, repeats: int) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def step_inventory(llm, context: int) -> dict:
    """Bytes one decode step reads, by part, and the modules whose kernels it calls."""
    import torch

    from agent.core.int8_weights import SKIPPED_PARTS
    from agent.llava.decode_setup import DecodeSettings, model_parts, prepare_decoding
    from agent.llava.output_head import loaded_head, resolve_head_mode

    loaded = llm.loaded
    settings = DecodeSettings(lm_head=llm.lm_head)
    prepare_decoding(loaded, settings)
    parts = model_parts(loaded.model)
    if isinstance(parts, str):
        raise SystemExit(f"the decode loop cannot drive this model: {parts}")
    head = loaded_head(loaded, parts.head, resolve_head_mode(settings.lm_head, parts.head.weight.device))
    layers = []
    body = 0
    for name, module in parts.language_model.named_modules():
        if any(part in name for part in SKIPPED_PARTS) or not name:
            continue
        tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if not tensors:
            continue
        size = sum(t.numel() * t.element_size() for t in tensors)
        if "embed_tokens" in name or "rotary_emb" in name:
            continue  # one row read per token; the rotary frequencies (a few floats)
        body += size
        if hasattr(module, "in_features"):
            layers.append(module)
    config = parts.text_config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    cache_dtype = loaded.model.dtype
    kv = (config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * context
          * torch.empty((), dtype=cache_dtype).element_size())
    head_bytes = head.extra_bytes if head.quantized else parts.head.weight.numel() * parts.head.weight.element_size()
    return {"layers": layers, "head": head, "hidden": config.hidden_size, "body_bytes": body,
            "head_bytes": head_bytes, "head_precision": head.precision, "kv_bytes": kv,
            "kv_dtype": str(cache_dtype).removeprefix("torch.")}


def kernels_ms(inventory: dict, repeats: int) -> dict:
    """Median time of one position through every language-model linear layer, and through the head."""
    import torch

    hidden = inventory["hidden"]
    with torch.inference_mode():
        inputs = {module.in_features: torch.randn(1, 1, module.in_features) for module in inventory["layers"]}

        def body() -> None:
            for module in inventory["layers"]:
                module(inputs[module.in_features])

        state = torch.randn(1, hidden)
        head = inventory["head"]
        body_ms = median_ms(body, repeats)
        head_ms = median_ms(lambda: head.screen(state) if head.quantized else head.full(state), repeats)
    return {"body_ms": body_ms, "head_ms": head_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="a LLaVA checkpoint folder")
    parser.add_argument("--context", type=int, default=3089, help="positions whose keys/values a step reads")
    parser.add_argument("--quantization", default="auto")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args()

    import torch

    from agent import ChatLlava

    llm = ChatLlava(model=str(args.model_dir), device="cpu", quantization=args.quantization)
    inventory = step_inventory(llm, args.context)
    threads = torch.get_num_threads()
    rates = {n: read_rate(n) for n in sorted({1, threads})}
    best = max(rates.values())
    timed = kernels_ms(inventory, args.repeats)
    total = inventory["body_bytes"] + inventory["head_bytes"] + inventory["kv_bytes"]
    weights = inventory["body_bytes"] + inventory["head_bytes"]
    report = {
        "quantization": llm.spec.quantization,
        "head": inventory["head_precision"],
        "threads": threads,
        "read_gb_s": {str(n): round(r / 1e9, 2) for n, r in rates.items()},
        "body_mb": round(inventory["body_bytes"] / 1e6, 1),
        "head_mb": round(inventory["head_bytes"] / 1e6, 1),
        "kv_mb": round(inventory["kv_bytes"] / 1e6, 1),
        "kv_dtype": inventory["kv_dtype"],
        "body_bytes": inventory["body_bytes"],
        "head_bytes": inventory["head_bytes"],
        "kv_bytes": inventory["kv_bytes"],
        "context": args.context,
        "ceiling_tok_s": round(best / total, 1),
        "body_ms": round(timed["body_ms"], 2),
        "head_ms": round(timed["head_ms"], 2),
        "kernel_gb_s": round(weights / ((timed["body_ms"] + timed["head_ms"]) / 1e3) / 1e9, 2),
        "kernels_only_tok_s": round(1e3 / (timed["body_ms"] + timed["head_ms"]), 1),
    }
    print(f"{args.model_dir} ({report['quantization']} weights, {report['head']} head copy, {threads} threads)")
    print("read rate: " + ", ".join(f"{n} thread(s) {r} GB/s" for n, r in report["read_gb_s"].items()))
    print(f"bytes per token: language model {report['body_mb']} MB + head {report['head_mb']} MB + "
          f"keys/values of {args.context} positions {report['kv_mb']} MB ({report['kv_dtype']})")
    print(f"bandwidth ceiling: {report['ceiling_tok_s']} tok/s")
    print(f"kernels alone: language model {report['body_ms']} ms + head {report['head_ms']} ms per token "
          f"({report['kernel_gb_s']} GB/s) = {report['kernels_only_tok_s']} tok/s without attention or anything else")
    if args.output:
        args.output.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
