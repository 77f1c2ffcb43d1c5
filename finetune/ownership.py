"""Destructive options check what they destroy.

``finetune train --overwrite``, ``finetune merge --overwrite`` and ``finetune clip|caption --overwrite``
replace their output folder, and a new training run deletes the checkpoints of an earlier one. Each folder this project writes for
that carries a marker file, :data:`MARKER_NAME` (``{"created_by": "llava-agent", "kind": ...}``), and
a folder is only ever replaced or deleted when it is recognisably this project's own:

* an output folder: it holds the marker (or, written before the marker existed, an adapter's
  ``adapter_config.json`` with its ``training_config.json``, a merged model's
  ``merged_from.json`` with its ``config.json``, or a fine-tuned CLIP/BLIP's
  ``finetune_config.json`` with its ``finetune_metrics.json``), or it is empty;
* a checkpoint folder: it holds the marker, or nothing but ``checkpoint-<step>`` folders.

Nor is an output folder that is, or holds, what the run reads (:func:`check_not_an_input`).
Anything else -- ``--output-dir ~/Documents --overwrite`` -- is refused with a
:class:`~agent.core.errors.ConfigError` that names the folder and a few of the files in it.
"""

from __future__ import annotations

import json
from pathlib import Path

from agent.core.errors import ConfigError

MARKER_NAME = "llava_agent_artifact.json"
KINDS = ("adapter", "merged_model", "fine_tuned_model", "checkpoints")
OUTPUT_KINDS = ("adapter", "merged_model", "fine_tuned_model")
"""What ``--overwrite`` may replace."""
_LEGACY = {"adapter": ("adapter_config.json", "training_config.json"), "merged_model": ("merged_from.json", "config.json"),
           "fine_tuned_model": ("finetune_config.json", "finetune_metrics.json")}


def write_marker(folder: str | Path, kind: str) -> Path:
    """Mark ``folder`` as this project's ``kind`` of output (written inside the folder being built)."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    path = Path(folder) / MARKER_NAME
    path.write_text(json.dumps({"created_by": "llava-agent", "kind": kind}) + "\n", encoding="utf-8")
    return path


def marked_kind(folder: str | Path) -> str | None:
    """What this project wrote in ``folder`` (``adapter``, ``merged_model``, ``checkpoints``), or None."""
    folder = Path(folder)
    try:
        data = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict) and data.get("created_by") == "llava-agent" and data.get("kind") in KINDS:
        return data["kind"]
    for kind, names in _LEGACY.items():
        if all((folder / name).is_file() for name in names):
            return kind
    return None


def _sample(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_replaceable(folder: str | Path, option: str = "--output-dir") -> None:
    """Refuse to replace ``folder`` unless it is missing, empty, or an adapter/model this project wrote."""
    folder = Path(folder).expanduser()
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise ConfigError(
            f"{option} {folder} is {'a symlink' if folder.is_symlink() else 'a file'}, not a folder this project "
            "wrote; --overwrite only replaces an adapter or model folder it wrote. Choose another folder"
        )
    if not any(folder.iterdir()) or marked_kind(folder) in OUTPUT_KINDS:
        return
    raise ConfigError(
        f"{option} {folder} holds files that are not an adapter or model written by llava-agent "
        f"({_sample(folder)}; no {MARKER_NAME}), so --overwrite will not replace it. Choose a new folder, or "
        "move that one aside yourself"
    )


def check_not_an_input(folder: str | Path, inputs: dict[str, str | Path | None], option: str = "--output-dir") -> None:
    """Refuse an output ``folder`` that is, or holds, one of the run's ``inputs`` (``{option: path}``).

    Replacing such a folder would delete what the run reads -- ``merge A --output-dir A --overwrite``
    would turn the adapter into the merged model, ``train --model M --output-dir M`` the base
    model into an adapter. A hub id (no such local path) is never an input folder here.
    """
    target = Path(folder).expanduser().resolve()
    for name, value in inputs.items():
        if not value:
            continue
        source = Path(value).expanduser()
        if not source.exists():
            continue  # a hub id, or a path whose own check reports it
        source = source.resolve()
        if source == target or target in source.parents:
            where = "is" if source == target else "holds"
            raise ConfigError(
                f"{option} {folder} {where} the {name} this run reads ({value}); writing the result there "
                f"would replace it. Choose another {option}"
            )


def check_checkpoints_deletable(folder: str | Path) -> None:
    """Refuse to delete a checkpoint folder unless it holds only this project's checkpoints."""
    folder = Path(folder).expanduser()
    if folder.is_symlink():
        raise ConfigError(f"checkpoint folder {folder} is a symlink; remove it yourself or choose another --output-dir")
    if not folder.is_dir():
        return
    if marked_kind(folder) == "checkpoints":
        return
    others = [p for p in folder.iterdir() if not (p.is_dir() and p.name.startswith("checkpoint-")
                                                  and p.name[len("checkpoint-"):].isdigit())]
    if others:
        raise ConfigError(
            f"{folder} (where this run keeps its checkpoints) holds files that are not training checkpoints "
            f"({', '.join(sorted(p.name for p in others)[:5])}), so it will not be deleted; choose another "
            "--output-dir or move that folder aside yourself"
        )


__all__ = ["MARKER_NAME", "check_checkpoints_deletable", "check_not_an_input", "check_replaceable", "marked_kind",
           "write_marker"]
