"""The ``llava-agent`` command line: argument parsing and printing only; the work is in the library."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.core.lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover
    from agent.cli.main import main

__all__ = ["main"]
__getattr__, __dir__ = lazy_exports(__name__, {"main": "agent.cli.main"})
