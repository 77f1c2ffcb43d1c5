"""One writer per conversation thread, across processes.

A turn reads the thread's latest checkpoint when it starts and writes its messages when it ends.
Two processes running turns on one thread at once (``chat --thread X`` in one terminal, ``ask
--thread X`` in another) would each write a child of the same checkpoint, and the later one
would hide the other's turn: silently lost messages. So writing a thread takes a **lease**:

* an exclusive ``flock`` on a small file named after the thread id, in a folder next to the
  conversation database (``conversations.sqlite.leases/``); the operating system releases it when
  the process ends, however it ends, so a crash never leaves a thread locked;
* held by a process for the length of a turn (:meth:`MultimodalAgent.chat` and friends), and by
  the terminal chat for as long as the thread is the open conversation;
* reentrant inside a process (counted), while two turns of one process on one thread at once are
  refused too (the same loss, in one process).

A second writer gets :class:`ThreadBusyError` at once, naming the process that holds the thread
and how to read it meanwhile (``llava-agent threads show ID``; the chat's ``/resume`` shows it
read-only). Reading a thread never needs the lease.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.core.errors import StoreError
from agent.core.private_files import private_dir

LEASES_SUFFIX = ".leases"


class ThreadBusyError(StoreError):
    """The conversation is being written by another process (or another turn of this one)."""


@dataclass
class _Held:
    fd: int
    count: int


_held: dict[Path, _Held] = {}
_turns: dict[Path, threading.Lock] = {}
_guard = threading.Lock()


def lease_folder(conversations_db: str | os.PathLike[str]) -> Path:
    """Where the leases of one conversation database live (a private folder beside it)."""
    db = Path(conversations_db).expanduser()
    return db.with_name(db.name + LEASES_SUFFIX)


def _lease_path(folder: Path, thread_id: str) -> Path:
    digest = hashlib.sha256(str(thread_id).encode("utf-8")).hexdigest()[:32]
    return folder / f"{digest}.lock"


def _holder(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        info = json.loads(raw) if raw.strip() else {}
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or not info.get("pid"):
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(info.get("since", 0)))) if info.get("since") else "?"
    command = str(info.get("command", ""))[:80]
    return f"process {info['pid']}" + (f" ({command})" if command else "") + f", since {since}"


def busy_message(thread_id: str, holder: str) -> str:
    return (
        f"conversation {thread_id} is open in another process ({holder}); close it there first. To read "
        f"it meanwhile: `llava-agent threads show {thread_id}` (in the chat, /resume {thread_id} shows it "
        "read-only); /new in the chat, or `ask` without --thread, starts another conversation"
    )


def _acquire_process_lease(folder: Path, thread_id: str) -> Path:
    path = _lease_path(folder, thread_id)
    with _guard:
        held = _held.get(path)
        if held is not None:
            held.count += 1
            return path
        private_dir(folder)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError as exc:
            raise StoreError(
                f"cannot open the lease file of conversation {thread_id} in {folder} ({exc.strerror}); check "
                "the data folder's permissions"
            ) from None
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ThreadBusyError(busy_message(thread_id, holder)) from None
        info = {"pid": os.getpid(), "since": time.time(), "command": " ".join(Path(a).name for a in sys.argv[:3])}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        _held[path] = _Held(fd, 1)
        return path


def _release_process_lease(path: Path) -> None:
    with _guard:
        held = _held.get(path)
        if held is None:
            return
        held.count -= 1
        if held.count <= 0:
            del _held[path]
            os.close(held.fd)  # closing the descriptor releases the flock


class ThreadLease:
    """This process's hold on one thread; :meth:`release` (or ``with``) gives it back."""

    def __init__(self, folder: str | os.PathLike[str], thread_id: str) -> None:
        self.folder = Path(folder)
        self.thread_id = str(thread_id)
        self._path: Path | None = _acquire_process_lease(self.folder, self.thread_id)

    @property
    def held(self) -> bool:
        return self._path is not None

    def release(self) -> None:
        if self._path is not None:
            _release_process_lease(self._path)
            self._path = None

    def __enter__(self) -> ThreadLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a lease dropped without release() is given back
        with contextlib.suppress(Exception):
            self.release()


def hold_thread(folder: str | os.PathLike[str], thread_id: str) -> ThreadLease:
    """Hold ``thread_id`` for this process (reentrant); raises :class:`ThreadBusyError` when another has it."""
    return ThreadLease(folder, thread_id)


@contextlib.contextmanager
def writing_turn(folder: str | os.PathLike[str], thread_id: str) -> Iterator[ThreadLease]:
    """Hold the thread for one turn: the process lease plus "no other turn of this process on it"."""
    lease = ThreadLease(folder, thread_id)
    try:
        assert lease._path is not None
        with _guard:
            turn = _turns.setdefault(lease._path, threading.Lock())
        if not turn.acquire(blocking=False):
            raise ThreadBusyError(
                f"a turn is already running on conversation {thread_id} in this process; wait for its reply "
                "(or stop it) before sending another message to the same conversation"
            )
        try:
            yield lease
        finally:
            turn.release()
    finally:
        lease.release()


def is_held_elsewhere(folder: str | os.PathLike[str], thread_id: str) -> bool:
    """Whether another process holds the thread now (a probe: takes and gives back the lease)."""
    try:
        ThreadLease(folder, thread_id).release()
    except ThreadBusyError:
        return True
    return False


__all__ = [
    "LEASES_SUFFIX",
    "ThreadBusyError",
    "ThreadLease",
    "busy_message",
    "hold_thread",
    "is_held_elsewhere",
    "lease_folder",
    "writing_turn",
]
