"""Find, load and cache LLaVA-family checkpoints for :class:`agent.llava.chat_model.ChatLlava`.

* :func:`resolve_spec` turns user settings into a concrete :class:`ModelSpec`, with the device and
  precision policy of :mod:`agent.core.runtime`.
* :func:`load_model` loads a checkpoint with ``AutoProcessor`` +
  ``AutoModelForImageTextToText`` (safetensors only, no remote code unless asked), quantizes it
  with bitsandbytes when asked (NF4 + double quantization; vision tower, projector and
  ``lm_head`` kept in full precision), applies a LoRA adapter, turns the language model's
  linear layers into int8 weights when asked (:mod:`agent.core.int8_weights`), and keeps it in the one
  :class:`~agent.core.model_manager.ModelManager` under ``("chat", spec)``, so its memory counts
  in the device's budget like every tool model. :func:`use_model` holds it for a generation, so
  it is never evicted mid-reply. Each :class:`LoadedModel` carries a lock that serialises
  generation on it, its prompt cache (:class:`~agent.llava.prefix_cache.PrefixCache`, whose
  bytes are counted in the same budget and which is dropped with the model), and what the decode
  loop builds for it once (a quantized head copy, CUDA graphs).

Failures raise :class:`agent.core.errors.ModelNotFoundError`, :class:`agent.core.errors.QuantizationError`
or :class:`agent.core.errors.ModelLoadError`, each saying what to do.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.core.defaults import CHAT_MODEL_CPU
from agent.core.errors import ModelLoadError, ModelNotFoundError, QuantizationError
from agent.core.hub_access import download_hint, hub_load_kwargs, is_cached, looks_like_folder, offline_mode
from agent.core.model_manager import ModelManager, get_model_manager
from agent.core.runtime import (
    bitsandbytes_config,
    default_chat_model,
    quiet_library_notices,
    resolve_device,
    resolve_precision,
    torch_dtype,
)
from agent.core.weights_policy import check_adapter_weights
from agent.llava.prefix_cache import CacheAccountant, PrefixCache

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)


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
    prefix_cache: PrefixCache = field(default_factory=PrefixCache)
    accelerators: dict[str, Any] = field(default_factory=dict)
    """What the decode loop builds once per model (its parts, a quantized head copy, CUDA graphs)."""
    accelerators_lock: threading.Lock = field(default_factory=threading.Lock)
    extra_bytes: dict[str, int] = field(default_factory=dict)
    """Bytes held beside the weights (prompt cache, head copies), counted in the device's budget."""
    report_extra_bytes: Callable[[int], None] | None = field(default=None, repr=False)

    def set_extra_bytes(self, name: str, size: int) -> None:
        """Record that ``name`` holds ``size`` bytes beside the weights (and tell the model manager)."""
        self.extra_bytes[name] = int(size)
        if self.report_extra_bytes is not None:
            self.report_extra_bytes(sum(self.extra_bytes.values()))

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
    model = str(model) if model else default_chat_model(device)
    local = Path(model).expanduser()
    if local.exists():
        model = str(local.resolve())
    size = checkpoint_bytes(model) if quantization == "auto" and device == "cpu" else None
    quantization, dtype = resolve_precision(quantization, dtype, device, weights_bytes=size)
    adapter_path = str(Path(adapter).expanduser().resolve()) if adapter else None
    return ModelSpec(model, quantization, dtype, device, adapter_path, trust_remote_code, allow_pickle_weights)


def checkpoint_bytes(model: str) -> int | None:
    """Bytes of a checkpoint's safetensors weights (a folder, or a hub id in the local cache); None: unknown."""
    path = Path(model).expanduser()
    if path.is_dir():
        return sum(f.stat().st_size for f in path.glob("*.safetensors")) or None
    if path.is_absolute() or model.startswith((".", "~")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        index = try_to_load_from_cache(model, "model.safetensors.index.json")
        if isinstance(index, str):
            import json

            return int(json.loads(Path(index).read_text(encoding="utf-8"))["metadata"]["total_size"])
        single = try_to_load_from_cache(model, "model.safetensors")
        return Path(single).stat().st_size if isinstance(single, str) else None
    except (ImportError, OSError, ValueError, KeyError, TypeError):  # an odd id or a damaged cache: unknown
        return None


def hf_cache_dir() -> str:
    """The Hugging Face hub cache folder models are read from."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _not_found(model: str, reason: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"model {model!r} {reason}. Looked in the Hugging Face cache {hf_cache_dir()}. Either download it "
        f"once while online (`{download_hint(model)}`) or pass the path of a local folder holding "
        "the checkpoint (config.json, *.safetensors, processor files): ChatLlava(model='/path/to/folder')"
    )


def check_model_available(model: str) -> None:
    """Raise :class:`ModelNotFoundError` early when ``model`` cannot be found (offline and not cached)."""
    path = Path(model).expanduser()
    if looks_like_folder(model) or path.exists():
        if not path.exists():
            raise ModelNotFoundError(
                f"model folder {model!r} does not exist; pass an existing folder or a hub id like {CHAT_MODEL_CPU}"
            )
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"model folder {model!r} has no config.json; pass the folder written by save_pretrained()"
            )
        return
    if offline_mode() and not is_cached(model):
        raise _not_found(model, "is not in the local cache and HF_HUB_OFFLINE is set")


def load_model(spec: ModelSpec, manager: ModelManager | None = None) -> LoadedModel:
    """The model and processor for ``spec``, loaded once and kept by the model manager."""
    with use_model(spec, manager) as loaded:
        return loaded


@contextmanager
def use_model(spec: ModelSpec, manager: ModelManager | None = None) -> Iterator[LoadedModel]:
    """Hold the model for ``spec`` (loading it if needed) while in the block: it is not evicted meanwhile.

    The size of a checkpoint in memory is known only once loaded (quantization and dtype change
    it), so room in the device's budget is made with the measured size.
    """
    manager = manager or get_model_manager()
    key = ("chat", spec)
    with manager.use(key, lambda: _load_uncached(spec), device=spec.device) as loaded:
        if loaded.report_extra_bytes is None:
            _count_extras_in_budget(loaded, manager, key)
        yield loaded


def _count_extras_in_budget(loaded: LoadedModel, manager: ModelManager, key: Any) -> None:
    """The prompt cache and head copies count in the model's budget; the cache grows only into free room."""

    def room() -> int | None:
        free = manager.room_for_extra(key)
        if free is None:
            return None
        return free - sum(size for name, size in loaded.extra_bytes.items() if name != "prefix_cache")

    loaded.report_extra_bytes = lambda total: manager.set_extra_bytes(key, total)
    loaded.prefix_cache.accountant = CacheAccountant(
        room=room, report=lambda size: loaded.set_extra_bytes("prefix_cache", size)
    )
    if loaded.extra_bytes:
        loaded.report_extra_bytes(sum(loaded.extra_bytes.values()))


def _load_uncached(spec: ModelSpec) -> LoadedModel:
    check_model_available(spec.model)
    dtype = torch_dtype(spec.dtype)
    quantization_config = bitsandbytes_config(spec.quantization, spec.dtype)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    started = time.perf_counter()
    logger.info("Loading processor for %s", spec.model)
    hub = hub_load_kwargs(spec.model, what="chat model")  # never minutes of retries against an unreachable hub
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
    if spec.quantization == "int8-weights":
        from agent.core.int8_weights import quantize_linear_layers

        _check_adapter_takes_int8(model, spec)
        quantize_linear_layers(model)
    model.eval()
    _ensure_end_of_reply(model, processor, spec, hub)
    logger.info("Loaded %s in %.1f s", spec.model, time.perf_counter() - started)
    return LoadedModel(spec=spec, model=model, processor=processor)


def _check_adapter_takes_int8(model: Any, spec: ModelSpec) -> None:
    """Int8 weights serve plain LoRA only: DoRA reads its base layers' full weights at every step."""
    for name, config in (getattr(model, "peft_config", None) or {}).items():
        if getattr(config, "use_dora", False):
            raise ModelLoadError(
                f"adapter {spec.adapter!r} ({name}) is a DoRA adapter, which needs the full-precision weights of "
                "the layers it adapts; load it with quantization='none' or '4bit' instead of 'int8-weights'"
            )


def _ensure_end_of_reply(model: Any, processor: Any, spec: ModelSpec, hub: dict[str, Any]) -> None:
    """Give a checkpoint whose generation config names no end-of-sequence token the tokenizer's.

    Replies stop at the generation config's EOS, and a finished tool call or JSON reply is ended by
    forcing it; without one a reply runs to its token budget. A ``generation_config.json`` that
    sets ``"eos_token_id": null`` on purpose is left as it is.
    """
    config = getattr(model, "generation_config", None)
    if config is None or config.eos_token_id not in (None, []) or _sets_eos_explicitly(spec, hub):
        return
    tokenizer = getattr(processor, "tokenizer", processor)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        logger.warning("%s names no end-of-sequence token (generation config and tokenizer): replies run to their "
                       "token budget; set eos_token_id in its generation_config.json", spec.model)
        return
    config.eos_token_id = eos
    logger.info("%s: its generation config names no end-of-sequence token; using the tokenizer's (%d)", spec.model, eos)


def _sets_eos_explicitly(spec: ModelSpec, hub: dict[str, Any]) -> bool:
    """Whether the checkpoint's ``generation_config.json`` has an ``eos_token_id`` key (even null)."""
    import json

    from transformers.utils import cached_file

    try:
        path = cached_file(spec.model, "generation_config.json", **hub, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
        return bool(path) and "eos_token_id" in json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def _load_error(spec: ModelSpec, exc: OSError, what: str) -> ModelLoadError | ModelNotFoundError:
    message = str(exc)
    if "safetensors" in message.lower() and Path(spec.model).exists():
        return ModelLoadError(
            f"the folder {spec.model!r} has no safetensors weights; only safetensors are loaded "
            "(re-save the model with save_pretrained(safe_serialization=True))"
        )
    if offline_mode() or "offline" in message.lower() or "connect" in message.lower():
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
    check_adapter_weights(folder, spec.allow_pickle_weights)
    from peft import PeftModel

    logger.info("Applying adapter %s", spec.adapter)
    try:
        with quiet_library_notices():
            return PeftModel.from_pretrained(model, spec.adapter, is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(
            f"adapter {spec.adapter!r} does not match the model {spec.model!r} ({exc}); apply it to the base "
            "model it was trained on"
        ) from exc
