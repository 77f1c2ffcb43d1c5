"""Text that reaches a terminal is shown, never obeyed.

Model output, tool results, file names, thread titles and remembered facts are untrusted: they
may hold escape sequences (``ESC ]0;title BEL`` sets the window title, ``ESC ]52;`` writes the
clipboard, ``ESC [2J`` clears the screen), C1 controls, bidirectional overrides (U+202E makes
``gnp.exe`` read as ``exe.png``), isolates, and zero-width or tag characters that hide text.

:func:`terminal_safe` shows every such character as a visible escape (``\\x1b``, ``\\u202e``)
and keeps newlines and tabs. :func:`json_text` dumps JSON whose parsed value is exactly the
data, with those characters as JSON ``\\uXXXX`` escapes, so ``--json`` output is both exact and
safe. :func:`terminal_safe_streams` wraps ``sys.stdout``/``sys.stderr`` so that every line a
command prints (and every log line) goes through :func:`terminal_safe`.

Progress bars (tqdm: loading weights, downloads, training) redraw their line on stderr with a
carriage return, cursor up (``ESC [ n A``) and erase in line (``ESC [ n K``). On stderr, a write
that *starts* with one of these (after any newlines) is a progress redraw: :func:`progress_safe`
keeps exactly those three and escapes everything else in it. They only move within lines already
written and blank the current one: no title, clipboard, screen clear, colour, link or bidi. A log
or error line starts with its text, so every control in it is escaped as before; stdout (model
output, tool results, data) never keeps any.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import unicodedata
from collections.abc import Iterator
from typing import Any, TextIO

# Unicode categories never printed raw: controls (C0, DEL, C1), format characters (bidi
# embeddings/overrides/isolates, marks, zero-width space/joiners, word joiner, BOM, tag
# characters, invisible operators...), line/paragraph separators and lone surrogates.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_KEPT = frozenset("\n\t")


def is_unsafe(char: str) -> bool:
    """Whether ``char`` could change what a terminal shows beyond itself (or hide text)."""
    return char not in _KEPT and unicodedata.category(char) in _UNSAFE_CATEGORIES


def escape_char(char: str) -> str:
    """The visible escape of one character: ``\\x1b``, ``\\u202e``, ``\\U000e0041``."""
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def terminal_safe(text: Any) -> str:
    """``text`` with every unsafe character shown as an escape; newlines and tabs are kept."""
    text = text if isinstance(text, str) else str(text)
    if text.isascii() and text.isprintable():  # the common case, checked in C
        return text
    return "".join(escape_char(ch) if is_unsafe(ch) else ch for ch in text)


# The line-redraw controls of a progress bar: carriage return, cursor up, erase in line.
_PROGRESS_CONTROL = re.compile(r"\r|\x1b\[[0-9]{0,3}[AK]")


def is_progress_redraw(text: str) -> bool:
    """Whether a write to stderr is a progress bar redrawing its line (it starts, after newlines, with a redraw control)."""
    return _PROGRESS_CONTROL.match(text.lstrip("\n")) is not None


def progress_safe(text: str) -> str:
    """``text`` through :func:`terminal_safe`, keeping its carriage returns, cursor-up and erase-line sequences."""
    kept, start = [], 0
    for control in _PROGRESS_CONTROL.finditer(text):
        kept += [terminal_safe(text[start : control.start()]), control.group()]
        start = control.end()
    return "".join(kept) + terminal_safe(text[start:])


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON spells characters outside the BMP as a surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def json_text(value: Any, **kwargs: Any) -> str:
    """``json.dumps(value, ensure_ascii=False)`` with unsafe characters written as JSON escapes.

    ``json.loads`` of the result equals ``value`` exactly; the text holds no raw control,
    bidi, zero-width or tag character, so printing it drives nothing.
    """
    text = json.dumps(value, ensure_ascii=False, **kwargs)
    if text.isascii() and text.isprintable():
        return text
    return "".join(_json_escape(ch) if is_unsafe(ch) else ch for ch in text)


class TerminalSafeWriter:
    """A text stream that writes everything through :func:`terminal_safe` to the stream it wraps.

    ``progress=True`` (stderr) lets a progress bar's redraw through :func:`progress_safe` instead.
    """

    def __init__(self, stream: TextIO, *, progress: bool = False) -> None:
        self._stream = stream
        self._progress = progress

    def write(self, text: str) -> int:
        shown = progress_safe(text) if self._progress and is_progress_redraw(text) else terminal_safe(text)
        self._stream.write(shown)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, buffer...
        return getattr(self._stream, name)


@contextlib.contextmanager
def terminal_safe_streams(*, stdout: bool = True, stderr: bool = True) -> Iterator[None]:
    """Route ``sys.stdout`` and/or ``sys.stderr`` through :class:`TerminalSafeWriter` for the block.

    Progress bars keep drawing on stderr (see the module doc)."""
    saved = sys.stdout, sys.stderr
    if stdout:
        sys.stdout = TerminalSafeWriter(saved[0])  # type: ignore[assignment]
    if stderr:
        sys.stderr = TerminalSafeWriter(saved[1], progress=True)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


__all__ = ["TerminalSafeWriter", "escape_char", "is_progress_redraw", "is_unsafe", "json_text", "progress_safe",
           "terminal_safe", "terminal_safe_streams"]
