"""Where files may be read and written: allowed-folder checks, artifact files, atomic writes.

Every path a tool reads is resolved fully (``..`` segments and symlinks included) before it is
compared with the allowed folders, so ``../secret.png``, ``/etc/passwd`` and a symlink pointing
out of an allowed folder are all refused the same way. Files a tool writes go into the artifacts
folder under a fresh name with a random part, written to an exclusively created temporary file
first and then linked into place, so an existing file is never overwritten, a reader never sees
half a file, and nobody can guess a file's name from when it was made and what it shows.

Refusals name the folders and where a path resolves, for the person at this machine; a message
shown to someone else goes through :func:`without_server_paths` first.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from agent.core.errors import ImageError, InputError, PathNotAllowedError, ToolError
from agent.core.images import open_image_file
from agent.core.private_files import exclusive_temp, private_dir, write_file_atomically
from agent.core.untrusted import shortened

if TYPE_CHECKING:
    from PIL import Image

ADD_FOLDER_ADVICE = " or add its folder to tools.allowed_dirs"
_QUOTED = r"""(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")"""
_FOLDER_LIST = re.compile(rf" \({_QUOTED}(?:, {_QUOTED})*\)")
_RESOLVES_HINT = re.compile(rf" \(it resolves to {_QUOTED}\)")


def _describe(folders: Iterable[str | os.PathLike[str]]) -> str:
    """The allowed folders for a message: ``one of the allowed folders ('/a', '/b')`` (each quoted, so
    :func:`without_server_paths` can take the list out exactly)."""
    listed = ", ".join(repr(str(f)) for f in folders)
    return f"one of the allowed folders ({listed})" if listed else "an allowed folder (none is configured)"


def without_server_paths(text: str) -> str:
    """``text`` without the folder lists, resolved paths and config advice that this module's refusals hold.

    For a message shown to someone other than the person at this machine: what the path sent
    resolves to and which folders the machine reads are not theirs to know, and tools.allowed_dirs
    is not theirs to change. The paths quoted in such a message are the ones given.
    """
    text = _RESOLVES_HINT.sub("", text)
    text = _FOLDER_LIST.sub("", text)
    return text.replace(ADD_FOLDER_ADVICE, "")


def resolve_allowed_path(path: str | os.PathLike[str], allowed_dirs: Iterable[str | os.PathLike[str]]) -> Path:
    """Resolve ``path`` (relative to the working directory) and check it lies in an allowed folder.

    Symlinks are followed before the check, so a link inside an allowed folder that points
    outside of it is refused. Raises :class:`PathNotAllowedError` naming the path and the folders.
    """
    if path is None or str(path).strip() == "":
        raise InputError("the path is empty; give the path of a file under one of the allowed folders")
    raw = Path(os.fspath(path)).expanduser()
    try:
        resolved = raw.resolve(strict=False)
    except (RuntimeError, OSError, ValueError) as exc:  # a symlink loop, a name no file system takes
        raise InputError(
            f"path {str(path)!r} cannot be resolved ({exc}); it may be a symlink that points to itself -- fix or "
            "remove the link"
        ) from None
    allowed = [Path(d).expanduser().resolve(strict=False) for d in allowed_dirs]
    for folder in allowed:
        if resolved == folder or resolved.is_relative_to(folder):
            return resolved
    hint = f" (it resolves to {str(resolved)!r})" if str(resolved) != str(raw) else ""
    raise PathNotAllowedError(
        f"path {str(path)!r} is outside the allowed folders{hint}; use a path under {_describe(allowed)}"
        f"{ADD_FOLDER_ADVICE}"
    )


def check_readable_file(path: str | os.PathLike[str], allowed_dirs: Iterable[str | os.PathLike[str]]) -> Path:
    """Resolve and check a path: allowed, exists, is a regular file, is not empty."""
    allowed = list(allowed_dirs)
    resolved = resolve_allowed_path(path, allowed)
    try:
        status = resolved.stat()
    except FileNotFoundError:
        raise InputError(
            f"file {_shown(path)} does not exist; give the path of an existing file under {_describe(allowed)}"
        ) from None
    except OSError as exc:  # a name too long for the file system, a folder that cannot be entered
        raise InputError(
            f"file {_shown(path)} cannot be checked ({exc.strerror or exc}); give the path of an existing file under "
            f"{_describe(allowed)}"
        ) from None
    if stat.S_ISDIR(status.st_mode):
        raise InputError(f"{_shown(path)} is a directory, not a file; give the path of one file inside it")
    if not stat.S_ISREG(status.st_mode):
        raise InputError(f"{_shown(path)} is not a regular file; give the path of an image file")
    if status.st_size == 0:
        raise ImageError(f"file {_shown(path)} is empty (0 bytes); give a file that holds an image")
    return resolved


def _shown(path: str | os.PathLike[str], limit: int = 160) -> str:
    """``path`` quoted for a message, its middle cut when it is very long."""
    return repr(shortened(str(path), limit))


def _allowed_root(resolved: Path, allowed_dirs: Iterable[str | os.PathLike[str]]) -> Path | None:
    roots = [Path(d).expanduser().resolve(strict=False) for d in allowed_dirs]
    inside = [root for root in roots if resolved == root or resolved.is_relative_to(root)]
    return max(inside, key=lambda root: len(root.parts)) if inside else None


def open_beneath(resolved: Path, allowed_dirs: Iterable[str | os.PathLike[str]], label: str | None = None) -> int:
    """Open a checked, fully resolved path for reading, with no symlink followed on the way.

    The path is walked from its allowed folder one component at a time, each opened relative to
    the previous one with ``O_NOFOLLOW``: a directory swapped for a symlink after the path was
    checked (to point the open elsewhere) makes the open fail instead of escaping. The file is
    opened non-blocking (a FIFO cannot hang it) and must be a regular, non-empty file. Returns a
    file descriptor the caller owns.
    """
    label = label or str(resolved)
    root = _allowed_root(resolved, allowed_dirs)
    if root is None:
        raise PathNotAllowedError(f"path {label!r} is outside the allowed folders; use a path under {_describe(allowed_dirs)}")
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    flags = os.O_RDONLY | nofollow | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if os.open not in os.supports_dir_fd or not nofollow:  # no openat (Windows): a plain checked open
        descriptor = os.open(resolved, flags)
    else:
        parts = resolved.relative_to(root).parts
        directory = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            for part in parts[:-1]:
                try:
                    inner = os.open(part, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | nofollow, dir_fd=directory)
                except OSError:
                    raise PathNotAllowedError(
                        f"path {label!r} changed while it was opened (a folder on the way is no longer a folder "
                        "inside the allowed folders); open it again"
                    ) from None
                os.close(directory)
                directory = inner
            try:
                descriptor = os.open(parts[-1], flags, dir_fd=directory) if parts else os.dup(directory)
            except OSError as exc:
                raise InputError(f"file {label!r} cannot be opened ({exc.strerror}); check the path") from None
        finally:
            os.close(directory)
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
        os.close(descriptor)
        raise ImageError(f"{label!r} is not a regular, non-empty file; give the path of an image file")
    return descriptor


def open_allowed_image(
    path: Path, allowed_dirs: Iterable[str | os.PathLike[str]], max_pixels: int, *, label: str | None = None
) -> Image.Image:
    """Decode a checked image file from a descriptor opened with :func:`open_beneath`: what is decoded is
    the file that was checked, even if a folder on the way is swapped for a symlink meanwhile."""
    label = label or str(path)
    with os.fdopen(open_beneath(Path(path), allowed_dirs, label), "rb") as source:
        return open_image_file(source, max_pixels, label=label)


def read_allowed_image(
    path: str | os.PathLike[str], allowed_dirs: Iterable[str | os.PathLike[str]], max_pixels: int
) -> tuple[Image.Image, Path]:
    """Check a path and decode the image it names; returns the RGB image and its resolved path."""
    allowed = list(allowed_dirs)
    resolved = check_readable_file(path, allowed)
    # decoded from the descriptor opened beneath the allowed folder: the checked file, not a swapped one
    return open_allowed_image(resolved, allowed, max_pixels, label=str(path)), resolved


def slugify(text: str, max_length: int = 40) -> str:
    """A short file-name-safe version of ``text`` (lowercase words joined by hyphens)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_length].rstrip("-") or "untitled"


def write_new_artifact(
    artifacts_dir: str | os.PathLike[str], stem: str, suffix: str, write: Callable[[BinaryIO], object]
) -> Path:
    """Write a new file into ``artifacts_dir`` without ever overwriting one; returns its path.

    ``write(handle)`` writes the whole content into a binary file handle. Behind it is a hidden
    temporary file created in the folder under an unpredictable name with ``O_EXCL | O_NOFOLLOW``
    (mode 0600; a planted file or symlink is never written through); the file then gets a name
    ``<time>-<stem>-<16 random hex digits><suffix>`` (``-2``, ``-3``... appended if taken) with a hard
    link, which fails instead of replacing an existing file; the random part keeps the name from
    being guessed by someone who knows when the file was made and from what. A missing folder is
    created private (0700). If ``write`` or the disk fails (a full disk), nothing is left behind
    and a :class:`ToolError` says so in one line.
    """

    folder = Path(artifacts_dir).expanduser()
    readable = f"{time.strftime('%Y%m%d-%H%M%S')}-{slugify(stem)}"
    base = f"{readable}-{secrets.token_hex(8)}"
    tmp: Path | None = None
    try:
        private_dir(folder)
        fd, tmp = exclusive_temp(folder, slugify(stem), suffix)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        for attempt in range(1, 10_000):
            target = folder / (f"{base}{suffix}" if attempt == 1 else f"{base}-{attempt}{suffix}")
            try:
                os.link(tmp, target)
                return target
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                    raise
                # Filesystems without hard links: reserve the name exclusively, then move into it.
                try:
                    os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
                except FileExistsError:
                    continue
                os.replace(tmp, target)
                return target
        raise InputError(f"could not find a free file name for {base}{suffix} in {folder}; clean the folder up")
    except OSError as exc:
        raise ToolError(
            f"could not write {readable}{suffix} into {folder} ({exc.strerror or exc}); free some disk space or "
            "choose another tools.artifacts_dir"
        ) from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file so that readers see either the old or the new content, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    # an exclusively created temporary file (unpredictable name, O_EXCL | O_NOFOLLOW), mode as the umask says
    write_file_atomically(path, lambda handle: handle.write(data), mode=0o666)
