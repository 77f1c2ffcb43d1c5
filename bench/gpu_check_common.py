"""What the steps of ``bench/gpu_check.py`` share: the run's context, memory and timing helpers, and
the product pieces they use.

A step is a function ``(context, record)``: it raises to fail (the runner records the error and
goes on); a failed ``record.check`` also fails it but lets it finish measuring the rest.
Performance targets are reported with ``record.target`` and never fail a step.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.core.model_manager import get_model_manager
from bench.gpu_check_models import Assets

GIB = 2**30

def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def unload_chat_model(spec: Any) -> None:
    """Drop one ChatLlava model from memory (chat models live in the process-wide model manager)."""
    get_model_manager().evict(("chat", spec))
    _free_memory()


def release_models() -> None:
    """Drop every model the chat model and the tools keep, so a step starts with an empty device."""
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

