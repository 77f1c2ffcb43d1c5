"""Weights load from safetensors only, unless the user opts in to pickle files.

``.bin``/``.pt`` checkpoints are Python pickles: loading one can run code its author put in it.
The chat model's base weights have always been loaded with ``use_safetensors=True``; the same
rule covers LoRA adapters (``model.allow_pickle_weights``) and the tools' models -- captioning,
image generation, CLIP, VITS, the text embedder (``tools.allow_pickle_weights``). With the
setting off (the default) a checkpoint that ships only pickle weights is refused with a message
saying how to convert it, or how to opt in for a source the user trusts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.core.errors import ModelLoadError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def weight_kwargs(allow_pickle: bool) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments: safetensors only, unless pickle files are allowed."""
    return {} if allow_pickle else {"use_safetensors": True}


def check_adapter_weights(folder: str | Path, allow_pickle: bool, setting: str = "model.allow_pickle_weights") -> None:
    """Refuse an adapter folder whose weights exist only as pickle files (unless allowed)."""
    folder = Path(folder)
    if allow_pickle or any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise ModelLoadError(
            f"adapter {folder} holds its weights only as {pickled[0]}, a pickle file (loading one can run code); "
            "re-save it with safetensors (PeftModel.save_pretrained(folder, safe_serialization=True)), or, if you "
            f"trust where it came from, set {setting} = true"
        )


__all__ = ["PICKLE_SUFFIXES", "check_adapter_weights", "weight_kwargs"]
