"""What belongs to which caller: conversation threads and generated files.

A caller names a thread with a key of its own (the ``X-Thread-Id`` header or the request's
``user`` field); the server maps (caller, key) to one of its threads, so two callers using the
same key never share a conversation. Each file a tool generates for a caller gets an id that
cannot be guessed (:func:`secrets.token_urlsafe`); only that caller can fetch it. Both maps live
in one SQLite file (``<data_dir>/serve.sqlite``), so links and threads survive a restart.
"""

from __future__ import annotations

import mimetypes
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agent.core.errors import StoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS threads (
    caller TEXT NOT NULL, key TEXT NOT NULL, thread_id TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (caller, key)
);
CREATE TABLE IF NOT EXISTS files (
    file_id TEXT PRIMARY KEY, caller TEXT NOT NULL, path TEXT NOT NULL, mime_type TEXT NOT NULL,
    bytes INTEGER NOT NULL, created REAL NOT NULL
);
"""


@dataclass(frozen=True)
class FileRecord:
    file_id: str
    caller: str
    path: Path
    mime_type: str
    bytes: int
    created: float


class OwnershipStore:
    """Thread keys and generated files per caller (thread-safe)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"the server's store {self.path} cannot be opened ({exc}); check the data folder") from None
        self._lock = threading.Lock()

    def thread_for(self, caller: str, key: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT thread_id FROM threads WHERE caller = ? AND key = ?", (caller, key)
            ).fetchone()
        return row[0] if row else None

    def bind_thread(self, caller: str, key: str, thread_id: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO threads (caller, key, thread_id, created) VALUES (?, ?, ?, ?)",
                (caller, key, thread_id, time.time()),
            )

    def threads_of(self, caller: str) -> list[tuple[str, str]]:
        """The caller's (key, thread id) pairs, oldest binding first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, thread_id FROM threads WHERE caller = ? ORDER BY created", (caller,)
            ).fetchall()
        return [(row[0], row[1]) for row in rows]

    def is_bound(self, thread_id: str) -> bool:
        """Whether any caller's key is bound to ``thread_id``."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM threads WHERE thread_id = ? LIMIT 1", (thread_id,)).fetchone()
        return row is not None

    def unbind_thread(self, thread_id: str) -> None:
        """Forget every key bound to ``thread_id``: a deleted thread, or one never started (whoever held one)."""
        with self._lock:
            self._db.execute("DELETE FROM threads WHERE thread_id = ?", (thread_id,))

    def path_record(self, caller: str, path: Path) -> FileRecord | None:
        """The caller's latest record of ``path``, if the file was ever registered to that caller."""
        with self._lock:
            row = self._db.execute(
                "SELECT file_id, caller, path, mime_type, bytes, created FROM files WHERE caller = ? AND path = ? "
                "ORDER BY created DESC LIMIT 1",
                (caller, str(path)),
            ).fetchone()
        return FileRecord(row[0], row[1], Path(row[2]), row[3], row[4], row[5]) if row else None

    def file_for_path(self, caller: str, path: Path) -> FileRecord:
        """The caller's record of ``path``: the one registered before, else a new one."""
        record = self.path_record(caller, path)
        if record is not None and record.bytes == path.stat().st_size:
            return record
        return self.add_file(caller, path)

    def add_file(self, caller: str, path: Path) -> FileRecord:
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        record = FileRecord("file-" + secrets.token_urlsafe(18), caller, path, mime, path.stat().st_size, time.time())
        with self._lock:
            self._db.execute(
                "INSERT INTO files (file_id, caller, path, mime_type, bytes, created) VALUES (?, ?, ?, ?, ?, ?)",
                (record.file_id, caller, str(path), mime, record.bytes, record.created),
            )
        return record

    def file(self, caller: str, file_id: str) -> FileRecord | None:
        """The file ``file_id`` if ``caller`` owns it (another caller's file is as absent as a missing one)."""
        with self._lock:
            row = self._db.execute(
                "SELECT file_id, caller, path, mime_type, bytes, created FROM files WHERE file_id = ? AND caller = ?",
                (file_id, caller),
            ).fetchone()
        return FileRecord(row[0], row[1], Path(row[2]), row[3], row[4], row[5]) if row else None

    def close(self) -> None:
        with self._lock:
            self._db.close()
