"""Fold an adapter into a full-precision copy of its base model and save a standalone model folder.

The folder holds the merged weights (safetensors), the config and the processor, so
``ChatLlava(model=FOLDER)`` loads it like any checkpoint. Merging needs full-precision base
weights: an adapter trained with QLoRA is merged into the base it was quantized *from* (loaded
here without quantization). A base that is itself saved in 4-bit is refused, since its original
weights are gone and rounding the merged sum back to 4 bits would lose most of the adapter.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from agent.core.errors import ConfigError, ModelLoadError, QuantizationError
from agent.core.runtime import quiet_library_notices, torch_dtype
from finetune.folders import publish_folder, staging_folder
from finetune.ownership import check_not_an_input, check_replaceable, write_marker

logger = logging.getLogger(__name__)

MERGE_INFO_NAME = "merged_from.json"


def _adapter_base(adapter: Path) -> str | None:
    config_path = adapter / "adapter_config.json"
    if not config_path.is_file():
        raise ModelLoadError(
            f"{adapter} is not an adapter folder (no adapter_config.json); pass the output_dir of a training run"
        )
    return json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path")


def merge(
    adapter: str | Path,
    output_dir: str | Path,
    *,
    base: str | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Merge ``adapter`` into ``base`` (default: the base named in the adapter) and save to ``output_dir``.

    ``dtype`` is the precision of the merged weights (``float32``, ``bfloat16`` or ``float16``).
    Returns the folder, written atomically (temporary sibling folder, then ``os.replace``).
    """

    adapter = Path(adapter).expanduser()
    output_dir = Path(output_dir).expanduser()
    base = base or _adapter_base(adapter)
    if not base:
        raise ConfigError(f"the adapter {adapter} does not name its base model; pass --base")
    _adapter_base(adapter)  # checks the folder even when base is given
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype should be one of float32, bfloat16, float16, got {dtype!r}")
    check_not_an_input(output_dir, {"adapter": adapter, "base model": base})
    if output_dir.exists() and not overwrite:
        raise ConfigError(f"output_dir {output_dir} already exists; pass --overwrite or choose another folder")

    check_replaceable(output_dir)  # --overwrite replaces only an adapter or merged model this project wrote

    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    try:
        base_config = AutoConfig.from_pretrained(base)
    except OSError as exc:
        raise ModelLoadError(f"base model {base!r} cannot be found ({exc}); pass --base with a local folder") from None
    quantization = getattr(base_config, "quantization_config", None)
    if quantization:
        method = quantization.get("quant_method") if isinstance(quantization, dict) else quantization
        raise QuantizationError(
            f"base model {base!r} is saved quantized ({method}); merging into quantized weights would round the "
            "adapter away. Pass --base with the full-precision checkpoint it was quantized from (the one QLoRA "
            "loads in 4-bit), e.g. the original Hub id"
        )
    logger.info("Loading %s in %s to merge %s", base, dtype, adapter)
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch_dtype(dtype))
    processor = AutoProcessor.from_pretrained(base)
    try:
        with quiet_library_notices():
            model = PeftModel.from_pretrained(model, str(adapter))
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"adapter {adapter} does not fit base {base!r} ({exc}); pass the base it was trained on") from exc
    merged = model.merge_and_unload(progressbar=True)
    return _save_atomically(merged, processor, output_dir, {"base": base, "adapter": str(adapter), "dtype": dtype})


def _save_atomically(model: Any, processor: Any, output_dir: Path, info: dict[str, Any]) -> Path:
    staging = staging_folder(output_dir)
    model.save_pretrained(staging, safe_serialization=True)
    processor.save_pretrained(staging)
    (staging / MERGE_INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    write_marker(staging, "merged_model")
    check_replaceable(output_dir)
    publish_folder(staging, output_dir)
    logger.info("Merged model saved to %s", output_dir)
    return output_dir
