"""Training checkpoints that always leave a complete one to resume from.

A checkpoint is *complete* once every file of it is on disk and its marker
(:data:`COMPLETE_MARKER`) is written; resuming trusts only complete checkpoints. The Trainer's own
rotation deletes old checkpoints right after saving a new one and *before* anything can mark the
new one complete -- with ``save_total_limit=1`` a kill at that moment left no complete checkpoint
and the next run started from step 0. So the Trainer's rotation is switched off and
:func:`finish_checkpoint` does it in this order instead:

1. flush every file of the new checkpoint to disk;
2. write its marker atomically (temporary file, rename) -- now it is complete;
3. only then delete what the limit no longer keeps: older complete checkpoints beyond the
   ``keep`` newest, and incomplete ones older than the newest complete one.

At every instant the newest complete checkpoint written so far exists.

A resumed run must be the run its checkpoints came from: :func:`write_run_identity` records, in
the checkpoint folder, the settings that decide what is trained (:data:`RUN_SETTINGS`: the base
model, the data, the adapter's shape, the schedule); :func:`run_differences` lists the ones a
resume would change, so it can refuse instead of continuing another run's weights.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from agent.core.private_files import write_file_atomically

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "checkpoint_complete.json"
RUN_IDENTITY = "run_settings.json"
RUN_SETTINGS = (
    "model", "data", "format", "image_folder", "eval_data", "eval_split", "max_length", "max_image_pixels",
    "skip_invalid", "quantization", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "lora_layers",
    "train_projector", "shared_prefix", "batch_size", "gradient_accumulation_steps", "learning_rate",
    "lr_scheduler", "warmup_ratio", "weight_decay", "epochs", "max_steps", "seed",
)
"""Training settings a resumed run must share with the run that wrote its checkpoints (the rest --
logging, saving, device, dtype -- may change between the two)."""


def _comparable(name: str, value: object) -> object:
    if name in ("model", "data", "image_folder", "eval_data") and isinstance(value, str) and value:
        path = Path(value).expanduser()
        return str(path.resolve()) if path.exists() else value  # a local path however it is spelt; a hub id as is
    return value


def write_run_identity(checkpoint_dir: Path, settings: dict) -> Path:
    """Record the settings of the run starting in ``checkpoint_dir`` (atomically)."""
    payload = json.dumps({name: _comparable(name, settings.get(name)) for name in RUN_SETTINGS}, indent=2)
    path = Path(checkpoint_dir) / RUN_IDENTITY
    write_file_atomically(path, lambda handle: handle.write(payload.encode("utf-8")), mode=0o644)
    return path


def run_differences(checkpoint_dir: Path, settings: dict) -> list[tuple[str, object, object]] | None:
    """``(setting, the checkpoints' value, this run's value)`` for each setting that differs; None when
    the checkpoints carry no record (written before it existed)."""
    try:
        recorded = json.loads((Path(checkpoint_dir) / RUN_IDENTITY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return [
        (name, recorded[name], _comparable(name, settings.get(name)))
        for name in RUN_SETTINGS
        if name in recorded and recorded[name] != _comparable(name, settings.get(name))
    ]


def checkpoint_step(path: Path) -> int | None:
    name = path.name
    if name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX) :].isdigit():
        return int(name[len(CHECKPOINT_PREFIX) :])
    return None


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def mark_complete(folder: Path, step: int) -> None:
    """Flush ``folder`` to disk, then mark it complete with one atomic rename."""

    _fsync_tree(folder)
    payload = json.dumps({"global_step": step}).encode("utf-8")
    write_file_atomically(folder / COMPLETE_MARKER, lambda handle: handle.write(payload), mode=0o644)


def rotate(checkpoint_dir: Path, keep: int | None) -> list[Path]:
    """Delete what ``keep`` no longer needs, never the newest complete checkpoint; returns what went."""
    folders = sorted(
        (p for p in Path(checkpoint_dir).iterdir() if p.is_dir() and checkpoint_step(p) is not None),
        key=lambda p: checkpoint_step(p) or 0,
    )
    complete = [p for p in folders if is_complete(p)]
    if not complete:
        return []
    newest = checkpoint_step(complete[-1]) or 0
    doomed = [p for p in folders if not is_complete(p) and (checkpoint_step(p) or 0) < newest]
    if keep is not None:
        doomed += complete[: max(0, len(complete) - max(keep, 1))]
    for path in doomed:
        logger.info("Deleting older checkpoint %s (save_total_limit=%s)", path, keep)
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def finish_checkpoint(checkpoint_dir: Path, step: int, keep: int | None) -> None:
    """Mark ``checkpoint-<step>`` complete, then rotate (see the module docstring for the order)."""
    folder = Path(checkpoint_dir) / f"{CHECKPOINT_PREFIX}{step}"
    if not folder.is_dir():
        return
    mark_complete(folder, step)
    rotate(Path(checkpoint_dir), keep)


__all__ = ["CHECKPOINT_PREFIX", "COMPLETE_MARKER", "RUN_IDENTITY", "RUN_SETTINGS", "finish_checkpoint", "is_complete",
           "mark_complete", "rotate", "run_differences", "write_run_identity"]
