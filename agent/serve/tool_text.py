"""What a caller is shown of a tool's result: in stream events and in a thread's history.

A tool's error is worded for the person at this machine and for the model: it names the allowed
folders, where a refused path resolves, the config key to change. The one caller of a server
without API keys (loopback only: the person at this machine) is shown all of it. Any other caller
is shown the error without those (:func:`agent.core.files.without_server_paths`), and every
spelling of the server's own folders left in it (allowed folders, data folder, artifacts folder:
as configured and resolved) reads ``[server folder]``. The model itself still reads the whole text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from agent.core.files import without_server_paths
from agent.serve.security import LOCAL_CALLER

if TYPE_CHECKING:  # pragma: no cover
    from agent.core.config import AppConfig

MAX_SHOWN_CHARS = 4000
"""A tool result longer than this is cut where a caller is shown it (the model still reads all of it)."""
FOLDER_PLACEHOLDER = "[server folder]"


def server_folder_spellings(config: AppConfig) -> list[str]:
    """The server's folders as a message may spell them (as configured and resolved), longest first."""
    folders = [*config.allowed_dirs, config.data_dir, config.artifacts_dir]
    spellings: set[str] = set()
    for folder in folders:
        path = Path(os.fspath(folder)).expanduser()
        for spelling in (path, path.resolve(strict=False)):
            if spelling.is_absolute() and len(spelling.parts) > 1:  # never "/": it would rewrite every path
                spellings.add(str(spelling))
    return sorted(spellings, key=len, reverse=True)


def shown_tool_text(text: str, *, is_error: bool, caller: str, config: AppConfig) -> str:
    """``text`` of a tool result as ``caller`` is shown it, cut to :data:`MAX_SHOWN_CHARS`."""
    if is_error and caller != LOCAL_CALLER:
        text = without_server_paths(text)
        for spelling in server_folder_spellings(config):
            text = text.replace(spelling, FOLDER_PLACEHOLDER)
    return text[:MAX_SHOWN_CHARS]
