"""The one place that builds a Chroma client.

Embedded mode (default) opens a ``PersistentClient`` in ``<data_dir>/chroma``; server mode
(``memory.chroma_url = "http://host:port"``) opens an ``HttpClient`` with the credentials, tenant
and database of :mod:`agent.core.chroma_auth` (a wrong token is one clear error, and no secret is ever
shown). Telemetry is always off.

Chroma's embedded client is not safe for several processes writing one folder, so a writer
takes an exclusive lock file in the folder for the length of its write (:func:`writer_lock`: a
``remember`` or ``forget``, one ``index`` run); a second process asking to write waits a few
seconds, then gets a :class:`StoreError` naming the folder and the pid holding it. Readers take
no lock, and an open chat holds none between its writes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from agent.core.chroma_auth import is_auth_failure, redact_url, server_from_config
from agent.core.config import load_config
from agent.core.errors import ConfigError, StoreError
from agent.core.private_files import private_dir

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

    from agent.core.chroma_auth import ChromaServer
    from agent.core.config import AppConfig

logger = logging.getLogger(__name__)

LOCK_FILE_NAME = "llava-agent-writer.lock"
WRITER_WAIT_S = 10.0
"""How long a short write (remember, forget) waits for another process's write to finish."""
_held_locks: dict[Path, Any] = {}
_locks_guard = threading.Lock()


def _settings(**extra: Any):
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False, allow_reset=False, **extra)


def acquire_writer_lock(folder: Path) -> None:
    """Take the single-writer lock of an embedded store (a no-op if this process holds it already)."""
    import fcntl

    folder = Path(folder).expanduser().resolve()
    with _locks_guard:
        if folder in _held_locks:
            return

        private_dir(folder)
        lock_path = folder / LOCK_FILE_NAME
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        handle = os.fdopen(os.open(lock_path, flags, 0o600), "a+")  # held open for the life of the lock
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StoreError(
                f"the Chroma store in {folder} is already open for writing by another process (pid {holder}); "
                "close that process first, use another data_dir, or share one Chroma server "
                "(memory.chroma_url) between processes"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        _held_locks[folder] = handle


@contextlib.contextmanager
def writer_lock(folder: Path, *, wait_s: float = WRITER_WAIT_S) -> Iterator[None]:
    """Hold the writer lock of an embedded store for one write (waiting up to ``wait_s`` for it).

    Reentrant: when this process holds the lock already (an ``index`` run) it is kept, not released.
    """
    folder = Path(folder).expanduser().resolve()
    with _locks_guard:
        already = folder in _held_locks
    if not already:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                acquire_writer_lock(folder)
                break
            except StoreError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)
    try:
        yield
    finally:
        if not already:
            release_writer_lock(folder)


def release_writer_lock(folder: Path) -> None:
    """Release the writer lock this process holds on ``folder`` (if any)."""
    folder = Path(folder).expanduser().resolve()
    with _locks_guard:
        handle = _held_locks.pop(folder, None)
    if handle is not None:
        handle.close()


def open_chroma_client(
    *, path: Path | None = None, url: str | None = None, write: bool = False, server: ChromaServer | None = None
) -> ClientAPI:
    """Open an embedded store at ``path`` or a server at ``url`` / ``server`` (exactly one of them).

    ``server`` (see :func:`agent.core.chroma_auth.server_from_config`) carries the credentials, tenant
    and database; a bare ``url`` may hold ``user:password@`` for basic auth.
    """
    import chromadb


    if url is not None and server is None:
        from types import SimpleNamespace


        server = server_from_config(SimpleNamespace(
            chroma_url=url, chroma_token=None, chroma_token_header="Authorization", chroma_username=None,
            chroma_password=None, chroma_tenant="default_tenant", chroma_database="default_database",
        ))
    if (path is None) == (server is None):
        raise ConfigError("give exactly one of a Chroma folder (embedded) or memory.chroma_url (server)")
    if server is not None:
        parsed = urlparse(server.url)
        shown = redact_url(url) if url else server.url
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(f"memory.chroma_url = {shown!r} is not an http(s)://host:port URL")
        port = parsed.port or (443 if parsed.scheme == "https" else 8000)
        try:
            client = chromadb.HttpClient(
                host=parsed.hostname, port=port, ssl=parsed.scheme == "https", settings=_settings(**server.settings),
                tenant=server.tenant, database=server.database,
            )
            client.heartbeat()
        except Exception as exc:  # chromadb raises several transport errors
            if is_auth_failure(exc):
                raise StoreError(
                    f"the Chroma server at {server.url} refused the credentials ({type(exc).__name__}: "
                    f"{_first_line(exc)}); check memory.chroma_token (LLAVA_AGENT_MEMORY__CHROMA_TOKEN) or "
                    "memory.chroma_username/chroma_password, and memory.chroma_tenant/chroma_database"
                ) from None
            raise StoreError(
                f"cannot reach the Chroma server at {server.url} ({type(exc).__name__}: {_first_line(exc)}); start "
                "it with `chroma run --path <folder> --port <port>` or fix memory.chroma_url"
            ) from None
        return client
    folder = Path(path).expanduser()
    if write:
        acquire_writer_lock(folder)
    try:

        private_dir(folder)  # the store is the user's own: created 0700
        return chromadb.PersistentClient(path=str(folder), settings=_settings())
    except Exception as exc:
        raise StoreError(
            f"cannot open the Chroma store in {folder} ({type(exc).__name__}: {exc}); check the folder's "
            "permissions and free space, or move it aside to start a new store"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def get_chroma_client(config: AppConfig | None = None, *, write: bool = False) -> ClientAPI:
    """The Chroma client the configuration asks for: a server when ``memory.chroma_url`` is set, else embedded.

    ``write=True`` takes the single-writer lock of an embedded store (no lock for a server,
    which serialises writes itself).
    """

    config = config or load_config()
    server = server_from_config(config.memory)
    if server is not None:
        return open_chroma_client(server=server)
    return open_chroma_client(path=config.chroma_dir, write=write)
