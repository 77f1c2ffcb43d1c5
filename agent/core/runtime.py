"""Where and in what precision models run: the one owner of the device, dtype and 4-bit policy.

* :func:`resolve_device`: ``"auto"`` becomes ``cuda`` when a GPU is usable, else ``mps`` on
  Apple silicon, else ``cpu``; a named device is checked.
* :func:`resolve_precision`: the chat model's quantization and compute dtype. 4-bit NF4 on CUDA;
  on CPU the fastest decode of this CPU among NF4, int8 weights and full precision (measured
  once, :func:`cpu_fastest_decode`; decoding is memory-bound: a 2-core AVX512-BF16 CPU decoded
  a 0.5B LLaVA at NF4 21 tok/s, bf16 15, fp32 6.6, same time to first token,
  ``bench/bench_chat_model.py``), int8 weights and full precision only where the full-precision
  weights fit in half the available memory; compute in bf16 where the hardware has it natively,
  else fp16 (CUDA, MPS) or fp32 (CPU).
* :func:`resolve_training_precision`: the same for fine-tuning (QLoRA on CUDA, LoRA elsewhere).
* :func:`tool_dtype`: the tool models (captioning, diffusion, CLIP, VITS): fp16 on CUDA, fp32
  elsewhere.
* :func:`embedder_dtype`: the sentence embedder (memory, semantic routing): the device's native
  dtype, so bf16 on a CPU that computes it (MiniLM on 2x16 tokens, one thread: 11.6 ms fp32,
  5.3 ms bf16, cosine to fp32 >= 0.9999), fp32 on one that does not.
* :func:`bitsandbytes_config`: the one 4-bit/8-bit recipe (NF4, double quantization; vision
  tower, projector and ``lm_head`` kept in full precision).

Inference loading, fine-tuning, the model manager, the tools and ``doctor`` all call these.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.core.defaults import CHAT_MODEL_CPU, CHAT_MODEL_GPU
from agent.core.errors import InputError, QuantizationError

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import torch

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("auto", "4bit", "8bit", "int8-weights", "none")
DTYPES = ("auto", "float32", "float16", "bfloat16")
SKIP_QUANTIZATION_MODULES = ("model.vision_tower", "model.multi_modal_projector", "lm_head")
"""Modules kept in full precision when quantizing (transformers v5 module names)."""


def resolve_device(device: str | None = "auto") -> str:
    """``"auto"`` (or None) -> ``"cuda"`` when a CUDA GPU is usable, else ``"mps"``, else ``"cpu"``."""
    import torch

    device = device or "auto"
    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"device {device!r} was asked for but no CUDA GPU is usable here; use device='cpu'")
        if device not in ("cpu", "mps") and not device.startswith("cuda"):
            raise InputError(f"device {device!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 beats fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
        if "avx512_bf16" in flags or "amx_bf16" in flags:
            return True
    except OSError:
        pass
    import torch

    capability = str(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")())
    return "AMX" in capability or "BF16" in capability


def cuda_supports_bf16() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def bitsandbytes_installed() -> bool:
    """Whether bitsandbytes can be imported (checked without importing it)."""
    if "bitsandbytes" in sys.modules:
        return sys.modules["bitsandbytes"] is not None  # None: imports of it are blocked
    return importlib.util.find_spec("bitsandbytes") is not None


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"{name} {value!r} is not supported; use one of {', '.join(allowed)}")


def native_dtype(device: str) -> str:
    """The fastest full-precision compute dtype of ``device`` (bf16 where native, else fp16/fp32)."""
    if device.startswith("cuda"):
        return "bfloat16" if cuda_supports_bf16() else "float16"
    if device == "mps":
        return "float16"
    return "bfloat16" if cpu_supports_bf16() else "float32"


def resolve_precision(
    quantization: str, dtype: str, device: str, *, weights_bytes: int | None = None
) -> tuple[str, str]:
    """The chat model's ``(quantization, dtype)`` on ``device``, ``"auto"`` resolved.

    ``weights_bytes`` is the checkpoint's size on disk (None: unknown). On CUDA ``auto`` is 4-bit
    NF4. On CPU it is whichever of NF4, int8 weights and full precision decodes fastest on this
    CPU (:func:`cpu_fastest_decode`, measured once per machine); int8 weights and full precision
    load the full-precision weights first, so they are taken only when those fit in half of the
    available memory (an unknown size keeps NF4 where bitsandbytes is installed).
    """
    _check_choice("quantization", quantization, QUANTIZATIONS)
    _check_choice("dtype", dtype, DTYPES)
    if quantization == "int8-weights" and device != "cpu":
        raise InputError(
            f"quantization 'int8-weights' runs on CPU only (torch's int8 weight kernel), not on {device}; "
            "use quantization='4bit' or 'auto' there"
        )
    if quantization == "int8-weights" and not int8_weights_available():
        raise InputError(
            "quantization 'int8-weights' needs torch's int8 weight kernel (torch._weight_int8pack_mm), "
            "which this torch lacks; upgrade torch or use quantization='auto'"
        )
    if quantization == "auto":
        if device.startswith("cuda"):
            quantization = "4bit"
        elif device == "cpu":
            full = native_dtype(device) if dtype == "auto" else dtype
            quantization = _cpu_auto_quantization(_fits_in_memory(weights_bytes, full))
        else:  # MPS: no bitsandbytes kernels
            quantization = "none"
    if dtype == "auto":
        dtype = "float16" if quantization == "8bit" else native_dtype(device)  # int8 matmuls take fp16
    return quantization, dtype


def _cpu_auto_quantization(full_precision_fits: bool) -> str:
    """``auto`` on CPU: the fastest decode measured here, among those that can be loaded safely."""
    if not full_precision_fits and bitsandbytes_installed():
        return "4bit"  # int8 weights and full precision start from the full-precision weights
    return cpu_fastest_decode()


def int8_weights_available() -> bool:
    """Whether torch has the CPU int8 weight-only kernel ``quantization="int8-weights"`` uses."""
    from agent.core.int8_weights import int8_kernel_available

    return int8_kernel_available("cpu")


def _fits_in_memory(weights_bytes: int | None, dtype: str) -> bool:
    """Whether full-precision weights of a checkpoint this size take at most half the available memory."""
    if not weights_bytes:
        return False
    try:
        import os

        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # not a POSIX system: no measurement, no risk taken
        return False
    scale = 2 if dtype == "float32" else 1  # checkpoints are stored in 16-bit (a 32-bit one is overcounted)
    return weights_bytes * scale <= available // 2


CPU_MEASUREMENT_FILE = "cpu-decode.json"
"""Where :func:`cpu_decode_timings` keeps its result, in ``$XDG_CACHE_HOME/llava-agent``."""


def cache_folder() -> Path:
    """Where what is derived once per machine is kept: ``$XDG_CACHE_HOME/llava-agent`` (``~/.cache`` by default).

    CPU timings (:func:`cpu_decode_timings`), the text embedder's ONNX export (:mod:`memory.onnx_text`).
    """
    import os
    from pathlib import Path

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llava-agent"


def _measurement_path() -> Path:
    return cache_folder() / CPU_MEASUREMENT_FILE


def _cpu_identity() -> str:
    """What the measurement depends on: the CPU (model and flags), its core count, torch and bitsandbytes."""
    import hashlib
    import importlib.metadata
    import os
    import platform

    described = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            described = sorted({line.strip() for line in handle if line.startswith(("model name", "flags"))})
    except OSError:
        described = [platform.processor()]
    versions = []
    for package in ("torch", "bitsandbytes"):
        try:
            versions.append(importlib.metadata.version(package))
        except importlib.metadata.PackageNotFoundError:
            versions.append("-")
    payload = "\n".join([*described, platform.machine(), str(os.cpu_count()), *versions])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


MEASUREMENT_METHOD = "fastest-of-5"
"""How the kept CPU measurements were taken; a record taken another way (the median of three,
which a busy machine skewed) is measured again."""
_MEASURING = threading.Lock()

CPU_DECODE_CHOICES = ("4bit", "int8-weights", "none")
"""What :func:`measure_cpu_decode` times, in the order a tie is broken (fewest bytes first)."""


def cpu_fastest_decode() -> str:
    """Which of NF4 (``"4bit"``), int8 weights and full precision (``"none"``) decodes fastest on this CPU.

    From :func:`cpu_decode_timings` (measured once per machine), among the choices whose library
    is there now (bitsandbytes for NF4, torch's int8 kernel for int8 weights).
    """
    timings = cpu_decode_timings()
    usable = {
        "4bit": bitsandbytes_installed(),
        "int8-weights": int8_weights_available(),
        "none": True,
    }
    candidates = [name for name in CPU_DECODE_CHOICES if usable[name] and timings.get(name) is not None]
    return min(candidates, key=lambda name: timings[name]) if candidates else "none"


@functools.lru_cache(maxsize=1)
def cpu_decode_timings() -> dict[str, float | None]:
    """Milliseconds of one decode token per choice of :data:`CPU_DECODE_CHOICES` on this CPU (None: not runnable).

    Measured once per machine (:func:`measure_cpu_decode`) and kept in
    ``$XDG_CACHE_HOME/llava-agent/cpu-decode.json`` (``~/.cache`` by default) under the CPU's
    model, flags and core count and the torch and bitsandbytes versions, so a new CPU or a new
    version measures again; delete the file to measure again by hand.
    """
    return kept_cpu_measurement(CPU_MEASUREMENT_FILE, CPU_DECODE_CHOICES, lambda: measure_cpu_decode())


def kept_cpu_measurement(
    file_name: str, choices: tuple[str, ...], measure: Callable[[], dict[str, float]]
) -> dict[str, float | None]:
    """Milliseconds per choice, read from ``$XDG_CACHE_HOME/llava-agent/<file_name>`` when that
    record is this machine's (:func:`_cpu_identity`) and well formed, else ``measure()`` (seconds
    per choice, ``inf`` for a choice that cannot run here) and kept there atomically."""
    import json

    identity = _cpu_identity()
    path = _measurement_path().with_name(file_name)
    with _MEASURING:  # one measurement at a time: two at once would slow each other down
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            timings = stored.get("milliseconds")
            if (stored.get("identity") == identity and stored.get("method") == MEASUREMENT_METHOD
                    and _valid_timings(timings, choices)):
                return timings
        except (OSError, ValueError, AttributeError):
            pass  # missing, unreadable, another machine's or another method's: measure
        timings = {name: round(seconds * 1e3, 3) if seconds != float("inf") else None
                   for name, seconds in measure().items()}
        try:
            from agent.core.files import atomic_write_text

            record = {"identity": identity, "method": MEASUREMENT_METHOD, "milliseconds": timings,
                      "native_dtype": native_dtype("cpu")}
            atomic_write_text(path, json.dumps(record, indent=2) + "\n")
        except OSError as exc:  # a read-only home: measured again next time
            logger.info("could not keep the CPU measurement in %s (%s)", path, exc)
        return timings


def _valid_timings(timings: Any, choices: tuple[str, ...]) -> bool:
    """A stored measurement: every choice, each a positive number of milliseconds or None."""
    return (
        isinstance(timings, dict)
        and set(timings) == set(choices)
        and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0) for v in timings.values())
    )


def measure_cpu_decode() -> dict[str, float]:
    """Seconds of one decode token through four 2048x4096 layers, per choice of :data:`CPU_DECODE_CHOICES`.

    1-3 s in all: the layers (134 MB in fp32, more than a cache holds) in NF4, as int8 weights
    and in the native dtype, one token each, the fastest of five interleaved rounds (the round
    least disturbed by other work: measured while other jobs shared the cores, the median had
    put all three at 31-32 ms against 1.2-3.8 ms idle); a choice whose library is missing takes
    ``inf``. Decoding is memory-bound, so fewer bytes win where the
    kernel is vectorised: a 2-core AVX512-BF16 CPU decoded a 0.5B LLaVA at NF4 21 tok/s, bf16 12;
    on a 2-core AMD EPYC without AVX-512 bitsandbytes' NF4 dequantization is slow (one 576x1536
    layer 1.3 ms in NF4, 0.16 ms in fp32) and torch's int8 kernel reads a quarter of fp32's bytes.
    """
    import time

    import torch

    dtype = torch_dtype(native_dtype("cpu"))
    generator = torch.Generator().manual_seed(0)
    layers: dict[str, list[Any]] = {}
    with torch.no_grad():
        weights = [torch.randn(4096, 2048, generator=generator).to(dtype) for _ in range(4)]
        full = []
        for weight in weights:
            linear = torch.nn.Linear(2048, 4096, bias=False, dtype=dtype)
            linear.weight.copy_(weight)
            full.append(linear.eval())
        layers["none"] = full
        four = _four_bit_layers(full, dtype)
        if four:
            layers["4bit"] = four
        if int8_weights_available():
            from agent.core.int8_weights import int8_linear_class

            layers["int8-weights"] = [int8_linear_class()(linear).eval() for linear in full]
    token = torch.randn(1, 1, 2048, generator=generator).to(dtype)

    def seconds(stack: list[Any]) -> float:
        started = time.perf_counter()
        for layer in stack:
            layer(token)
        return time.perf_counter() - started

    rounds: dict[str, list[float]] = {name: [] for name in layers}
    with torch.inference_mode():
        for stack in layers.values():
            seconds(stack)  # warm-up
        for _ in range(5):
            for name, stack in layers.items():
                rounds[name].append(seconds(stack))
    timings = {name: min(rounds[name]) if name in rounds else float("inf")
               for name in CPU_DECODE_CHOICES}
    logger.info("one decode token on this CPU (four 2048x4096 layers): %s",
                ", ".join(f"{name} {value * 1e3:.1f} ms" for name, value in timings.items()))
    return timings


def _four_bit_layers(full: list[Any], dtype: torch.dtype) -> list[Any]:
    """NF4 copies of ``full`` (empty where bitsandbytes cannot be imported)."""
    if not bitsandbytes_installed():
        return []
    try:
        import bitsandbytes as bnb
    except Exception:  # noqa: BLE001 - a broken native library: no 4-bit here at all
        return []
    quiet_bitsandbytes_kernel_notice()
    four = []
    for linear in full:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False, compute_dtype=dtype,
                                  quant_type="nf4")
        layer.load_state_dict(linear.state_dict())
        four.append(layer.to("cpu").eval())
    return four


@dataclass(frozen=True)
class Placement:
    """Where and how a base model runs during fine-tuning."""

    device: str
    dtype: str
    quantization: str


def resolve_training_precision(device: str, dtype: str, quantization: str) -> Placement:
    """Fine-tuning placement: QLoRA (4-bit base) on CUDA, LoRA on a full-precision base elsewhere.

    dtype ``auto`` is bf16 where the hardware computes it natively (measured on a 2-core
    AVX512-BF16 CPU: bf16 LoRA steps about 1.9x faster than fp32, ``bench/bench_finetune.py``), else
    fp32 (fp16 training without a loss scaler is unstable).
    """
    device = resolve_device("auto" if device == "auto" else device)
    if device == "mps":
        device = "cpu"  # training kernels used here are CUDA or CPU
    _check_choice("dtype", dtype, DTYPES)
    _check_choice("quantization", quantization, QUANTIZATIONS)
    if quantization == "int8-weights":
        raise InputError(
            "quantization 'int8-weights' is for running a model on CPU, not for fine-tuning; "
            "train with quantization='auto', '4bit' or 'none' and run the adapter with int8 weights"
        )
    if dtype == "auto":
        native = native_dtype(device)
        dtype = native if native == "bfloat16" else "float32"
    if quantization == "auto":
        quantization = "4bit" if device.startswith("cuda") else "none"
    return Placement(device, dtype, quantization)


def tool_dtype(device: str) -> torch.dtype:
    """The dtype tool models (captioning, diffusion, CLIP, VITS) run in: fp16 on CUDA, fp32 elsewhere."""
    import torch

    return torch.float16 if device.startswith("cuda") else torch.float32


def embedder_dtype(device: str) -> torch.dtype:
    """The dtype the sentence embedder runs in: the device's native one (bf16 where the CPU computes it)."""
    return torch_dtype(native_dtype(device))


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a resolved dtype name (``float32``, ``float16``, ``bfloat16``)."""
    import torch

    _check_choice("dtype", name, DTYPES[1:])
    return getattr(torch, name)


class _OptionalKernelNotice(logging.Filter):
    """bitsandbytes warns at import that it cannot fetch optional CPU kernels from a model hub (the
    ``kernels`` package). Its built-in CPU path is what runs here, by design: nothing is fetched at
    run time. Keep the notice at debug level instead of showing it to every user."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community"):
            logger.debug("bitsandbytes uses its built-in CPU kernels: %s", record.getMessage())
            return False
        return True


def quiet_bitsandbytes_kernel_notice() -> None:
    source = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _OptionalKernelNotice) for f in source.filters):
        source.addFilter(_OptionalKernelNotice())


LIBRARY_NOTICES = (
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),  # peft reads it when it wraps a model
    (FutureWarning, r"`gradient_checkpointing_enable` is deprecated"),  # peft calls it before 4-bit training
    (UserWarning, r"The `local_dir_use_symlinks` argument is deprecated"),  # diffusers passes it to the hub client
)
"""Warnings the libraries raise at each load that say nothing to a user (what was deprecated is inside them)."""


@contextlib.contextmanager
def quiet_library_notices() -> Iterator[None]:
    """Load a model or wrap it in a LoRA adapter without the libraries' notices to each other.

    Only :data:`LIBRARY_NOTICES` are silenced, and only inside the block: without it every adapter
    load and every diffusers pipeline load would print a deprecation warning to the user's chat.
    """
    with warnings.catch_warnings():
        for category, message in LIBRARY_NOTICES:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def bitsandbytes_config(quantization: str, dtype: str) -> Any:
    """The ``BitsAndBytesConfig`` for a resolved quantization (``None`` for ``"none"`` and ``"int8-weights"``,
    which quantizes after loading: :func:`agent.core.int8_weights.quantize_linear_layers`)."""
    _check_choice("quantization", quantization, QUANTIZATIONS[1:])
    if quantization in ("none", "int8-weights"):
        return None
    quiet_bitsandbytes_kernel_notice()
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # ImportError, or a broken native library raising at import
        raise QuantizationError(
            f"quantization={quantization!r} needs bitsandbytes, which cannot be imported here ({exc}). "
            "Install it with `pip install -U bitsandbytes` (>= 0.45 runs on CPU too), or use quantization='none'"
        ) from None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype(dtype),
            llm_int8_skip_modules=list(SKIP_QUANTIZATION_MODULES),
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(SKIP_QUANTIZATION_MODULES))


def default_chat_model(device: str) -> str:
    """The checkpoint used when none is named: llava-1.5-7b on CUDA, llava-interleave-0.5b elsewhere."""

    return CHAT_MODEL_GPU if device.startswith("cuda") else CHAT_MODEL_CPU
