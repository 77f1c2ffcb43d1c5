"""Find, load and cache LLaVA-family checkpoints for :class:`agent.chat_model.ChatLlava`.

* :func:`resolve_device` / :func:`resolve_precision` turn ``"auto"`` settings into concrete
  ones: 4-bit NF4 on CUDA and on CPU (where bitsandbytes is installed; measured fastest for
  decoding on both), compute in bf16 where the hardware has it natively, else fp16 (CUDA) or
  fp32 (CPU).
* :func:`load_model` loads a checkpoint with ``AutoProcessor`` +
  ``AutoModelForImageTextToText`` (safetensors only, no remote code unless asked), quantizes it
  with bitsandbytes when asked (NF4 + double quantization; vision tower, projector and
  ``lm_head`` kept in full precision), applies a LoRA adapter, and caches the result per
  process, keyed by :class:`ModelSpec`. Each :class:`LoadedModel` carries a lock that
  serialises generation on it.

Failures raise :class:`agent.errors.ModelNotFoundError`, :class:`agent.errors.QuantizationError`
or :class:`agent.errors.ModelLoadError`, each saying what to do.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import InputError, ModelLoadError, ModelNotFoundError, QuantizationError

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

DEFAULT_GPU_MODEL = "llava-hf/llava-1.5-7b-hf"
DEFAULT_CPU_MODEL = "llava-hf/llava-interleave-qwen-0.5b-hf"
QUANTIZATIONS = ("auto", "4bit", "8bit", "none")
DTYPES = ("auto", "float32", "float16", "bfloat16")
SKIP_QUANTIZATION_MODULES = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
"""Modules kept in full precision when quantizing (transformers v5 names)."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything that identifies one set of loaded weights (the cache key)."""

    model: str
    quantization: str
    dtype: str
    device: str
    adapter: str | None = None
    trust_remote_code: bool = False
    allow_pickle_weights: bool = False


@dataclass
class LoadedModel:
    """A loaded model, its processor, and the lock that serialises generation on it."""

    spec: ModelSpec
    model: Any
    processor: Any
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def context_length(self) -> int | None:
        """The language model's context window in tokens (``text_config.max_position_embeddings``)."""
        text_config = getattr(self.config, "text_config", self.config)
        return getattr(text_config, "max_position_embeddings", None)

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device


_CACHE: dict[ModelSpec, LoadedModel] = {}
_CACHE_LOCK = threading.Lock()
_LOAD_LOCKS: dict[ModelSpec, threading.Lock] = {}


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a CUDA GPU is usable, else ``"mps"`` on Apple silicon, else ``"cpu"``."""
    import torch

    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(
                f"device {device!r} was asked for but no CUDA GPU is usable here; use device='cpu'"
            )
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


def default_model(device: str) -> str:
    """The checkpoint used when none is named: llava-1.5-7b on CUDA, llava-interleave-0.5b elsewhere."""
    return DEFAULT_GPU_MODEL if device.startswith("cuda") else DEFAULT_CPU_MODEL


def resolve_precision(quantization: str, dtype: str, device: str) -> tuple[str, str]:
    """Resolve ``"auto"`` quantization and dtype for ``device``; returns ``(quantization, dtype)``."""
    if quantization not in QUANTIZATIONS:
        raise InputError(
            f"quantization {quantization!r} is not supported; use one of {', '.join(QUANTIZATIONS)}"
        )
    if dtype not in DTYPES:
        raise InputError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    on_cuda = device.startswith("cuda")
    if quantization == "auto":
        # Decoding is memory-bound: NF4 weights decode fastest on CUDA and on CPU alike (measured on
        # a 2-core CPU, 0.5B LLaVA: NF4 21 tok/s, bf16 15, fp32 6.6, with the same time to first
        # token; bench/bench_chat_model.py). Without bitsandbytes, or on MPS, full precision.
        if on_cuda or (device == "cpu" and bitsandbytes_installed()):
            quantization = "4bit"
        else:
            quantization = "none"
    if dtype == "auto":
        if quantization == "8bit":
            dtype = "float16"  # bitsandbytes int8 matmuls take fp16 inputs
        elif on_cuda:
            dtype = "bfloat16" if _cuda_supports_bf16() else "float16"
        elif device == "mps":
            dtype = "float16"
        else:
            dtype = "bfloat16" if cpu_supports_bf16() else "float32"
    return quantization, dtype


def bitsandbytes_installed() -> bool:
    """Whether bitsandbytes can be imported (checked without importing it)."""
    import importlib.util
    import sys

    if "bitsandbytes" in sys.modules:
        return sys.modules["bitsandbytes"] is not None  # None: imports of it are blocked
    return importlib.util.find_spec("bitsandbytes") is not None


def _cuda_supports_bf16() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_spec(
    model: str | None,
    *,
    quantization: str = "auto",
    dtype: str = "auto",
    device: str = "auto",
    adapter: str | os.PathLike[str] | None = None,
    trust_remote_code: bool = False,
    allow_pickle_weights: bool = False,
) -> ModelSpec:
    """Turn user settings (with ``"auto"`` and ``None``) into a concrete :class:`ModelSpec`."""
    device = resolve_device(device)
    quantization, dtype = resolve_precision(quantization, dtype, device)
    model = str(model) if model else default_model(device)
    local = Path(model).expanduser()
    if local.exists():
        model = str(local.resolve())
    adapter_path = str(Path(adapter).expanduser().resolve()) if adapter else None
    return ModelSpec(model, quantization, dtype, device, adapter_path, trust_remote_code, allow_pickle_weights)


def hf_cache_dir() -> str:
    """The Hugging Face hub cache folder models are read from."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in (
        "1",
        "true",
        "yes",
    )


def _not_found(model: str, reason: str) -> ModelNotFoundError:
    from agent.hub_access import download_hint

    return ModelNotFoundError(
        f"model {model!r} {reason}. Looked in the Hugging Face cache {hf_cache_dir()}. Either download it "
        f"once while online (`{download_hint(model)}`) or pass the path of a local folder holding "
        "the checkpoint (config.json, *.safetensors, processor files): ChatLlava(model='/path/to/folder')"
    )


def check_model_available(model: str) -> None:
    """Raise :class:`ModelNotFoundError` early when ``model`` cannot be found (offline and not cached)."""
    path = Path(model).expanduser()
    if path.is_absolute() or model.startswith((".", "~")) or path.exists():
        if not path.exists():
            raise ModelNotFoundError(
                f"model folder {model!r} does not exist; pass an existing folder or a hub id like {DEFAULT_CPU_MODEL}"
            )
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"model folder {model!r} has no config.json; pass the folder written by save_pretrained()"
            )
        return
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json")
        if not isinstance(cached, str):
            raise _not_found(model, "is not in the local cache and HF_HUB_OFFLINE is set")


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


def _quantization_config(quantization: str, dtype: torch.dtype) -> Any:
    if quantization == "none":
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
            bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=list(SKIP_QUANTIZATION_MODULES),
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(SKIP_QUANTIZATION_MODULES))


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    return getattr(torch, name)


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load (or return the cached) model and processor for ``spec``; one copy per process."""
    with _CACHE_LOCK:
        cached = _CACHE.get(spec)
        if cached is not None:
            return cached
        load_lock = _LOAD_LOCKS.setdefault(spec, threading.Lock())
    with load_lock:  # two threads asking for the same model wait for one load
        with _CACHE_LOCK:
            cached = _CACHE.get(spec)
        if cached is not None:
            return cached
        loaded = _load_uncached(spec)
        with _CACHE_LOCK:
            _CACHE[spec] = loaded
        return loaded


def cached_models() -> list[ModelSpec]:
    """The specs of the models loaded in this process."""
    with _CACHE_LOCK:
        return list(_CACHE)


def unload_model(spec: ModelSpec) -> bool:
    """Drop a model from the cache (its memory is freed once no ChatLlava uses it)."""
    with _CACHE_LOCK:
        removed = _CACHE.pop(spec, None) is not None
    if removed:
        import gc

        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass
    return removed


def _load_uncached(spec: ModelSpec) -> LoadedModel:
    from agent.hub_access import hub_load_kwargs

    check_model_available(spec.model)
    hub = hub_load_kwargs(spec.model, what="chat model")  # never minutes of retries against an unreachable hub
    dtype = _torch_dtype(spec.dtype)
    quantization_config = _quantization_config(spec.quantization, dtype)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    started = time.perf_counter()
    logger.info("Loading processor for %s", spec.model)
    common = {"trust_remote_code": spec.trust_remote_code, **hub}
    try:
        processor = AutoProcessor.from_pretrained(spec.model, **common)
    except OSError as exc:
        raise _load_error(spec, exc, "processor") from exc
    except ValueError as exc:
        raise ModelLoadError(
            f"the processor of {spec.model!r} cannot be loaded ({exc}); is it an image-text-to-text "
            "(LLaVA-family) checkpoint?"
        ) from exc
    logger.info(
        "Loading weights of %s (quantization=%s, dtype=%s, device=%s)",
        spec.model,
        spec.quantization,
        spec.dtype,
        spec.device,
    )
    kwargs: dict[str, Any] = {
        **common,
        "dtype": dtype,
        "use_safetensors": True,
        "device_map": {"": spec.device},
        "low_cpu_mem_usage": True,
    }
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    try:
        model = AutoModelForImageTextToText.from_pretrained(spec.model, **kwargs)
    except OSError as exc:
        raise _load_error(spec, exc, "weights") from exc
    except (ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"{spec.model!r} cannot be loaded as an image-text-to-text model ({exc}); pass a LLaVA-family "
            "checkpoint (llava-1.5, llava-next, llava-interleave, llava-onevision)"
        ) from exc
    except (ImportError, RuntimeError) as exc:
        if quantization_config is not None:
            raise QuantizationError(
                f"loading {spec.model!r} with quantization={spec.quantization!r} failed ({exc}); check the "
                "bitsandbytes install (`pip install -U bitsandbytes`) or use quantization='none'"
            ) from exc
        raise ModelLoadError(f"loading {spec.model!r} failed: {exc}") from exc
    if spec.adapter:
        model = _apply_adapter(model, spec)
    model.eval()
    logger.info("Loaded %s in %.1f s", spec.model, time.perf_counter() - started)
    return LoadedModel(spec=spec, model=model, processor=processor)


def _load_error(spec: ModelSpec, exc: OSError, what: str) -> ModelLoadError | ModelNotFoundError:
    message = str(exc)
    if "safetensors" in message.lower() and Path(spec.model).exists():
        return ModelLoadError(
            f"the folder {spec.model!r} has no safetensors weights; only safetensors are loaded "
            "(re-save the model with save_pretrained(safe_serialization=True))"
        )
    if _offline() or "offline" in message.lower() or "connect" in message.lower():
        return _not_found(
            spec.model, f"cannot be loaded ({what}: {message.splitlines()[0] if message else exc})"
        )
    return ModelNotFoundError(
        f"the {what} of model {spec.model!r} cannot be found ({message.splitlines()[0] if message else exc}); "
        "check the hub id or pass a local folder"
    )


def _apply_adapter(model: Any, spec: ModelSpec) -> Any:
    assert spec.adapter is not None
    folder = Path(spec.adapter)
    if not folder.is_dir():
        raise ModelLoadError(
            f"adapter folder {spec.adapter!r} does not exist; pass the folder a training run saved"
        )
    if not (folder / "adapter_config.json").is_file():
        raise ModelLoadError(
            f"{spec.adapter!r} is not a LoRA adapter folder (no adapter_config.json); pass the folder written "
            "by save_pretrained() of a PEFT model"
        )
    from agent.weights_policy import check_adapter_weights

    check_adapter_weights(folder, spec.allow_pickle_weights)
    from peft import PeftModel

    logger.info("Applying adapter %s", spec.adapter)
    try:
        return PeftModel.from_pretrained(model, spec.adapter, is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(
            f"adapter {spec.adapter!r} does not match the model {spec.model!r} ({exc}); apply it to the base "
            "model it was trained on"
        ) from exc
