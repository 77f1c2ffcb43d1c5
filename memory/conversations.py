"""Conversations that survive restarts: a LangGraph SQLite checkpointer plus thread titles.

The checkpointer (``langgraph-checkpoint-sqlite``) stores every turn of every thread in
``config.conversations_db``. Titles, creation and update times live in a small table of our
own (``llava_agent_threads``) in the same database file, so one file holds a user's whole
history. Deleting a thread removes all its rows (checkpoints, pending writes, title) in one
transaction, and the words are gone from the file too: deleted content is overwritten
(``secure_delete``) and the write-ahead log is checkpointed.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.core.errors import InputError, StoreError
from agent.core.private_files import ensure_private_file

if TYPE_CHECKING:
    from langchain_core.messages import BaseMessage
    from langgraph.checkpoint.sqlite import SqliteSaver

logger = logging.getLogger(__name__)

TITLE_LENGTH = 60
# every table holding rows of a thread: the checkpointer's two and ours
_THREAD_TABLES = ("checkpoints", "writes", "llava_agent_threads")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS llava_agent_threads (
    thread_id TEXT PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)
"""


@dataclass(frozen=True)
class ThreadInfo:
    """One conversation thread as the user sees it."""

    thread_id: str
    title: str
    created_at: float
    updated_at: float


def title_from_message(text: str) -> str:
    """A one-line title from the first user message of a thread."""
    line = " ".join(text.split())
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


def _copy_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A copy LangGraph may update in place (versions, value lists); messages themselves are shared."""
    copied = dict(checkpoint)
    copied["channel_values"] = {
        key: list(value) if isinstance(value, list) else value
        for key, value in checkpoint.get("channel_values", {}).items()
    }
    copied["channel_versions"] = dict(checkpoint.get("channel_versions", {}))
    copied["versions_seen"] = {key: dict(value) for key, value in checkpoint.get("versions_seen", {}).items()}
    if "updated_channels" in checkpoint and checkpoint["updated_channels"] is not None:
        copied["updated_channels"] = list(checkpoint["updated_channels"])
    return copied


@functools.lru_cache(maxsize=1)
def _caching_saver_class() -> type:
    from langgraph.checkpoint.base import CheckpointTuple, get_checkpoint_id, get_checkpoint_metadata
    from langgraph.checkpoint.sqlite import SqliteSaver

    class CachingSqliteSaver(SqliteSaver):
        """``SqliteSaver`` that keeps the latest checkpoint of recent threads deserialized in memory.

        Loading a thread otherwise deserializes its whole history on every turn, so a turn gets
        slower as the conversation grows. The cached copy is used only while it is still the
        newest checkpoint in the database (one cheap id query) and has no pending writes, so
        another process writing the same thread is always seen.
        """

        def __init__(self, conn: sqlite3.Connection, max_threads: int = 64) -> None:
            super().__init__(conn)
            self._latest: dict[tuple[str, str], CheckpointTuple] = {}
            self._max_threads = max_threads
            self._cache_lock = threading.Lock()

        def _remember(self, entry: CheckpointTuple) -> None:
            key = (str(entry.config["configurable"]["thread_id"]), entry.config["configurable"].get("checkpoint_ns", ""))
            with self._cache_lock:
                self._latest.pop(key, None)
                self._latest[key] = entry
                while len(self._latest) > self._max_threads:
                    self._latest.pop(next(iter(self._latest)))

        def put(self, config, checkpoint, metadata, new_versions):
            saved = super().put(config, checkpoint, metadata, new_versions)
            parent_id = config["configurable"].get("checkpoint_id")
            parent = {"configurable": {**saved["configurable"], "checkpoint_id": parent_id}} if parent_id else None
            stored_metadata = json.loads(json.dumps(get_checkpoint_metadata(config, metadata), ensure_ascii=False))
            self._remember(CheckpointTuple(saved, _copy_checkpoint(checkpoint), stored_metadata, parent, []))
            return saved

        def get_tuple(self, config):
            if get_checkpoint_id(config) is None:
                thread_id = str(config["configurable"]["thread_id"])
                namespace = config["configurable"].get("checkpoint_ns", "")
                with self._cache_lock:
                    cached = self._latest.get((thread_id, namespace))
                if cached is not None:
                    checkpoint_id = cached.config["configurable"]["checkpoint_id"]
                    with self.cursor(transaction=False) as cur:
                        cur.execute(
                            "SELECT checkpoint_id FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? "
                            "ORDER BY checkpoint_id DESC LIMIT 1",
                            (thread_id, namespace),
                        )
                        row = cur.fetchone()
                        fresh = row is not None and row[0] == checkpoint_id
                        if fresh:
                            cur.execute(
                                "SELECT 1 FROM writes WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ? "
                                "LIMIT 1",
                                (thread_id, namespace, checkpoint_id),
                            )
                            fresh = cur.fetchone() is None
                    if fresh:
                        return cached._replace(checkpoint=_copy_checkpoint(cached.checkpoint), pending_writes=[])
            result = super().get_tuple(config)
            if result is not None and get_checkpoint_id(config) is None and not result.pending_writes:
                self._remember(result._replace(checkpoint=_copy_checkpoint(result.checkpoint)))
            return result

        def forget_thread(self, thread_id: str) -> None:
            """Drop the cached checkpoints of a thread."""
            with self._cache_lock:
                for key in [k for k in self._latest if k[0] == str(thread_id)]:
                    del self._latest[key]

        def delete_thread(self, thread_id: str) -> None:
            self.forget_thread(thread_id)
            super().delete_thread(thread_id)

    return CachingSqliteSaver


class ConversationStore:
    """Threads of conversation in one SQLite file: the LangGraph checkpointer and thread titles.

    Safe to share between threads of one process (one connection guarded by a lock, as
    ``SqliteSaver`` does itself).
    """

    def __init__(self, db_path: str | Path) -> None:
        self.db_path = Path(db_path).expanduser()
        try:

            ensure_private_file(self.db_path)  # 0600 in a 0700 folder; SQLite gives its -wal/-shm files the same mode
            self._conn = sqlite3.connect(str(self.db_path), check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a crash loses at most the last turn
            self._conn.execute("PRAGMA secure_delete=ON")  # deleted turns are overwritten, not left in free pages
            self._conn.execute(_SCHEMA)
            self._conn.commit()
            self._saver = _caching_saver_class()(self._conn)
            self._saver.setup()
            # one lock for the one connection: the checkpointer's and our table's statements never interleave
            self._lock = self._saver.lock
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"conversation database {self.db_path} cannot be opened ({exc}); check that the folder "
                "is writable and the file is a SQLite database, or set data_dir in the config"
            ) from None

    @property
    def checkpointer(self) -> SqliteSaver:
        """The LangGraph checkpointer to compile an agent graph with."""
        return self._saver

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                rows = self._conn.execute(sql, params).fetchall()
                self._conn.commit()
            except sqlite3.Error as exc:
                raise StoreError(f"conversation database {self.db_path} failed ({exc}); {_advice(exc)}") from None
        return rows

    def new_thread(self, title: str = "") -> ThreadInfo:
        """Create an empty thread with a fresh short id."""
        while True:
            thread_id = uuid.uuid4().hex[:8]
            if not self._execute("SELECT 1 FROM llava_agent_threads WHERE thread_id = ?", (thread_id,)):
                break
        now = time.time()
        self._execute(
            "INSERT INTO llava_agent_threads (thread_id, title, created_at, updated_at) VALUES (?, ?, ?, ?)",
            (thread_id, title, now, now),
        )
        return ThreadInfo(thread_id, title, now, now)

    def touch(self, thread_id: str, first_message: str = "") -> None:
        """Record activity on a thread, creating its row and title when it is new."""
        now = time.time()
        self._execute(
            "INSERT INTO llava_agent_threads (thread_id, title, created_at, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(thread_id) DO UPDATE SET updated_at = excluded.updated_at, "
            "title = CASE WHEN llava_agent_threads.title = '' THEN excluded.title "
            "ELSE llava_agent_threads.title END",
            (thread_id, title_from_message(first_message), now, now),
        )

    def list_threads(self) -> list[ThreadInfo]:
        """All threads, most recently active first."""
        rows = self._execute(
            "SELECT thread_id, title, created_at, updated_at FROM llava_agent_threads ORDER BY updated_at DESC"
        )
        return [ThreadInfo(*row) for row in rows]

    def get(self, thread_id: str) -> ThreadInfo:
        """The thread with this id, or the only one whose id starts with it."""
        thread_id = str(thread_id).strip()
        rows = self._execute(
            "SELECT thread_id, title, created_at, updated_at FROM llava_agent_threads WHERE thread_id = ?",
            (thread_id,),
        )
        if not rows and thread_id:
            rows = self._execute(
                "SELECT thread_id, title, created_at, updated_at FROM llava_agent_threads "
                "WHERE thread_id LIKE ? ESCAPE '\\'",
                (thread_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",),
            )
        if len(rows) == 1:
            return ThreadInfo(*rows[0])
        if len(rows) > 1:
            ids = ", ".join(row[0] for row in rows)
            raise InputError(f"thread id {thread_id!r} is ambiguous (matches {ids}); type more of it")
        raise InputError(
            f"unknown thread {thread_id!r}; list the threads with `llava-agent threads` (or /threads in the chat)"
        )

    def exists(self, thread_id: str) -> bool:
        return bool(self._execute("SELECT 1 FROM llava_agent_threads WHERE thread_id = ?", (thread_id,)))

    def rename(self, thread_id: str, title: str) -> ThreadInfo:
        """Give a thread a new title."""
        title = title_from_message(title)
        if not title:
            raise InputError("a thread title cannot be empty; give some words")
        info = self.get(thread_id)
        self._execute("UPDATE llava_agent_threads SET title = ? WHERE thread_id = ?", (title, info.thread_id))
        return ThreadInfo(info.thread_id, title, info.created_at, info.updated_at)

    def delete(self, thread_id: str) -> ThreadInfo:
        """Delete a thread: every checkpoint, pending write and title row of it, all or nothing."""
        info = self.get(thread_id)
        with self._lock:
            self._saver.forget_thread(info.thread_id)
            try:
                with self._conn:  # one transaction: committed whole, or rolled back whole
                    for table in _THREAD_TABLES:
                        self._conn.execute(f"DELETE FROM {table} WHERE thread_id = ?", (info.thread_id,))
            except sqlite3.Error as exc:
                raise StoreError(
                    f"thread {info.thread_id} could not be deleted from {self.db_path} ({exc}); nothing was "
                    "deleted, try again"
                ) from None
            try:  # the log still holds the pages as they were before the delete: fold it into the file
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                logger.warning("the deleted thread may stay in %s-wal until the next checkpoint (%s)", self.db_path, exc)
        return info

    def messages(self, thread_id: str) -> list[BaseMessage]:
        """The messages of a thread's latest checkpoint (empty for a thread with no turn yet)."""
        info = self.get(thread_id)
        checkpoint = self._saver.get_tuple({"configurable": {"thread_id": info.thread_id}})
        if checkpoint is None:
            return []
        return list(checkpoint.checkpoint.get("channel_values", {}).get("messages", []))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ConversationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _advice(exc: Exception) -> str:
    """What to do about a failed statement, by what failed."""
    text = str(exc).lower()
    if isinstance(exc, sqlite3.ProgrammingError) and "closed" in text:
        return "the store was closed (the agent's close() was called); open a new agent to keep chatting"
    if "locked" in text or "busy" in text:
        return "another process is writing to it; try again in a moment"
    if "readonly" in text or "read-only" in text:
        return "the file or its folder is read-only; make it writable or set data_dir in the config"
    return "check disk space and that the file is a SQLite database"
