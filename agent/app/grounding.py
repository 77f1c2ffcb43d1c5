"""Argument grounding: an argument the user's words supply is the user's words, letter for letter.

Many arguments are copied from the request: the path in "describe ~/Desktop/shot.png", the
sentence in "read this aloud: dinner is ready", the fact in "remember my favourite colour is
teal". A small or 4-bit model copies them slightly wrong ("dinard is ready", ``images/lake.webp``
for ``images/holiday/lake.webp``, ``at pics/whiteboard.jpg``), and the call then speaks the wrong
words or looks for a file that is not there.

Which arguments are copies is read from the tool's own example requests
(:mod:`tools.examples`): a string argument whose value is exactly one slot of the request in
every example that sets it (``{"text": "{sentence}"}``, ``{"image": "{image}"}`` or
``{"image": "{attached}"}``) is a copy; one the model composes (``{"prompt": "{subject},
{style}"}``) is not, and is never touched. Tools without examples are never touched.

On the first model call of a turn (the one that answers the user's message), a copied argument
that is neither a span of the user's message nor written anywhere earlier in the conversation (a
path a search listed, a sentence from an earlier turn) is replaced by the span it nearly equals:

* **paths** (the value has a ``/``, ``\\``, a leading ``~`` or a file suffix): the path-like word of
  the message with the same file name, else the most similar one if at least
  :data:`PATH_SIMILARITY` alike and clearly closer than any other; ``[attached image: PATH]``
  markers count as words of the message.
* **text**: the word-aligned span of the message (outer punctuation and quotes stripped) at least
  :data:`TEXT_SIMILARITY` alike (``difflib`` ratio: about one wrong letter in seven) and of a
  similar length.

Anything else -- a composed sentence, a paraphrase, a value already in the message, a value with
nothing close to it -- is left exactly as the model wrote it. ``agent.ground_arguments = false``
turns this off.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from langchain.agents.middleware import AgentMiddleware

from tools.examples import tool_examples

if TYPE_CHECKING:
    from langchain.agents.middleware import ModelRequest, ModelResponse
    from langchain_core.tools import BaseTool

logger = logging.getLogger(__name__)

TEXT_SIMILARITY = 0.85
"""Least ``difflib`` ratio between a copied text and the span of the message it is snapped to."""
PATH_SIMILARITY = 0.6
"""Least ratio between a copied path and a path-like word of the message (same file name: always)."""
AMBIGUOUS = 0.05
"""Two paths of the message within this ratio of each other: neither is chosen."""
LENGTH_RATIO = 0.75
"""A text is snapped only to a span of 0.75x to 1.33x its length."""
MAX_MESSAGE_WORDS = 400
"""Longer messages are not searched (a copy from a long text is left as written)."""

_OPENING = "\"'`“”‘’«»([{<"
_OUTER = _OPENING + ")]}>,.;:!?"
"""Stripped from the end of a word; only quotes and opening brackets from its start (``./a.png``)."""
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{2,5}$")
_QUOTED = re.compile(r"\"([^\"\n]+)\"|(?:^|(?<=\s))'([^'\n]+)'|“([^”\n]+)”")
"""A quoted stretch of the message (a path with spaces in it is one when quoted)."""


def copied_arguments(tool: BaseTool) -> frozenset[str]:
    """The string arguments of ``tool`` that its examples copy verbatim from the request."""
    examples = tool_examples(tool)
    if not examples:
        return frozenset()
    properties = _string_properties(tool)
    copied: dict[str, bool] = {}
    for example in examples:
        for name in example.arguments:
            copied[name] = copied.get(name, True) and example.copied_slot(name) is not None
    return frozenset(name for name, ok in copied.items() if ok and name in properties)


def _string_properties(tool: BaseTool) -> set[str]:
    try:
        properties = tool.args
    except Exception:  # a tool without a readable schema: nothing is grounded
        return set()
    return {name for name, spec in properties.items() if isinstance(spec, Mapping) and spec.get("type") == "string"}


def is_path_like(value: str) -> bool:
    return "/" in value or "\\" in value or value.startswith("~") or _SUFFIX.search(value) is not None


def _words(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each whitespace-separated word, outer punctuation and quotes stripped."""
    spans = []
    for match in re.finditer(r"\S+", text):
        start, end = match.span()
        while start < end and text[start] in _OPENING:
            start += 1
        while end > start and text[end - 1] in _OUTER and not _keeps_last(text[start:end]):
            end -= 1
        if start < end:
            spans.append((start, end))
    return spans


def _keeps_last(word: str) -> bool:
    """A closing bracket that belongs to the word (``f(x)``) stays; one closing a quote goes."""
    last = word[-1]
    opening = {")": "(", "]": "[", "}": "{", ">": "<"}.get(last)
    return opening is not None and word.count(opening) >= word.count(last)


def text_spans(text: str, words: int) -> list[str]:
    """Word-aligned spans of ``text`` of ``words - 2`` to ``words + 2`` words, as written."""
    bounds = _words(text)
    if len(bounds) > MAX_MESSAGE_WORDS:
        return []
    spans = []
    for first in range(len(bounds)):
        for last in range(first + max(0, words - 3), min(len(bounds), first + words + 2)):
            spans.append(text[bounds[first][0]:bounds[last][1]].lstrip(_OPENING + " ").rstrip(_OUTER + " "))
    return [span for span in spans if span]


def _ratio(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a.casefold(), b.casefold(), autojunk=False).ratio()


def _basename(path: str) -> str:
    return re.split(r"[\\/]", path)[-1].casefold()


def _written_in(value: str, message: str) -> bool:
    """Whether ``value`` is in ``message`` letter for letter (any case) from a word's start to a word's end."""
    text, needle = message.casefold(), value.casefold()
    start = text.find(needle)
    while start >= 0:
        end = start + len(needle)
        if ((start == 0 or text[start - 1].isspace() or text[start - 1] in _OPENING)
                and (end == len(text) or text[end].isspace() or text[end] in _OUTER)):
            return True
        start = text.find(needle, start + 1)
    return False


def ground_value(value: str, message: str, earlier: str = "") -> str:
    """``value`` snapped to the span of ``message`` it nearly copies, else ``value`` unchanged.

    A value written anywhere in ``earlier`` (the conversation before the message: a path a search
    listed, a sentence from an earlier turn) was copied from there and is left alone too.
    """
    if not isinstance(value, str) or not value.strip() or not message:
        return value
    if earlier and value.casefold() in earlier.casefold():
        return value
    if is_path_like(value):
        words = [message[a:b] for a, b in _words(message)] + [m.group(m.lastindex) for m in _QUOTED.finditer(message)]
        if any(value.casefold() == word.casefold() for word in words):
            return value
        candidates = [word for word in words if is_path_like(word)]
        same_name = [word for word in candidates if _basename(word) == _basename(value)]
        if len(same_name) == 1:
            return same_name[0]
        scored = sorted(((_ratio(value, word), word) for word in set(candidates)), reverse=True)
        if not scored or scored[0][0] < PATH_SIMILARITY:
            return value
        if len(scored) > 1 and scored[1][0] >= scored[0][0] - AMBIGUOUS:
            return value  # two paths about as close: which one was meant is not ours to guess
        return scored[0][1]
    if _written_in(value, message):
        return value
    spans = text_spans(message, len(value.split()))
    length = len(value)
    scored = [(_ratio(value, span), span) for span in spans
              if LENGTH_RATIO <= len(span) / length <= 1 / LENGTH_RATIO]
    best = max(scored, default=(0.0, value))
    return best[1] if best[0] >= TEXT_SIMILARITY else value


def ground_calls(calls: Sequence[Mapping[str, Any]], message: str, copied: Callable[[str], frozenset[str]],
                 earlier: str = "") -> tuple[list[dict[str, Any]], list[str]]:
    """The calls with their copied arguments grounded in ``message``, and a note per change."""
    grounded, notes = [], []
    for call in calls:
        args = dict(call.get("args") or {})
        for name in copied(call.get("name", "")):
            value = args.get(name)
            if isinstance(value, str):
                snapped = ground_value(value, message, earlier)
                if snapped != value:
                    notes.append(f"{call.get('name')}.{name}: {value!r} -> {snapped!r}")
                    args[name] = snapped
        grounded.append({**call, "args": args})
    return grounded, notes


def _message_text(message: Any) -> str:
    """Everything a message says, tool calls included (a path the model named in an earlier call)."""
    calls = " ".join(str(call.get("args")) for call in getattr(message, "tool_calls", None) or [])
    return f"{getattr(message, 'text', '')} {calls}"


class ArgumentGroundingMiddleware(AgentMiddleware):
    """Grounds the copied arguments of the calls in a turn's first model reply (module docstring)."""

    def __init__(self, tools: Sequence[BaseTool]) -> None:
        super().__init__()
        self._tools = {tool.name: tool for tool in tools}
        self.changes: list[str] = []
        """Every change made, newest last (capped), for inspection."""

    @lru_cache(maxsize=256)  # noqa: B019  (one middleware per agent; a handful of tool names)
    def copied(self, name: str) -> frozenset[str]:
        tool = self._tools.get(name)
        return copied_arguments(tool) if tool is not None else frozenset()

    def ground(self, request: ModelRequest, response: Any) -> Any:
        from langchain_core.messages import AIMessage, HumanMessage

        messages = request.messages
        if not messages or not isinstance(messages[-1], HumanMessage):
            return response  # not the first call of a turn: later calls copy from tool results
        results = getattr(response, "result", None)
        if not results or not isinstance(results[-1], AIMessage) or not results[-1].tool_calls:
            return response
        reply = results[-1]
        earlier = "\n".join(_message_text(message) for message in messages[:-1])
        calls, notes = ground_calls(reply.tool_calls, messages[-1].text, self.copied, earlier)
        if notes:
            for note in notes:
                logger.info("grounded a copied argument in the user's words: %s", note)
            self.changes = [*self.changes[-999:], *notes]
            response.result = [*results[:-1], reply.model_copy(update={"tool_calls": calls})]
        return response

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> Any:
        return self.ground(request, handler(request))

    async def awrap_model_call(self, request: ModelRequest, handler: Any) -> Any:
        return self.ground(request, await handler(request))
