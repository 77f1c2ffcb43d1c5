"""Atomic folder writes: build the whole folder beside its target, then swap it into place.

A process killed at any moment leaves a complete folder at the target -- the previous one or
the new one, never a half-written one and never none. Leftovers of a killed run are hidden
dot-folders beside the target (``.NAME.tmp-PID``), removed by the next :func:`staging_folder`.

The swap is one atomic ``renameat2(RENAME_EXCHANGE)`` on Linux (``renamex_np(RENAME_SWAP)`` on
macOS): the new folder takes the target's name and the old one takes the staging name in the
same step, then the old one is deleted. Where the filesystem cannot exchange (NFS, some FUSE
filesystems, other systems) the old folder is renamed aside to ``.NAME.old-PID`` and the new one
renamed in: there, a kill between those two renames leaves no folder at the target for an
instant, and the next :func:`staging_folder` puts the aside folder back.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h
_RENAME_SWAP = 2  # macOS sys/stdio.h
# errors meaning "this system or filesystem cannot exchange", as opposed to a real failure
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV}


@functools.lru_cache(maxsize=1)
def _exchange_call() -> Callable[[bytes, bytes], int] | None:
    """The C call that atomically swaps two paths, or None where there is none."""
    import ctypes
    import ctypes.util

    try:
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            renameat2 = libc.renameat2  # glibc 2.28+, musl 1.2.5+
            renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            renameat2.restype = ctypes.c_int
            return lambda a, b: renameat2(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE)
        if sys.platform == "darwin":
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            renamex_np = libc.renamex_np  # macOS 10.12+
            renamex_np.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
            renamex_np.restype = ctypes.c_int
            return lambda a, b: renamex_np(a, b, _RENAME_SWAP)
    except (OSError, AttributeError):
        pass
    return None


def exchange_paths(first: Path, second: Path) -> bool:
    """Atomically swap two existing paths; False when this system or filesystem cannot do it."""
    import ctypes

    call = _exchange_call()
    if call is None:
        return False
    if call(os.fsencode(first), os.fsencode(second)) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every system (Windows); the renames are still atomic
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def staging_folder(target: Path) -> Path:
    """An empty hidden sibling of ``target`` to write into; leftovers of killed runs are cleaned first.

    A publish killed midway on a filesystem without atomic exchange may have left the previous
    folder aside as ``.NAME.old-PID`` with nothing at ``target``: it is put back.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    aside = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if aside and not target.exists():
        logger.warning("Restoring %s from %s, left aside by an interrupted save", target, aside[-1])
        os.replace(aside.pop(), target)
    for stale in [*aside, *target.parent.glob(f".{target.name}.tmp-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    # a fresh folder under an unpredictable name (mkdtemp: created exclusively, mode 0700), never one
    # that already exists -- a folder or symlink planted at a predictable name would be written through
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))


def publish_folder(staging: Path, target: Path) -> Path:
    """Flush ``staging`` to disk and put it at ``target`` in one atomic step, replacing what was there."""
    for path in staging.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_folder(staging)
    if not target.exists():
        os.replace(staging, target)
    elif exchange_paths(staging, target):
        _fsync_folder(target.parent)
        shutil.rmtree(staging, ignore_errors=True)  # the previous folder, now under the staging name
    else:
        aside = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, aside)
        os.replace(staging, target)
        shutil.rmtree(aside, ignore_errors=True)
    _fsync_folder(target.parent)
    return target
