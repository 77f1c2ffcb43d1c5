"""The ``llava-agent`` command line: argument parsing and printing only; the work is in the library."""

from agent.cli.main import main

__all__ = ["main"]
