"""Benchmark ChatLlava against plain ``transformers`` generate on the same weights, in the same run.

A random-weight checkpoint with a real architecture is built from its config and saved to a temp
folder, loaded once through ``ChatLlava`` (the users' path), and then driven two ways:

* ``ChatLlava.stream`` (messages -> template -> processor -> generate thread -> text chunks);
* plain ``model.generate`` on the same rendered prompt, with a streamer that timestamps tokens.

Reported per path: time to first token (text only, and with one image) and decode tokens/s
(tokens after the first, over the time after the first). Plus ``import agent`` time and whether
it imported torch.

Sizes:

* ``0.5b`` (CPU default): llava-interleave-qwen-0.5b -- Qwen2-0.5B text model (hidden 896, 24
  layers, 14 heads, 2 KV heads, intermediate 4864, vocab 151646) and a SigLIP-so400m vision tower
  (hidden 1152, 26 layers, 384 px, patch 14 -> 729 image tokens).
* ``7b`` (GPU): llava-1.5-7b -- Llama-7B text model (hidden 4096, 32 layers, vocab 32064) and a
  CLIP ViT-L/14-336 vision tower (576 image tokens).

The tokenizer is a small trained one; the embedding and ``lm_head`` keep the real vocabulary size
so their cost is real, and ``lm_head`` rows outside the small tokenizer are zeroed (and the kept
rows scaled up) so the greedy reply is always decodable text of the full requested length.

    python bench/bench_chat_model.py                      # CPU, 0.5b, bf16
    python bench/bench_chat_model.py --device cuda --size 7b
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MAIN_THREAD = "plain (main thr)"
PROMPT = "Describe what you see and tell me a short story about a red circle meeting a blue square."


def measure_import() -> tuple[float, bool]:
    code = (
        "import sys, time; t = time.perf_counter(); import agent; "
        "print(time.perf_counter() - t, 'torch' in sys.modules)"
    )
    runs = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        seconds, torch_loaded = out.stdout.split()
        runs.append((float(seconds), torch_loaded == "True"))
    return min(r[0] for r in runs), any(r[1] for r in runs)


def build_checkpoint(folder: Path, size: str, init_device: str = "cpu") -> Path:
    """Write a random checkpoint of ``size`` under ``folder``; ``init_device="cuda"`` draws the weights on a GPU."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    from tests.tiny_models import build_tiny_llava

    family = "qwen2" if size == "0.5b" else "llama"
    tiny = build_tiny_llava(folder / "tiny", family)  # for its trained tokenizer and template
    tiny_processor = LlavaProcessor.from_pretrained(tiny)
    tokenizer = tiny_processor.tokenizer
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    common = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if size == "0.5b":
        text = Qwen2Config(
            vocab_size=151646, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
            num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
            rope_theta=1_000_000.0, tie_word_embeddings=False, **common,
        )  # fmt: skip
        vision = SiglipVisionConfig(
            hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
            image_size=384, patch_size=14,
        )  # fmt: skip
        config = LlavaConfig(
            vision_config=vision, text_config=text, image_token_index=image_token_id, image_seq_length=729,
            vision_feature_select_strategy="full", vision_feature_layer=-1, projector_hidden_act="gelu",
        )  # fmt: skip
        image_processor = SiglipImageProcessor(size={"height": 384, "width": 384})
        processor_kwargs = dict(
            patch_size=14, vision_feature_select_strategy="full", num_additional_image_tokens=0
        )
    else:
        text = LlamaConfig(
            vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, **common,
        )  # fmt: skip
        vision = CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
            image_size=336, patch_size=14, projection_dim=768,
        )  # fmt: skip
        config = LlavaConfig(
            vision_config=vision, text_config=text, image_token_index=image_token_id, image_seq_length=576,
            vision_feature_select_strategy="default", vision_feature_layer=-2,
        )  # fmt: skip
        from transformers import CLIPImageProcessor

        image_processor = CLIPImageProcessor(
            size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_center_crop=True
        )
        processor_kwargs = dict(
            patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1
        )

    print(f"building a random {size} LLaVA ({family}) ...", flush=True)
    torch.manual_seed(0)
    with torch.device(init_device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        # Keep greedy decoding inside the small tokenizer, on tokens that decode to plain text.
        weight = model.lm_head.weight
        keep = [
            i
            for i in range(len(tokenizer))
            if i not in tokenizer.all_special_ids and (s := tokenizer.decode([i])).isascii() and s.strip()
        ]
        mask = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
        mask[keep] = True
        weight[~mask] = 0
        weight[mask] *= 50
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    target = folder / f"llava-random-{size}"
    model.save_pretrained(target, safe_serialization=True)
    del model
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=tiny_processor.chat_template,
        **processor_kwargs,
    )
    processor.save_pretrained(target)
    return target


class TimingStreamer:
    """Records when each generated token arrives (the first put() is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.extend([time.perf_counter()] * int(value.numel()))

    def end(self) -> None:
        pass


def run_plain(llm, messages, max_new_tokens: int, in_thread: bool = True) -> tuple[float, float, int]:
    """Plain generate on the rendered prompt; ``in_thread`` runs it in a worker thread, as ChatLlava does."""
    import torch

    from agent.llava.messages import messages_to_turns
    from agent.llava.prompting import render_prompt

    loaded = llm.loaded
    turns = messages_to_turns(messages)
    started = time.perf_counter()
    # what a hand-written transformers script does: template, processor, generate
    rendered = render_prompt(loaded.processor, turns, config=loaded.config)
    inputs = loaded.processor(text=[rendered.text], images=rendered.images or None, return_tensors="pt")
    inputs = inputs.to(loaded.input_device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(loaded.model.dtype)
    streamer = TimingStreamer()

    def generate() -> None:
        with torch.inference_mode():
            loaded.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                streamer=streamer,
                pad_token_id=loaded.tokenizer.pad_token_id,
            )

    if in_thread:
        worker = threading.Thread(target=generate)
        worker.start()
        worker.join()
    else:
        generate()
    _sync(llm)
    times = streamer.times
    return times[0] - started, (len(times) - 1) / (times[-1] - times[0]), len(times)


def run_chat(llm, messages, max_new_tokens: int) -> tuple[float, float, int]:
    started = time.perf_counter()
    first = last = None
    tokens = 0
    for chunk in llm.stream(messages, max_tokens=max_new_tokens):
        now = time.perf_counter()
        if chunk.content and first is None:
            first = now
        if chunk.content:
            last = now
        if chunk.usage_metadata:
            tokens = chunk.usage_metadata["output_tokens"]
    assert first is not None and last is not None and last > first, "no streamed text"
    # the first chunk carries the first token; the last text chunk the last decodable one
    return first - started, (tokens - 1) / (last - first), tokens


def _sync(llm) -> None:
    if llm.spec.device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--size", choices=["0.5b", "7b"], default=None, help="default: 0.5b on CPU, 7b on CUDA"
    )
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--quantization", default="auto")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-dir", type=Path, default=None, help="reuse a checkpoint built earlier")
    parser.add_argument(
        "--plain-main-thread",
        action="store_true",
        help="also time plain generate called from the main thread (the reference runs it in a worker "
        "thread, as ChatLlava does, so that only ChatLlava's own overhead is compared)",
    )
    args = parser.parse_args()
    size = args.size or ("7b" if args.device.startswith("cuda") else "0.5b")

    import_seconds, torch_imported = measure_import()

    from langchain_core.messages import HumanMessage
    from PIL import Image

    from agent import ChatLlava

    workdir = Path(tempfile.mkdtemp(prefix="bench-llava-"))
    folder = args.model_dir or build_checkpoint(workdir, size)
    llm = ChatLlava(
        model=str(folder),
        device=args.device,
        dtype=args.dtype,
        quantization=args.quantization,
        temperature=0.0,
    )
    started = time.perf_counter()
    llm.loaded  # noqa: B018 - load once, outside the timings
    print(f"loaded {folder} ({llm.spec.quantization}, {llm.spec.dtype}, {llm.spec.device}) in "
          f"{time.perf_counter() - started:.1f}s", flush=True)  # fmt: skip
    image = Image.effect_noise((500, 400), 60).convert("RGB")
    cases = {
        "text": [HumanMessage(PROMPT)],
        "image": [
            HumanMessage(content=[{"type": "image", "image": image}, {"type": "text", "text": PROMPT}])
        ],
    }
    results: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    for case, messages in cases.items():
        run_chat(llm, messages, 4)  # warm-up: first-call allocations, thread pools
        run_plain(llm, messages, 4)
        for _ in range(args.repeats):  # interleaved so all paths see the same machine load
            results.setdefault(("plain generate", case), []).append(
                run_plain(llm, messages, args.max_new_tokens)
            )
            results.setdefault(("ChatLlava", case), []).append(run_chat(llm, messages, args.max_new_tokens))
            if args.plain_main_thread:
                results.setdefault((MAIN_THREAD, case), []).append(
                    run_plain(llm, messages, args.max_new_tokens, in_thread=False)
                )

    def median(path: str, case: str, index: int) -> float:
        return statistics.median(r[index] for r in results[(path, case)])

    print()
    print(f"device={llm.spec.device} size={size} dtype={llm.spec.dtype} quantization={llm.spec.quantization} "
          f"max_new_tokens={args.max_new_tokens} repeats={args.repeats} (medians)")  # fmt: skip
    header = f"| {'path':<15} | {'TTFT text (s)':>13} | {'TTFT image (s)':>14} | {'decode tok/s':>12} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    paths = ["plain generate", "ChatLlava"] + ([MAIN_THREAD] if args.plain_main_thread else [])
    for path in paths:
        decode = statistics.median([r[1] for case in cases for r in results[(path, case)]])
        print(
            f"| {path:<15} | {median(path, 'text', 0):>13.3f} | {median(path, 'image', 0):>14.3f} | {decode:>12.2f} |"
        )
    chat_decode = statistics.median([r[1] for case in cases for r in results[("ChatLlava", case)]])
    plain_decode = statistics.median([r[1] for case in cases for r in results[("plain generate", case)]])
    print()
    print(f"ChatLlava decode rate: {100 * chat_decode / plain_decode:.1f}% of plain generate (target >= 95%)")
    for case in cases:
        overhead = median("ChatLlava", case, 0) / median("plain generate", case, 0) - 1
        print(f"ChatLlava TTFT overhead ({case}): {100 * overhead:+.1f}% (target <= 5%)")
    print(
        f"import agent: {import_seconds * 1000:.0f} ms, torch imported: {torch_imported} (target < 500 ms, False)"
    )


if __name__ == "__main__":
    main()
