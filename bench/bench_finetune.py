"""Fine-tuning throughput and peak memory: ``finetune.train`` against a plain Trainer + peft loop.

Both variants train the same LoRA (r=16 on every language-model linear layer) on the same
synthetic data (one image and about ``--seq-len`` tokens per sample) for the same number of
steps, each in its own process so that peak memory (RSS, and GPU memory on CUDA) is its own.

* ``ours``: ``finetune.train`` (validation, assistant-only labels through ``render_prompt``,
  the atomic save, the loss curve...).
* ``plain``: the loop people write by hand: ``apply_chat_template`` + the processor, labels =
  input ids, ``get_peft_model`` and ``Trainer``.

Like with like: ``--dtype auto`` is resolved once, the way ``finetune.train`` resolves it
(bf16 on CUDA and on CPUs with native bf16, else float32), and both variants load and train
the model in that one dtype; each row prints the dtype its model's weights really had.

Model sizes (random weights, built here and saved with ``save_pretrained``, loaded back through
``from_pretrained``):

* ``0.5b``: Qwen2-0.5B text dimensions (hidden 896, 24 layers, 14 heads, 2 KV heads,
  intermediate 4864, vocab 151646, tied embeddings) with a CLIP ViT-B/32 vision tower at 224 px
  (49 image tokens per image);
* ``7b``: Llama-2-7B text dimensions (hidden 4096, 32 layers, 32 heads, intermediate 11008,
  vocab 32064) with a CLIP ViT-L/14 tower at 336 px (576 image tokens), as llava-1.5-7b; meant
  for ``--device cuda`` (QLoRA: the base in 4-bit NF4);
* ``tiny``: the test-suite model, for a quick check of the script itself.

    python bench/bench_finetune.py --size 0.5b --steps 4 --batch-size 1 --seq-len 256
    python bench/bench_finetune.py --device cuda --size 7b --seq-len 1024 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {
    "tiny": None,
    "0.5b": {
        "text": dict(
            model_type="qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
            intermediate_size=4864, vocab_size=151646, tie_word_embeddings=True, max_position_embeddings=32768,
        ),
        "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=224, patch_size=32, projection_dim=512),
    },
    "7b": {
        "text": dict(
            model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
            intermediate_size=11008, vocab_size=32064, tie_word_embeddings=False, max_position_embeddings=4096,
        ),
        "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=336, patch_size=14, projection_dim=768),
    },
}
WORDS = "the shape is red green blue yellow a photo of a cat sitting on a mat dog in the park quick brown fox".split()


def build_model(size: str, folder: Path) -> Path:
    """Save a random LLaVA of the given size (and a processor matching its vision tower) to ``folder``."""
    import torch
    from transformers import (
        AutoProcessor,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
    )

    from tests.tiny_models import build_tiny_llava

    family = "qwen2" if size in ("tiny", "0.5b") else "llama"
    tiny = build_tiny_llava(folder / "tiny", family)
    if size == "tiny":
        return tiny
    spec = SIZES[size]
    processor = AutoProcessor.from_pretrained(tiny)
    tokenizer = processor.tokenizer
    text = dict(spec["text"])
    text_class = Qwen2Config if text.pop("model_type") == "qwen2" else LlamaConfig
    text_config = text_class(
        **text, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    vision = spec["vision"]
    image_tokens = (vision["image_size"] // vision["patch_size"]) ** 2
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision),
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlavaForConditionalGeneration(config).to(torch.bfloat16 if size == "7b" else torch.float32)
    out = folder / f"llava-random-{size}"
    model.save_pretrained(out, safe_serialization=True)
    del model
    size_px = vision["image_size"]
    LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": size_px}, crop_size={"height": size_px, "width": size_px}, do_center_crop=True
        ),
        tokenizer=tokenizer,
        patch_size=vision["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=processor.chat_template,
    ).save_pretrained(out)
    return out


def write_data(folder: Path, count: int, seq_len: int, image_tokens: int, tokenizer) -> Path:
    """One image and about ``seq_len`` tokens per sample (answer length filled up with words)."""
    from PIL import Image

    rng = random.Random(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    budget = max(8, seq_len - image_tokens - 40)
    for index in range(count):
        colour = rng.choice([(220, 30, 30), (30, 170, 40), (30, 40, 220), (235, 215, 30)])
        Image.new("RGB", (64, 64), colour).save(folder / "images" / f"{index}.png")
        words: list[str] = []
        while len(tokenizer(" ".join(words))["input_ids"]) < budget:
            words.append(rng.choice(WORDS))
        rows.append(
            {
                "image": f"images/{index}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the image."},
                    {"from": "gpt", "value": " ".join(words[:-1])},
                ],
            }
        )
    path = folder / "data.json"
    path.write_text(json.dumps(rows))
    return path


def run_ours(args: argparse.Namespace) -> dict:
    from finetune import train

    output_dir = Path(args.workdir) / "adapter-ours"
    result = train(
        model=args.model, data=args.data, image_folder=str(Path(args.data).parent), output_dir=str(output_dir),
        overwrite=True, max_steps=args.steps, batch_size=args.batch_size, lora_r=16, lora_alpha=32,
        max_length=args.seq_len + 64, device=args.device, dtype=args.dtype, save_steps=10_000, logging_steps=1,
        quantization="4bit" if args.device == "cuda" else "none",
    )
    history = json.loads((output_dir / "log_history.json").read_text())
    runtime = next(entry["train_runtime"] for entry in history if "train_runtime" in entry)
    return {"runtime_s": runtime, "mean_tokens": result.data_summary["tokens_mean"], "wall_s": result.seconds,
            "dtype": result.data_summary["dtype"]}  # the dtype the model was loaded and trained in


def run_plain(args: argparse.Namespace) -> dict:
    """The hand-written loop: chat template + processor, labels = ids, peft, Trainer."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from PIL import Image
    from transformers import (
        AutoModelForImageTextToText,
        AutoProcessor,
        BitsAndBytesConfig,
        Trainer,
        TrainingArguments,
    )

    started = time.monotonic()
    processor = AutoProcessor.from_pretrained(args.model)
    rows = json.loads(Path(args.data).read_text())
    folder = Path(args.data).parent
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]  # resolved by the parent
    kwargs = {}
    if args.device == "cuda":
        kwargs = {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                llm_int8_skip_modules=["model.vision_tower", "model.multi_modal_projector", "lm_head"],
            ),
            "device_map": {"": 0},
        }
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype, **kwargs)
    language_model_dtype = str(model.get_input_embeddings().weight.dtype).removeprefix("torch.")
    if args.device == "cuda":
        model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                      target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
    model = get_peft_model(model, lora)

    def collate(batch: list[dict]) -> dict:
        texts, images = [], []
        for row in batch:
            conversation = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]},
                {"role": "assistant", "content": [{"type": "text", "text": row["conversations"][1]["value"]}]},
            ]
            texts.append(processor.apply_chat_template(conversation, tokenize=False))
            images.append(Image.open(folder / row["image"]).convert("RGB"))
        features = processor(text=texts, images=images, return_tensors="pt", padding=True)
        labels = features["input_ids"].clone()
        labels[features["attention_mask"] == 0] = -100
        features["labels"] = labels
        return dict(features)

    lengths = [int(collate([row])["attention_mask"].sum()) for row in rows[:8]]
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(Path(args.workdir) / "plain"), per_device_train_batch_size=args.batch_size,
            max_steps=args.steps, learning_rate=2e-4, logging_steps=1, save_strategy="no", report_to="none",
            remove_unused_columns=False, use_cpu=args.device == "cpu",
            bf16=args.device == "cuda" and args.dtype == "bfloat16",
            optim="paged_adamw_8bit" if args.device == "cuda" else "adamw_torch",
            gradient_checkpointing=args.device == "cuda",
        ),
        train_dataset=rows,
        data_collator=collate,
    )
    metrics = trainer.train().metrics
    return {"runtime_s": metrics["train_runtime"], "mean_tokens": sum(lengths) / len(lengths),
            "wall_s": time.monotonic() - started, "dtype": language_model_dtype}


def child(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_ours(args) if args.variant == "ours" else run_plain(args)
    samples = args.steps * args.batch_size
    result.update(
        variant=args.variant,
        samples_per_s=samples / result["runtime_s"],
        tokens_per_s=samples * result["mean_tokens"] / result["runtime_s"],
        peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    )
    if args.device == "cuda":
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--variants", nargs="+", default=["ours", "plain"], choices=("ours", "plain"))
    parser.add_argument(
        "--repeats", type=int, default=1, help="Runs per variant, alternating; the fastest is kept (shared machines)"
    )
    parser.add_argument("--output", type=Path, help="Write the results as JSON here")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        child(args)
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from agent.core.runtime import resolve_training_precision

    requested_dtype = args.dtype
    args.dtype = resolve_training_precision(args.device, args.dtype, "auto").dtype  # one dtype for both variants
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        workdir = Path(tmp)
        started = time.monotonic()
        model = build_model(args.size, workdir)
        from transformers import AutoConfig, AutoProcessor

        image_tokens = AutoConfig.from_pretrained(model).image_seq_length
        data = write_data(workdir / "data", max(16, args.steps * args.batch_size), args.seq_len, image_tokens,
                          AutoProcessor.from_pretrained(model).tokenizer)
        print(f"model {args.size} built in {time.monotonic() - started:.0f} s: {model}", flush=True)
        runs: dict[str, list[dict]] = {variant: [] for variant in args.variants}
        order = [variant for repeat in range(args.repeats) for variant in (args.variants if repeat % 2 == 0 else args.variants[::-1])]
        for variant in order:
            command = [sys.executable, __file__, "--variant", variant, "--model", str(model), "--data", str(data),
                       "--workdir", str(workdir), "--device", args.device, "--dtype", args.dtype,
                       "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                       "--seq-len", str(args.seq_len), "--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if done.returncode != 0 or line is None:
                print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"{variant} failed (rc {done.returncode})")
            runs[variant].append(json.loads(line[len("RESULT "):]))
            print(f"{variant}: {runs[variant][-1]['samples_per_s']:.3f} samples/s", flush=True)
        results = []
        for attempts in runs.values():
            best = dict(min(attempts, key=lambda r: r["runtime_s"]))
            best["runs"] = len(attempts)
            best["runtime_all_s"] = [round(r["runtime_s"], 1) for r in attempts]
            results.append(best)
    print(f"\nLoRA r=16, {args.size}, {args.device}, dtype {args.dtype} (--dtype {requested_dtype}), "
          f"{args.steps} steps x batch {args.batch_size}, ~{args.seq_len} tokens/sample")
    print(f"{'variant':8} {'dtype':9} {'samples/s':>10} {'tokens/s':>10} {'peak RSS GiB':>13} {'train s':>8} {'wall s':>7}"
          "  runs (train s)")
    for r in results:
        if r["dtype"] != args.dtype:
            raise SystemExit(f"{r['variant']} trained in {r['dtype']}, not {args.dtype}: not a like-for-like comparison")
        print(f"{r['variant']:8} {r['dtype']:9} {r['samples_per_s']:10.3f} {r['tokens_per_s']:10.1f} {r['peak_rss_gib']:13.2f} "
              f"{r['runtime_s']:8.1f} {r['wall_s']:7.1f}  {r['runtime_all_s']}" + (f"  peak GPU {r['peak_gpu_gib']:.2f} GiB" if "peak_gpu_gib" in r else ""))
    if args.output:
        args.output.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2))


if __name__ == "__main__":
    main()
