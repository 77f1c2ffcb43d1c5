"""Showing a chat's media in the terminal: images inline (kitty, iTerm2, WezTerm), audio through a player."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

AUDIO_PLAYERS = (("paplay",), ("aplay", "-q"), ("ffplay", "-nodisp", "-autoexit", "-loglevel", "quiet"), ("afplay",))
"""The programs that can play a WAV file, tried in order (with their quiet flags)."""


def inline_image_protocol(environ: dict[str, str] | os._Environ[str] | None = None) -> str | None:
    """Which inline-image protocol the terminal speaks: ``kitty``, ``iterm2`` or None."""
    env = os.environ if environ is None else environ
    if env.get("KITTY_WINDOW_ID") or "kitty" in env.get("TERM", ""):
        return "kitty"
    if env.get("TERM_PROGRAM") in ("iTerm.app", "WezTerm") or env.get("LC_TERMINAL") == "iTerm2":
        return "iterm2"
    return None


def inline_image_escape(path: Path, protocol: str) -> str:
    """The escape sequence that shows the image at ``path`` inline with ``protocol``."""
    data = path.read_bytes()
    if protocol == "iterm2":
        payload = base64.b64encode(data).decode("ascii")
        return f"\x1b]1337;File=name={base64.b64encode(path.name.encode()).decode()};size={len(data)};inline=1:{payload}\x07\n"
    if not data.startswith(b"\x89PNG"):
        from io import BytesIO

        from PIL import Image

        buffer = BytesIO()
        with Image.open(path) as image:
            image.save(buffer, format="PNG")
        data = buffer.getvalue()
    payload = base64.b64encode(data).decode("ascii")
    chunks = [payload[i : i + 4096] for i in range(0, len(payload), 4096)]
    parts = []
    for index, chunk in enumerate(chunks):
        more = 1 if index < len(chunks) - 1 else 0
        head = f"a=T,f=100,m={more}" if index == 0 else f"m={more}"
        parts.append(f"\x1b_G{head};{chunk}\x1b\\")
    return "".join(parts) + "\n"


def find_audio_player() -> list[str] | None:
    """The first of :data:`AUDIO_PLAYERS` installed here, as a command line, or None."""
    for command in AUDIO_PLAYERS:
        if shutil.which(command[0]):
            return list(command)
    return None


__all__ = ["AUDIO_PLAYERS", "find_audio_player", "inline_image_escape", "inline_image_protocol"]
