"""Atomic folder writes: build the whole folder beside its target, then move it into place.

A process killed at any moment leaves either the previous folder or the new one at the target,
never a half-written one; leftovers of killed runs are hidden dot-folders removed next time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def staging_folder(target: Path) -> Path:
    """A new empty hidden sibling of ``target`` to write into (stale ones from killed runs removed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    # a fresh folder under an unpredictable name (mkdtemp: created exclusively, mode 0700), never one
    # that already exists -- a folder or symlink planted at a predictable name would be written through
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))


def publish_folder(staging: Path, target: Path) -> Path:
    """Flush ``staging`` to disk and move it to ``target``, replacing what was there."""
    for path in staging.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    previous = None
    if target.exists():
        previous = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, previous)
    os.replace(staging, target)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    return target
