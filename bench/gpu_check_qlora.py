"""GPU check step 4: QLoRA through ``finetune.train`` -- a run killed after its first checkpoint,
resumed and measured (samples/s, peak memory), the adapter reloaded into ``ChatLlava``, and
``finetune.merge`` refusing a base saved in 4-bit.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.gpu_check_common import (
    Context,
    allocated_gib,
    count_modules,
    noise_image,
    peak_gib,
    release_models,
    reset_peak,
    unload_chat_model,
)
from bench.gpu_check_models import image_tokens
from bench.gpu_check_report import REPO

QLORA_STEPS = 30


def step_qlora(ctx: Context, record: Any) -> None:
    release_models()
    from transformers import AutoProcessor

    from bench.bench_finetune import write_data
    from finetune.train import checkpoint_dir_for, last_complete_checkpoint

    base = ctx.assets.llava()
    seq_len = 600 if ctx.full else 48
    tokenizer = AutoProcessor.from_pretrained(base).tokenizer
    data = write_data(ctx.workdir / "qlora-data", 32, seq_len, image_tokens(ctx.size), tokenizer)
    output = ctx.workdir / "qlora-adapter"
    for stale in (output, checkpoint_dir_for(output)):  # a reused --workdir
        shutil.rmtree(stale, ignore_errors=True)
    options = {
        "model": str(base), "data": str(data), "image_folder": str(data.parent), "output_dir": str(output),
        "quantization": "4bit", "device": ctx.device, "batch_size": 1, "lora_r": 16, "lora_alpha": 32,
        "max_steps": QLORA_STEPS, "save_steps": 10, "save_total_limit": 2, "logging_steps": 1,
        "max_length": seq_len + 64, "seed": 0,
    }  # fmt: skip

    # 1. a run killed after its first complete checkpoint (a crash, an out-of-time job)
    checkpoints = checkpoint_dir_for(output)
    log_path = ctx.workdir / "qlora-interrupted.log"
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "finetune", "train", *_cli_args(options)], cwd=REPO, stdout=log,
            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), OMP_NUM_THREADS="1"),
        )  # fmt: skip
        try:
            deadline = time.monotonic() + (420 if ctx.full else 240)
            while last_complete_checkpoint(checkpoints) is None:
                if process.poll() is not None:
                    raise RuntimeError(f"the training process ended (rc {process.returncode}) before its first "
                                       f"checkpoint: {log_path.read_text()[-1500:]}")  # fmt: skip
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no checkpoint within the time limit: {log_path.read_text()[-1500:]}")
                time.sleep(0.1)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
    interrupted_at = int(last_complete_checkpoint(checkpoints).name.rsplit("-", 1)[1])
    record.metric("killed_after_checkpoint", interrupted_at)
    record.metric("seconds_to_first_checkpoint", time.perf_counter() - started, "s (process start and load included)")
    record.check("the killed run left no adapter behind", not output.exists())

    # 2. the same command with resume: measured (throughput, peak memory)
    _resume_and_measure(ctx, record, options, output, interrupted_at)
    # 3. the adapter in ChatLlava, then 4. merge refusing a base saved in 4-bit
    _reload_and_refuse_merge(ctx, record, base, output)


def _cli_args(options: dict) -> list[str]:
    return [part for key, value in options.items() for part in ("--" + key.replace("_", "-"), str(value))]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _resume_and_measure(ctx: Context, record: Any, options: dict, output: Path, interrupted_at: int) -> None:
    from finetune import train

    source = logging.getLogger("finetune.train")
    capture, level = _Capture(), source.level
    source.addHandler(capture)
    source.setLevel(logging.INFO)
    gc.collect()
    reset_peak(ctx.device)
    baseline = allocated_gib(ctx.device)
    started = time.perf_counter()
    try:
        result = train(**options, resume=True)
    finally:
        source.removeHandler(capture)
        source.setLevel(level)
    wall = time.perf_counter() - started
    peak = peak_gib(ctx.device)
    history = json.loads((output / "log_history.json").read_text())
    runtime = next(entry["train_runtime"] for entry in reversed(history) if "train_runtime" in entry)
    losses = {entry["step"]: entry["loss"] for entry in history if "loss" in entry}
    resumed_steps = QLORA_STEPS - interrupted_at
    record.check(f"the resumed run ends at step {QLORA_STEPS}", result.global_step == QLORA_STEPS,
                 f"global step {result.global_step}")  # fmt: skip
    record.check(f"it resumed from checkpoint-{interrupted_at}",
                 any(m.startswith("Resuming from") and m.endswith(f"checkpoint-{interrupted_at}") for m in capture.messages),
                 next((m for m in capture.messages if m.startswith("Resuming")), "no 'Resuming from' message"))  # fmt: skip
    record.check(f"losses of all {QLORA_STEPS} steps are kept and finite",
                 set(range(1, QLORA_STEPS + 1)) <= set(losses) and all(math.isfinite(v) for v in losses.values()),
                 f"{len(losses)} logged steps")  # fmt: skip
    record.check("the base was 4-bit during training", result.data_summary.get("quantization") == "4bit",
                 str(result.data_summary.get("quantization")))  # fmt: skip
    record.check("the adapter folder is complete", all((output / name).is_file() for name in (
        "adapter_model.safetensors", "adapter_config.json", "training_config.json", "log_history.json")))
    samples_per_s = resumed_steps * options["batch_size"] / runtime
    record.metric("resumed_steps", resumed_steps)
    record.metric("samples_per_s", samples_per_s, f"(batch {options['batch_size']}, over the resumed steps)")
    record.metric("tokens_per_sample", result.data_summary.get("tokens_mean"))
    record.metric("train_runtime_s", runtime)
    record.metric("resume_wall_s", wall, "s (model load included)")
    peak_name = "peak_gpu_gib" if ctx.device == "cuda" else "peak_rss_gib"
    record.metric(peak_name, peak, "max_memory_allocated" if ctx.device == "cuda" else "process peak RSS")
    record.metric("memory_before_gib", baseline)
    record.target("QLoRA peak GPU memory", round(peak, 2), "<= 8 GiB", peak <= 8 if ctx.full else None)
    record.headline = (f"{samples_per_s:.2f} samples/s, peak {peak:.2f} GiB "
                       f"({'max_memory_allocated' if ctx.device == 'cuda' else 'RSS'}); resumed from step "
                       f"{interrupted_at} to {result.global_step}")  # fmt: skip


def _reload_and_refuse_merge(ctx: Context, record: Any, base: Path, adapter: Path) -> None:
    import torch
    from langchain_core.messages import HumanMessage
    from peft import PeftModel

    from agent import ChatLlava
    from finetune import merge

    release_models()
    llm = ChatLlava(model=str(base), adapter=str(adapter), device=ctx.device, quantization="4bit", temperature=0.0,
                    max_tokens=8)  # fmt: skip
    started = time.perf_counter()
    loaded = llm.loaded
    record.metric("adapter_load_s", time.perf_counter() - started)
    model = loaded.model
    reply = llm.invoke([HumanMessage(content=[{"type": "image", "image": noise_image()},
                                              {"type": "text", "text": "What colour is the shape?"}])])  # fmt: skip
    lora_devices = sorted({p.device.type for n, p in model.named_parameters() if "lora_" in n})
    record.check("the adapter loads into ChatLlava over the 4-bit base",
                 isinstance(model, PeftModel) and count_modules(model, "Linear4bit") > 0,
                 f"{type(model).__name__}, {count_modules(model, 'Linear4bit')} Linear4bit layers")  # fmt: skip
    record.check(f"LoRA weights are on {ctx.device}", lora_devices == [ctx.device], str(lora_devices))
    record.check("it generates", reply.usage_metadata["output_tokens"] > 0, repr(reply.content[:60]))
    inputs = loaded.processor(text=["USER: Hello ASSISTANT:"], return_tensors="pt").to(loaded.input_device)
    with torch.no_grad():
        tuned = model(**inputs).logits.float()
        with model.disable_adapter():
            plain = model(**inputs).logits.float()
    difference = float((tuned - plain).abs().max())
    record.check("the trained adapter changes the model's output", difference > 0, f"max |logit difference| {difference:.4g}")

    # A base saved in 4-bit (what some users download) must be refused by merge, with its reason.
    quantized_base = ctx.workdir / "llava-saved-in-4bit"
    model.unload().save_pretrained(quantized_base, safe_serialization=True)
    loaded.processor.save_pretrained(quantized_base)
    unload_chat_model(llm.spec)
    del model, loaded, llm
    release_models()
    target = ctx.workdir / "merged"
    try:
        merge(str(adapter), str(target), base=str(quantized_base))
    except Exception as exc:
        refused = type(exc).__name__ == "QuantizationError" and "saved quantized" in str(exc)
        record.check("merge refuses a base saved in 4-bit", refused and not target.exists(),
                     f"{type(exc).__name__}: {exc}")  # fmt: skip
    else:
        record.check("merge refuses a base saved in 4-bit", False, f"it merged into {target}")
