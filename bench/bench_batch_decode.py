"""Does batched decoding pay on this machine? Decode throughput at batch 1, 2 and 4, same weights, same run.

The server (``llava-agent serve``) runs one request at a time through a fair queue. Batching
several requests into one ``generate`` would only be worth its cost (left padding, per-request
constraints, stop sequences and cancellation inside one batch) if the total decode rate grows
with the batch. This measures exactly that on the random-weight llava-interleave-0.5b-sized
checkpoint of ``bench/bench_chat_model.py``, loaded through ``ChatLlava`` (in the precision ``auto``
picks on this CPU, as the server loads it): for each batch size, ``generate`` on B different text prompts (left
padded), greedy, exactly ``--new-tokens`` new tokens each, timed from the first new token to the
last. Reported: total decode tokens/s and tokens/s per sequence, and tokens per CPU-second of
this process (steadier than wall time on a machine shared with other work), medians of
``--repeats``.

    HF_HUB_OFFLINE=1 python bench/bench_batch_decode.py --model-dir /tmp/llava-random-0.5b
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "Describe a red circle meeting a blue square.",
    "Tell me a short story about a cat on a mat.",
    "What colour is the sky at sunset over the sea?",
    "Write a few words about a dog in the park today.",
]


class _Timestamps:
    """Wall and process CPU time at each step: on a shared machine CPU time per token is the steadier measure."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def end(self) -> None:
        pass


def decode_rate(loaded, batch: int, new_tokens: int) -> tuple[float, float]:
    """(total new tokens per wall second, per CPU second) after the first step, for one generate() on ``batch`` prompts."""
    import torch

    from agent.llava.prompting import render_prompt

    tokenizer = loaded.tokenizer
    tokenizer.padding_side = "left"
    texts = [
        render_prompt(loaded.processor, [{"role": "user", "content": [{"type": "text", "text": p}]}],
                      config=loaded.config).text
        for p in (PROMPTS * batch)[:batch]
    ]  # fmt: skip
    inputs = tokenizer(texts, return_tensors="pt", padding=True).to(loaded.input_device)
    streamer = _Timestamps()
    with torch.inference_mode():
        loaded.model.generate(
            **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            temperature=None, top_p=None, top_k=None, streamer=streamer, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    steps, cpu = streamer.times, streamer.cpu
    tokens = batch * (len(steps) - 1)
    return tokens / (steps[-1] - steps[0]), tokens / (cpu[-1] - cpu[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=None, help="a checkpoint from bench_chat_model (built if absent)")
    parser.add_argument("--quantization", default="auto")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from agent import ChatLlava
    from bench.bench_chat_model import build_checkpoint

    folder = args.model_dir
    if folder is None or not (folder / "config.json").exists():
        folder = build_checkpoint(Path(tempfile.mkdtemp(prefix="bench-batch-")) if folder is None else folder.parent,
                                  "0.5b")  # fmt: skip
    llm = ChatLlava(model=str(folder), device="cpu", quantization=args.quantization, temperature=0.0)
    loaded = llm.loaded
    print(f"loaded {folder} ({llm.spec.quantization}, {llm.spec.dtype}); torch threads: "
          f"{__import__('torch').get_num_threads()}", flush=True)  # fmt: skip
    decode_rate(loaded, 1, 4)  # warm-up
    rates: dict[int, list[tuple[float, float]]] = {b: [] for b in args.batches}
    for _ in range(args.repeats):  # interleaved, so every batch size sees the same machine load
        for batch in args.batches:
            rates[batch].append(decode_rate(loaded, batch, args.new_tokens))
    wall = {b: statistics.median(r[0] for r in rates[b]) for b in args.batches}
    cpu = {b: statistics.median(r[1] for r in rates[b]) for b in args.batches}
    first = args.batches[0]
    print(f"\n| batch | total decode tok/s (wall) | per sequence tok/s | tokens per CPU-second | vs batch {first} "
          "(wall, CPU) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for batch in args.batches:
        print(f"| {batch} | {wall[batch]:.2f} | {wall[batch] / batch:.2f} | {cpu[batch]:.2f} | "
              f"{wall[batch] / wall[first]:.2f}x, {cpu[batch] / cpu[first]:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
