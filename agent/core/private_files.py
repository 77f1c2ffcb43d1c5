"""Private by default: the data folder is the user's alone, and temporary files cannot be hijacked.

* :func:`private_dir` creates a folder (and any missing parent) with mode ``0700`` -- the
  conversations, typed-line history, Chroma store, attachments, artifacts and leases all live in
  such folders, so other users of the machine can read none of it whatever the umask is;
* :func:`ensure_private_file` creates a file ``0600`` before a library opens it (the SQLite
  database, whose ``-wal``/``-shm`` files inherit its mode; the chat's history file);
* :func:`exclusive_temp` creates a temporary file *in the target folder* (so the final rename
  stays on one file system) under an unpredictable name with ``O_CREAT | O_EXCL | O_NOFOLLOW``:
  a file or symlink planted at that name makes the open fail instead of being written through;
* :func:`write_file_atomically` writes a whole file that way and renames it into place.

:func:`is_private` tells whether a folder is readable by others (``llava-agent doctor`` reports a
data folder created by an older version with the umask's ``0755``).
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` and its missing parents with mode 0700 (existing folders are left as they are)."""
    path = Path(path).expanduser()
    missing: list[Path] = []
    probe = path
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(folder, PRIVATE_DIR_MODE)  # mkdir's mode passes through the umask; say it exactly
    return path


def ensure_private_file(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` empty with mode 0600 unless it exists (a planted symlink there is refused)."""
    path = Path(path).expanduser()
    private_dir(path.parent)
    try:
        os.close(os.open(path, _CREATE_FLAGS, PRIVATE_FILE_MODE))
    except FileExistsError:
        pass
    return path


def exclusive_temp(folder: str | os.PathLike[str], stem: str, suffix: str = "", *,
                   mode: int = PRIVATE_FILE_MODE) -> tuple[int, Path]:
    """Create a new hidden file in ``folder`` under an unpredictable name; returns ``(fd, path)``.

    Opened with ``O_CREAT | O_EXCL | O_NOFOLLOW``: nothing that already exists at the name (a file,
    a symlink to somewhere else) is ever opened or followed.
    """
    folder = Path(folder)
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:60] or "file"
    for _ in range(100):
        path = folder / f".{stem}.{secrets.token_hex(8)}.tmp{suffix}"
        try:
            return os.open(path, _CREATE_FLAGS, mode), path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {folder}")


def write_file_atomically(
    path: str | os.PathLike[str], write: Callable[[BinaryIO], object], *, mode: int = PRIVATE_FILE_MODE
) -> Path:
    """Write ``path`` whole or not at all: ``write(handle)`` fills a temporary file, fsync, rename.

    Readers see the old content or the new, never half; the temporary file is removed on failure.
    """
    path = Path(path)
    fd, tmp = exclusive_temp(path.parent, path.name, mode=mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def is_private(path: str | os.PathLike[str]) -> bool:
    """Whether a folder or file is closed to the group and to others."""
    return not (os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO))


__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "ensure_private_file",
    "exclusive_temp",
    "is_private",
    "private_dir",
    "write_file_atomically",
]
