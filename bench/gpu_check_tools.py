"""GPU check step 3: the tools on the device (caption, generate_image, CLIP index and search, VITS),
then the model manager's budget and least-recently-used eviction with several models resident.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from bench.gpu_check_common import (
    GIB,
    Context,
    allocated_gib,
    median,
    percentile,
    release_models,
    sync,
)


def step_tools(ctx: Context, record: Any) -> None:
    import numpy as np
    from diffusers.utils import logging as diffusers_logging
    from PIL import Image

    from bench.bench_indexing import make_images
    from tools import ModelManager

    release_models()
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

    from agent.core.model_manager import model_size_bytes

    half = torch.float16 if ctx.device == "cuda" else torch.float32
    for key in manager.loaded_keys():
        value = _loaded(manager, key, ctx.device)
        module = value[0] if isinstance(value, tuple) else getattr(value, "unet", value)
        parameter = next(module.parameters())
        record.metric(f"{key[0]}_gib", model_size_bytes(value) / GIB)
        expected = torch.float32 if key[0] == "vits" else half  # VITS loads as saved (fp32, like mms-tts-eng)
        record.check(f"{key[0]} weights are {expected} on {ctx.device}",
                     parameter.dtype == expected and parameter.device.type == ctx.device,
                     f"{parameter.dtype} on {parameter.device}")  # fmt: skip


def _not_loaded() -> Any:
    raise RuntimeError("the model was expected to be loaded already")


def _loaded(manager: Any, key: Any, device: str) -> Any:
    """The model the manager holds under ``key`` (never loads one)."""
    with manager.use(key, _not_loaded, device=device) as value:
        return value


def _eviction_round(ctx: Context, record: Any, manager: Any, runs: dict, baseline: float) -> None:
    """Budget = all four models minus half the smallest: loading the last one must evict, least recently used first."""
    from agent.core.model_manager import model_size_bytes

    sizes = {key[0]: model_size_bytes(_loaded(manager, key, ctx.device)) for key in manager.loaded_keys()}
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
