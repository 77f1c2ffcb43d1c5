"""What the steps of ``bench/gpu_check.py`` share: the run's context, memory and timing helpers, and
the product names they use.

A step is a function ``(context, record)``: it raises to fail (the runner records the error and
goes on); a failed ``record.check`` also fails it but lets it finish measuring the rest.
Performance targets are reported with ``record.target`` and never fail a step.
"""

from __future__ import annotations

import gc
import importlib
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.gpu_check_models import Assets

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

