"""The five steps of ``bench/gpu_check.py``; each takes the shared context and fills its record.

A step raises to fail (the runner records the error and goes on); a failed ``record.check`` also
fails it, but lets the step finish measuring the rest. Performance targets are reported with
``record.target`` and never fail a step.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.gpu_check_models import Assets, image_tokens
from bench.gpu_check_report import REPO, say

GIB = 2**30

# Where the product keeps the names this check uses. Modules are being regrouped into subpackages
# (agent/core, agent/decoding, agent/llava): the flat layout is tried first, so that in either tree
# the module found is the one the product itself imports.
_PRODUCT_MODULES = {
    "ToolCallConstraint": ("agent.constrained", "agent.decoding.constraint"),
    "tool_schemas": ("agent.tool_protocol", "agent.decoding.tool_protocol", "agent.llava.messages"),
    "format_tool_calls": ("agent.tool_protocol", "agent.decoding.tool_protocol"),
    "model_size_bytes": ("tools.model_manager", "agent.core.model_manager"),
}


def product(name: str) -> Any:
    for module_name in _PRODUCT_MODULES[name]:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue
            raise
        if hasattr(module, name):
            return getattr(module, name)
    raise ImportError(f"{name} is in none of {', '.join(_PRODUCT_MODULES[name])}")


def _chat_model_cache() -> Any:
    """The flat layout's per-process ChatLlava cache module, or None where chat models live in the model manager."""
    try:
        return importlib.import_module("agent.loading")
    except ModuleNotFoundError:
        return None


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def unload_chat_model(spec: Any) -> None:
    """Drop one ChatLlava model from memory (kept by ChatLlava's cache or by the process-wide model manager)."""
    from tools import get_model_manager

    cache = _chat_model_cache()
    if cache is not None and hasattr(cache, "unload_model"):
        cache.unload_model(spec)
    get_model_manager().evict(("chat", spec))
    _free_memory()


def release_models() -> None:
    """Drop every model the chat model and the tools keep, so a step starts with an empty device."""
    from tools import get_model_manager

    cache = _chat_model_cache()
    if cache is not None and hasattr(cache, "cached_models"):
        for spec in cache.cached_models():
            cache.unload_model(spec)
    get_model_manager().clear()
    _free_memory()


@dataclass
class Context:
    device: str  # "cuda" or "cpu"
    size: str  # "full" or "tiny"
    workdir: Path
    assets: Assets
    shared: dict[str, Any] = field(default_factory=dict)  # results a later step may quote

    @property
    def full(self) -> bool:
        return self.size == "full"


# -- memory and timing helpers --------------------------------------------------------------------
def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def allocated_gib(device: str) -> float:
    """GPU memory held by tensors (CUDA), or the process's resident memory (CPU)."""
    if device == "cuda":
        import torch

        return torch.cuda.memory_allocated() / GIB
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GIB


def reset_peak(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float:
    """``torch.cuda.max_memory_allocated`` since the last reset (CUDA), or the process's peak RSS (CPU)."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / GIB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def count_modules(model: Any, class_name: str) -> int:
    return sum(type(module).__name__ == class_name for module in model.modules())


def checkpoint_parameters(folder: Path) -> int:
    """Parameters in a safetensors checkpoint, read from the file headers only."""
    from safetensors import safe_open

    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as handle:
            total += sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())
    return total


def product_tools() -> list:
    """The four product tools (constructing them loads no model)."""
    from tools import CaptionImageTool, GenerateImageTool, SearchImagesTool, SpeakTool

    return [CaptionImageTool(), GenerateImageTool(), SearchImagesTool(), SpeakTool()]


def noise_image():
    from PIL import Image

    return Image.effect_noise((500, 400), 60).convert("RGB")


# -- step 1: ChatLlava in 4-bit, 8-bit and fp16 against plain generate ----------------------------
PRECISIONS = (("4bit", "auto", "NF4 4-bit"), ("8bit", "float16", "int8"), ("none", "float16", "fp16"))
QUANTIZED_LAYER = {"4bit": "Linear4bit", "8bit": "Linear8bitLt"}


def step_chat_model(ctx: Context, record: Any) -> None:
    from langchain_core.messages import HumanMessage

    from agent import ChatLlava
    from bench.bench_chat_model import PROMPT

    folder = ctx.assets.llava()
    record.metric("checkpoint_parameters_b", checkpoint_parameters(folder) / 1e9)
    image = noise_image()
    cases = {
        "text": [HumanMessage(PROMPT)],
        "image": [HumanMessage(content=[{"type": "image", "image": image}, {"type": "text", "text": PROMPT}])],
    }
    max_new_tokens = 32 if ctx.full else 8
    rows = []
    for quantization, dtype, label in PRECISIONS:
        repeats = 3 if ctx.full and quantization == "4bit" else 1  # int8 decodes slowly: one round
        say(f"  {label}: loading and measuring ({repeats} round(s) of {max_new_tokens} new tokens)")
        llm = ChatLlava(model=str(folder), device=ctx.device, quantization=quantization, dtype=dtype, temperature=0.0)
        try:
            result = _measure_precision(ctx, llm, cases, max_new_tokens, repeats, quantization)
        except Exception as exc:
            record.check(f"{label}: loads and generates on {ctx.device}", False, f"{type(exc).__name__}: {exc}")
            rows.append([label] + [None] * 9)
            unload_chat_model(llm.spec)
            continue
        if quantization != "4bit":  # the 4-bit model stays cached for step 2 (ChatLlava's own cache)
            unload_chat_model(llm.spec)
        gc.collect()
        key = {"4bit": "nf4", "8bit": "int8", "none": "fp16"}[quantization]
        record.check(f"{label}: loads and generates on {ctx.device}", True, f"compute dtype {result['dtype']}")
        record.check(f"{label}: every weight is on {ctx.device}", result["devices"] == [ctx.device],
                     f"parameters on {result['devices']}")  # fmt: skip
        if quantization in QUANTIZED_LAYER:
            record.check(f"{label}: language-model layers are {QUANTIZED_LAYER[quantization]}",
                         result["quantized_layers"] > 0, f"{result['quantized_layers']} layers")  # fmt: skip
        for name in ("load_s", "memory_gib", "peak_gib", "ttft_text_s", "ttft_image_s", "decode_tok_s",
                     "plain_decode_tok_s", "decode_ratio"):
            record.metric(f"{key}_{name}", result[name])  # fmt: skip
        rows.append([label, result["load_s"], result["memory_gib"], result["peak_gib"],
                     result["plain_ttft_text_s"], result["ttft_text_s"], result["plain_ttft_image_s"],
                     result["ttft_image_s"], result["plain_decode_tok_s"], result["decode_tok_s"]])  # fmt: skip
        target_met = result["decode_ratio"] >= 0.95 if ctx.full else None
        record.target(f"{label} ChatLlava decode / plain generate", round(100 * result["decode_ratio"], 1),
                      ">= 95%", target_met)  # fmt: skip
    memory = ("memory = GPU memory of the weights, peak = max allocated while generating" if ctx.device == "cuda"
              else "memory = model footprint, peak = the process's peak RSS")
    record.table(
        f"ChatLlava against plain `generate` on the same weights, medians, {max_new_tokens} new tokens ({memory})",
        ["precision", "load s", "memory GiB", "peak GiB", "TTFT text plain s", "TTFT text ChatLlava s",
         "TTFT image plain s", "TTFT image ChatLlava s", "decode plain tok/s", "decode ChatLlava tok/s"],
        rows,
    )  # fmt: skip
    if "nf4_decode_tok_s" in record.metrics:
        ctx.shared["nf4_decode_tok_s"] = record.metrics["nf4_decode_tok_s"]
        record.headline = (
            f"NF4: {record.metrics['nf4_decode_tok_s']:.1f} tok/s = {100 * record.metrics['nf4_decode_ratio']:.1f}% "
            f"of plain generate; TTFT {record.metrics['nf4_ttft_text_s']:.3f} s text, "
            f"{record.metrics['nf4_ttft_image_s']:.3f} s image; {record.metrics['nf4_memory_gib']:.2f} GiB, "
            f"loaded in {record.metrics['nf4_load_s']:.1f} s"
        )


def _measure_precision(ctx: Context, llm: Any, cases: dict, max_new_tokens: int, repeats: int, quantization: str) -> dict:
    from bench.bench_chat_model import run_chat, run_plain

    before = allocated_gib(ctx.device)
    started = time.perf_counter()
    loaded = llm.loaded
    sync(ctx.device)
    load_s = time.perf_counter() - started
    model = loaded.model
    memory = allocated_gib(ctx.device) - before if ctx.device == "cuda" else model.get_memory_footprint() / GIB
    reset_peak(ctx.device)
    results: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    for case, messages in cases.items():
        run_chat(llm, messages, 4)  # warm-up: first-call allocations, kernels
        run_plain(llm, messages, 4)
        for _ in range(repeats):  # interleaved, so both paths see the same conditions
            results.setdefault(("plain", case), []).append(run_plain(llm, messages, max_new_tokens))
            results.setdefault(("chat", case), []).append(run_chat(llm, messages, max_new_tokens))

    def decode(path: str) -> float:
        return median([r[1] for case in cases for r in results[(path, case)]])

    layer = QUANTIZED_LAYER.get(quantization)
    return {
        "load_s": load_s,
        "memory_gib": memory,
        "peak_gib": peak_gib(ctx.device),
        "dtype": llm.spec.dtype,
        "devices": sorted({p.device.type for p in model.parameters()}),
        "quantized_layers": count_modules(model.get_decoder(), layer) if layer else 0,
        "ttft_text_s": median([r[0] for r in results[("chat", "text")]]),
        "ttft_image_s": median([r[0] for r in results[("chat", "image")]]),
        "plain_ttft_text_s": median([r[0] for r in results[("plain", "text")]]),
        "plain_ttft_image_s": median([r[0] for r in results[("plain", "image")]]),
        "decode_tok_s": decode("chat"),
        "plain_decode_tok_s": decode("plain"),
        "decode_ratio": decode("chat") / decode("plain"),
    }


# -- step 2: forced tool calls under the constraint, and the mask cost ----------------------------
FORCED_CALLS = 20


def step_tool_calls(ctx: Context, record: Any) -> None:
    import jsonschema
    import torch
    from langchain_core.messages import HumanMessage

    from agent import ChatLlava

    constraint_class, tool_schemas = product("ToolCallConstraint"), product("tool_schemas")
    format_tool_calls = product("format_tool_calls")
    tools = product_tools()
    by_name = {tool.name: tool for tool in tools}
    schemas = tool_schemas(tools)
    parameters = {s["function"]["name"]: s["function"]["parameters"] for s in schemas}
    names = list(parameters)
    llm = ChatLlava(model=str(ctx.assets.llava()), device=ctx.device, quantization="4bit", temperature=1.0, top_p=1.0)
    started = time.perf_counter()
    loaded = llm.loaded  # cached from step 1 when it ran
    record.metric("model_load_s", time.perf_counter() - started)
    tokenizer = loaded.tokenizer
    eos = loaded.model.generation_config.eos_token_id
    started = time.perf_counter()
    constraints = {name: constraint_class.build(tokenizer, schemas, name, eos_token_ids=eos) for name in names}
    record.metric("constraint_build_s", time.perf_counter() - started)
    budget = max(c.required_new_tokens for c in constraints.values()) + 12  # room to choose, little to wait for
    record.metric("max_new_tokens", budget)

    replies, problems, seconds, tokens = [], [], [], []
    for index in range(FORCED_CALLS):
        name = names[index % len(names)]
        bound = llm.model_copy(update={"seed": index, "max_new_tokens": budget}).bind_tools(tools, tool_choice=name)
        prompt = f"Request {index}: use {name} for photos/cat-{index}.png and tell me what you did."
        started = time.perf_counter()
        reply = bound.invoke([HumanMessage(prompt)])
        sync(ctx.device)
        seconds.append(time.perf_counter() - started)
        tokens.append(reply.usage_metadata["output_tokens"])
        replies.append((name, reply))
        problem = _call_problem(reply, name, parameters, by_name, jsonschema)
        if problem:
            problems.append(f"call {index} ({name}): {problem}")
    valid = FORCED_CALLS - len(problems)
    record.check(f"{FORCED_CALLS} forced calls are valid for their tools' schemas", not problems,
                 f"{valid}/{FORCED_CALLS} valid" + (f"; first problem: {problems[0]}" if problems else ""))  # fmt: skip
    record.metric("valid_calls", valid)
    record.metric("tokens_per_call_mean", statistics.mean(tokens))
    record.metric("seconds_per_call_median", median(seconds))
    record.metric("call_tokens_per_s", sum(tokens) / sum(seconds), "tok/s (prefill included)")

    # The mask cost per token, replayed on the device over each call's tokens (the processor's work
    # depends only on the token sequence, not on the logits' values).
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    times, outside = [], 0
    for name, reply in replies:
        if not reply.tool_calls:
            continue
        ids = tokenizer(format_tool_calls(reply.tool_calls), add_special_tokens=False)["input_ids"]
        processor = constraints[name].logits_processor(max(budget, len(ids) + 1))
        sequence = torch.tensor([[tokenizer.pad_token_id or 0]], device=loaded.input_device)
        for position in range(len(ids) + 1):
            scores = torch.zeros((1, vocab), device=loaded.input_device)
            sync(ctx.device)
            started = time.perf_counter()
            processor(sequence, scores)
            sync(ctx.device)
            times.append(time.perf_counter() - started)
            if position < len(ids):
                outside += not bool(torch.isfinite(scores[0, ids[position]]))
                sequence = torch.cat([sequence, torch.tensor([[ids[position]]], device=sequence.device)], dim=1)
    record.check("every replayed call token is allowed by the mask", outside == 0 and bool(times),
                 f"{len(times)} steps, {outside} outside")  # fmt: skip
    if times:
        mask_ms = 1000 * median(times)
        record.metric("mask_ms_per_token_median", mask_ms)
        record.metric("mask_ms_per_token_p95", 1000 * percentile(times, 0.95))
        record.metric("mask_ms_per_token_mean", 1000 * statistics.mean(times))
        record.metric("vocabulary", vocab)
        decode = ctx.shared.get("nf4_decode_tok_s")
        share = f", {100 * mask_ms / (1000 / decode):.1f}% of an NF4 decode step" if decode else ""
        if decode:
            record.metric("mask_share_of_decode_step_pct", 100 * mask_ms / (1000 / decode))
        record.headline = (f"{valid}/{FORCED_CALLS} forced calls valid; mask {mask_ms:.3f} ms/token median{share}; "
                           f"{median(seconds):.2f} s per call")  # fmt: skip


def _call_problem(reply: Any, name: str, parameters: dict, by_name: dict, jsonschema: Any) -> str | None:
    if reply.invalid_tool_calls:
        return f"invalid calls {reply.invalid_tool_calls!r:.200}"
    if not reply.tool_calls:
        return f"no call in {reply.content!r:.200}"
    for call in reply.tool_calls:
        if call["name"] != name:
            return f"called {call['name']!r}, not the forced tool"
        try:
            jsonschema.validate(call["args"], parameters[name])
            by_name[name].args_schema.model_validate(call["args"])
        except Exception as exc:
            return f"arguments {call['args']!r:.200} rejected: {exc}"
    return None


# -- step 3: the tools on the device, then the model manager's budget and eviction ----------------
def step_tools(ctx: Context, record: Any) -> None:
    from PIL import Image

    from bench.bench_indexing import make_images
    from tools import ModelManager

    release_models()
    import numpy as np
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # one bar per generated image otherwise
    folders = ctx.assets.tool_models()
    device = ctx.device
    work = ctx.workdir / "tools-run"
    manager = ModelManager()
    baseline = allocated_gib(device)
    photos = make_images(work / "photos", 64 if ctx.full else 8, np.random.default_rng(0))
    pictures = [Image.open(path).convert("RGB") for path in photos]
    tools = _tool_set(ctx, folders, manager, work)
    side = 512 if ctx.full else 64
    runs = {  # one call each, used again for the eviction round
        "caption": lambda: tools["caption"].invoke(_call("caption_image", image=str(photos[0]), detail="short")),
        "text-to-image": lambda: tools["generate"].invoke(
            _call("generate_image", prompt="a red kite over a beach", width=side, height=side, steps=1, seed=7)),
        "clip": lambda: tools["search"].invoke(_call("search_images", query="a dog on a beach", k=5)),
        "vits": lambda: tools["speak"].invoke(_call("speak", text="Hello from the GPU check.")),
    }
    measures = {
        "caption": lambda: _measure_caption(ctx, record, tools["caption"], pictures),
        "text-to-image": lambda: _measure_generate(ctx, record, tools["generate"], side),
        "clip": lambda: _measure_clip(ctx, record, tools, work, len(photos)),
        "vits": lambda: _measure_vits(ctx, record, tools["speak"]),
    }
    for kind, measure in measures.items():
        try:
            measure()
        except Exception as exc:  # one tool failing leaves the others measured
            record.check(f"{kind} runs on {device}", False, f"{type(exc).__name__}: {exc}")
        else:
            record.check(f"{kind} runs on {device}", True)
    _check_dtypes(ctx, record, manager)
    resident = [key[0] for key in manager.loaded_keys()]
    record.check("several models resident at once without a budget", len(resident) >= 2, ", ".join(resident))
    record.check("each model loaded once however many calls", all(n == 1 for n in manager.load_count.values()),
                 str({k[0]: n for k, n in manager.load_count.items()}))  # fmt: skip
    record.metric("resident_models_gib", manager.used_bytes(device) / GIB)
    if device == "cuda":
        record.metric("gpu_allocated_gib", allocated_gib(device) - baseline)
    _eviction_round(ctx, record, manager, runs, baseline)
    record.headline = "; ".join(
        text for name, text in (
            ("caption_images_per_s", "captions {:.1f} img/s"), ("generate_s_per_image", "SD {:.3f} s/image"),
            ("index_images_per_s", "CLIP index {:.1f} img/s"), ("search_p50_ms", "search p50 {:.1f} ms"),
            ("vits_rtf", "VITS RTF {:.4f}"), ("evictions", "{} evictions within budget"),
        ) if name in record.metrics for text in [text.format(record.metrics[name])]
    )  # fmt: skip


def _call(name: str, **args: Any) -> dict:
    return {"type": "tool_call", "id": f"gpu-check-{name}", "name": name, "args": args}


def _tool_set(ctx: Context, folders: dict[str, Path], manager: Any, work: Path) -> dict[str, Any]:
    from memory.image_index import ImageIndex
    from tools import CaptionImageTool, GenerateImageTool, SearchImagesTool, SpeakTool

    common = {"device": ctx.device, "manager": manager, "handle_tool_error": False}
    artifacts = work / "artifacts"
    return {
        "caption": CaptionImageTool(model=str(folders["caption"]), allowed_dirs=[work], **common),
        "generate": GenerateImageTool(model=str(folders["image"]), artifacts_dir=artifacts, **common),
        "index": ImageIndex(clip_model=str(folders["clip"]), device=ctx.device, chroma_dir=work / "chroma",
                            allowed_dirs=[work], manager=manager),
        "search": SearchImagesTool(clip_model=str(folders["clip"]), chroma_dir=work / "chroma", allowed_dirs=[work],
                                   **common),
        "speak": SpeakTool(engine="vits", vits_model=str(folders["vits"]), artifacts_dir=artifacts, **common),
    }  # fmt: skip


def _measure_caption(ctx: Context, record: Any, tool: Any, pictures: list) -> None:
    batch = 8
    tool.caption_images(pictures[:batch], "short", batch_size=batch)  # loads the model; warm-up
    sync(ctx.device)
    started = time.perf_counter()
    captions = tool.caption_images(pictures, "short", batch_size=batch)
    sync(ctx.device)
    record.metric("caption_images_per_s", len(pictures) / (time.perf_counter() - started), f"img/s (batch {batch})")
    record.check("one caption per image", len(captions) == len(pictures) and all(isinstance(c, str) for c in captions))
    record.metric("caption_words_mean", statistics.mean(len(c.split()) for c in captions))


def _measure_generate(ctx: Context, record: Any, tool: Any, side: int) -> None:
    from PIL import Image

    def generate(seed: int) -> dict:
        args = dict(prompt="a watercolour of a lighthouse", width=side, height=side, steps=1, guidance=0.0, seed=seed)
        return tool.invoke(_call("generate_image", **args)).artifact

    generate(0)  # loads the pipeline; warm-up
    timings = []
    for seed in (1, 2, 3):
        sync(ctx.device)
        started = time.perf_counter()
        artifact = generate(seed)
        sync(ctx.device)
        timings.append(time.perf_counter() - started)
    record.metric("generate_s_per_image", statistics.mean(timings), f"s/image ({side}x{side}, 1 step)")
    with Image.open(artifact["path"]) as image:
        record.check(f"a {side}x{side} PNG is written", image.size == (side, side), artifact["path"])


def _measure_clip(ctx: Context, record: Any, tools: dict, work: Path, count: int) -> None:
    from memory.chroma import release_writer_lock

    index = tools["index"]
    index.embedder.embed_texts(["warm up"])  # loads CLIP
    started = time.perf_counter()
    report = index.index_folder(work / "photos", batch_size=32, progress=False)
    seconds = time.perf_counter() - started
    release_writer_lock(work / "chroma")
    record.check("every image indexed", report.added == count and not report.skipped, report.summary())
    record.metric("index_images_per_s", report.added / seconds, "img/s (hash, decode, embed, store)")
    tools["search"].invoke(_call("search_images", query="warm up", k=5))
    latencies, found = [], []
    for number in range(30 if ctx.full else 5):
        started = time.perf_counter()
        artifact = tools["search"].invoke(_call("search_images", query=f"a photo of a red car {number}", k=5)).artifact
        latencies.append(time.perf_counter() - started)
        found.append(len(artifact["results"]))
    record.metric("search_p50_ms", 1000 * median(latencies))
    record.metric("search_p95_ms", 1000 * percentile(latencies, 0.95))
    record.check("each search returns k=5 images", all(n == 5 for n in found), str(sorted(set(found))))


def _measure_vits(ctx: Context, record: Any, tool: Any) -> None:
    from bench.bench_tts import PARAGRAPH

    tool.synthesize("Warm up.")  # loads VITS
    sync(ctx.device)
    started = time.perf_counter()
    _, rate, audio_s = tool.synthesize(PARAGRAPH)
    sync(ctx.device)
    seconds = time.perf_counter() - started
    record.metric("vits_audio_s", audio_s)
    record.metric("vits_rtf", seconds / audio_s, "synthesis s / audio s")
    record.check("VITS produced audio", audio_s > 0 and rate > 0, f"{audio_s:.2f} s at {rate} Hz")


def _check_dtypes(ctx: Context, record: Any, manager: Any) -> None:
    """The loaded weights' dtype and device, read from the models the manager holds."""
    import torch

    model_size_bytes = product("model_size_bytes")
    half = torch.float16 if ctx.device == "cuda" else torch.float32
    for key in manager.loaded_keys():
        value = manager.get(key, _not_loaded, device=ctx.device)
        module = value[0] if isinstance(value, tuple) else getattr(value, "unet", value)
        parameter = next(module.parameters())
        record.metric(f"{key[0]}_gib", model_size_bytes(value) / GIB)
        expected = torch.float32 if key[0] == "vits" else half  # VITS loads as saved (fp32, like mms-tts-eng)
        record.check(f"{key[0]} weights are {expected} on {ctx.device}",
                     parameter.dtype == expected and parameter.device.type == ctx.device,
                     f"{parameter.dtype} on {parameter.device}")  # fmt: skip


def _not_loaded() -> Any:
    raise RuntimeError("the model was expected to be loaded already")


def _eviction_round(ctx: Context, record: Any, manager: Any, runs: dict, baseline: float) -> None:
    """Budget = all four models minus half the smallest: loading the last one must evict, least recently used first."""
    model_size_bytes = product("model_size_bytes")
    sizes = {key[0]: model_size_bytes(manager.get(key, _not_loaded, device=ctx.device)) for key in manager.loaded_keys()}
    if len(sizes) < 3:
        record.check("budget and eviction round", False, f"only {len(sizes)} models loaded, need 3 or more")
        return
    budget = sum(sizes.values()) - min(sizes.values()) // 2
    record.metric("budget_gib", budget / GIB)
    manager.clear()
    manager.set_budgets({ctx.device: budget / GIB})
    rows, evicted_total, lru_ok, within, freed_ok, most = [], 0, True, True, True, 0
    for kind in [k for k in runs if k in sizes] + [next(k for k in runs if k in sizes)]:  # the first one again at the end
        before = manager.loaded_keys()
        already = len(manager.evictions)
        runs[kind]()
        sync(ctx.device)
        evicted = manager.evictions[already:]
        after = [key[0] for key in manager.loaded_keys()]
        used = manager.used_bytes(ctx.device)
        lru_ok &= list(evicted) == list(before[: len(evicted)])
        within &= used <= budget
        most = max(most, len(after))
        evicted_total += len(evicted)
        gpu = allocated_gib(ctx.device) - baseline if ctx.device == "cuda" else None
        if gpu is not None:
            freed_ok &= gpu <= used / GIB * 1.1 + 0.25  # evicted weights really left the GPU
        rows.append([kind, ", ".join(after), round(used / GIB, 3), ", ".join(k[0] for k in evicted) or "—",
                     None if gpu is None else round(gpu, 3)])  # fmt: skip
    record.table(f"calls under a {budget / GIB:.3f} GiB budget for {ctx.device} (less than all four models)",
                 ["call", "resident after (least recently used first)", "resident GiB", "evicted",
                  "GPU allocated GiB"], rows)  # fmt: skip
    record.metric("evictions", evicted_total)
    record.check("the budget forces evictions", evicted_total >= 1, f"{evicted_total} evictions")
    record.check("evictions take the least recently used models first", lru_ok)
    record.check("resident models always fit the budget", within)
    record.check("several models resident under the budget", most >= 2, f"at most {most} at once")
    if ctx.device == "cuda":
        record.check("evicted models' GPU memory is released", freed_ok)


# -- step 4: QLoRA through finetune: interrupt, resume, reload, merge refusal ---------------------
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
            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),
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


# -- step 5: the turn benchmark, when it exists -------------------------------------------------------
def step_turns(ctx: Context, record: Any) -> None:
    release_models()
    script = REPO / "bench" / "bench_turns.py"
    if not script.is_file():
        record.status = "not available"
        record.headline = "bench/bench_turns.py does not exist yet"
        record.note("The turn benchmark (prefix cache reuse, jump-forward decoding) has not landed; nothing to run.")
        return
    environment = dict(os.environ, PYTHONPATH=str(REPO))
    usage = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                           cwd=REPO, env=environment).stdout  # fmt: skip
    command = [sys.executable, str(script)]
    if "--device" in usage:
        command += ["--device", ctx.device]
    if not ctx.full:
        if "--size" not in usage:
            record.status = "skipped"
            record.headline = "bench_turns.py has no --size option, so it has no tiny dry run"
            record.note(record.headline)
            return
        command += ["--size", "tiny"]
    results = ctx.workdir / "bench_turns.json"
    if "--output" in usage:
        command += ["--output", str(results)]
    say("  " + " ".join(command[1:]))
    done = subprocess.run(command, capture_output=True, text=True, timeout=420 if ctx.full else 120, cwd=REPO,
                          env=environment)  # fmt: skip
    tail = (done.stdout + done.stderr)[-3000:]
    record.note("Output:\n\n```\n" + tail.strip() + "\n```")
    if done.returncode != 0:
        raise RuntimeError(f"bench_turns.py exited with {done.returncode}: {tail[-500:]}")
    if results.is_file():
        data = json.loads(results.read_text())
        for name, value in (data.items() if isinstance(data, dict) else []):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                record.metric(name, value)
    record.headline = f"bench_turns.py ran ({len(record.metrics)} numeric results)"


STEPS = [
    ("chat_model", "ChatLlava in 4-bit, 8-bit and fp16 against plain generate", step_chat_model),
    ("tool_calls", "Constrained tool calls: 20 forced calls, mask cost per token", step_tool_calls),
    ("tools", "Tools on the device: caption, generate_image, CLIP index/search, VITS; budget and eviction", step_tools),
    ("qlora", "QLoRA: 30 steps with an interrupt and resume, adapter reload, merge refusal", step_qlora),
    ("turns", "Turn benchmark (bench/bench_turns.py)", step_turns),
]
