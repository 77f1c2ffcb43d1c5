"""Loading the base model for fine-tuning and choosing what LoRA adapts.

Where and in what precision it trains is decided by :func:`agent.core.runtime.resolve_training_precision`
(QLoRA on CUDA, LoRA elsewhere); the 4-bit recipe is :func:`agent.core.runtime.bitsandbytes_config`,
the same one inference uses.

Everything is read from the model itself (its config and module tree), never from its name:
the language model is the module ``get_decoder()`` returns, the projector is the model's
``multi_modal_projector``, and LoRA targets the linear layers inside the language model only.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from agent.core.errors import ConfigError, ModelLoadError, ModelNotFoundError, QuantizationError
from agent.core.runtime import Placement, bitsandbytes_config, torch_dtype

logger = logging.getLogger(__name__)

def load_processor(model: str) -> Any:
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(model)
    except OSError as exc:
        raise ModelNotFoundError(
            f"no processor found for model {model!r} ({exc}); pass a local checkpoint folder or a Hub id "
            "that is in the local cache (downloads need network access)"
        ) from None


def load_base_model(model: str, placement: Placement) -> Any:
    """Load the LLaVA-family base model for training, 4-bit NF4 when the placement says so."""
    from transformers import AutoModelForImageTextToText

    kwargs: dict[str, Any] = {"dtype": torch_dtype(placement.dtype)}
    if placement.quantization == "4bit":
        kwargs["quantization_config"] = bitsandbytes_config("4bit", placement.dtype)
    if placement.device == "cuda":
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    try:
        loaded = AutoModelForImageTextToText.from_pretrained(model, **kwargs)
    except OSError as exc:
        raise ModelNotFoundError(
            f"base model {model!r} cannot be found ({exc}); pass a local checkpoint folder or a cached Hub id"
        ) from None
    except (ImportError, RuntimeError) as exc:
        error = QuantizationError if placement.quantization == "4bit" else ModelLoadError
        raise error(f"base model {model!r} cannot be loaded ({exc}); try --quantization none") from exc
    if not hasattr(loaded, "get_decoder"):
        raise ModelLoadError(f"model {model!r} has no language model to adapt (no get_decoder())")
    return loaded


def _qualified_name(model: Any, module: Any) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ModelLoadError("the language model is not a submodule of the model")


def language_model_linears(model: Any) -> tuple[str, list[str]]:
    """The language model's qualified name and the sorted leaf names of its linear layers."""
    import torch

    decoder = model.get_decoder()
    prefix = _qualified_name(model, decoder)
    leaves = sorted(
        {name.rsplit(".", 1)[-1] for name, module in decoder.named_modules() if isinstance(module, torch.nn.Linear)}
    )
    if not leaves:
        raise ModelLoadError("the language model has no linear layers for LoRA to adapt")
    return prefix, leaves


def lora_target_pattern(model: Any, target_modules: list[str] | None, last_layers: int | None = None) -> str:
    """A regex matching the chosen linear layers inside the language model, and nothing else.

    The vision tower, the projector and ``lm_head`` are outside the language model, so they are
    never adapted even when they share layer names (CLIP also has ``q_proj``). With
    ``last_layers`` only the last N decoder layers are adapted: backward then stops at the lowest
    of them, which makes each step cheaper.
    """
    prefix, leaves = language_model_linears(model)
    chosen = leaves if target_modules is None else list(target_modules)
    unknown = [name for name in chosen if name not in leaves]
    if unknown:
        raise ConfigError(
            f"target_modules {unknown} are not linear layers of the language model; choose from {', '.join(leaves)}"
        )
    names = "|".join(re.escape(name) for name in chosen)
    if last_layers is None:
        return rf"{re.escape(prefix)}\.(?:.*\.)?(?:{names})"
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise ConfigError("this language model has no `layers` list; drop lora_layers to adapt every layer")
    if not 0 < last_layers <= len(layers):
        raise ConfigError(f"lora_layers should be from 1 to {len(layers)} (the model's decoder layers), got {last_layers}")
    indices = "|".join(str(i) for i in range(len(layers) - last_layers, len(layers)))
    return rf"{re.escape(prefix)}\.layers\.(?:{indices})\.(?:.*\.)?(?:{names})"


def projector_name(model: Any) -> str:
    """Qualified name of the multimodal projector (trained in full when asked)."""
    inner = getattr(model, "model", model)
    projector = getattr(inner, "multi_modal_projector", None)
    if projector is None:
        raise ConfigError("this model has no multi_modal_projector; drop --train-projector")
    return _qualified_name(model, projector)
