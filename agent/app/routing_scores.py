"""The routing benchmark's labelled set and its scores (:mod:`agent.app.routing_eval` runs the agent).

The labelled set is JSONL, one request per line. Two sets ship, written apart from the tools'
example requests and the lexicons: ``held-out`` (the default, 156 requests) and ``held-out-2``
(80, written before the examples were extended; see the README on how each was used). Pass a
name or your own file with ``--set``::

    {"id": "caption-01", "request": "What's in photos/cat.png?", "tool": "caption_image", "args": {"image": "photos/cat.png"}}
    {"id": "draw-01", "request": "draw a lighthouse at dusk", "tool": "generate_image", "args": {"prompt": ["lighthouse", "dusk"]}}
    {"id": "see-01", "request": "caption this", "images": ["garden.png"], "tool": "caption_image", "args": {"image": "{attached}"}}
    {"id": "none-01", "request": "What is the capital of Japan?", "tool": null}

``args`` lists only the arguments that are checked. A string must equal the value after
normalisation (paths: surrounding quotes and spaces dropped; text: case, punctuation and spacing
ignored); ``"{attached}"`` stands for the path of the request's first attached image; a list
holds words that must all appear in the value (``"a|b"``: either). ``images`` are names of
pictures the benchmark writes and attaches to the request.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.core.errors import DatasetError
from agent.decoding.decision_prior import NO_CALL

NO_TOOL = NO_CALL
ATTACHED = "{attached}"
HELD_OUT_SET = "routing_heldout.jsonl"
SHIPPED_SETS = {"held-out": HELD_OUT_SET, "held-out-2": "routing_heldout_2.jsonl"}
"""Labelled sets that ship with the package, by the name ``--set`` accepts."""


# ----- the labelled set ------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutingCase:
    """One labelled request: the tool it should go to (None: answer in words) and the checked arguments."""

    id: str
    request: str
    tool: str | None
    args: Mapping[str, str | list[str]] = field(default_factory=dict)
    images: tuple[str, ...] = ()


def held_out_set_path(name: str = "held-out") -> Path:
    """A shipped labelled routing set (package data), by name (see :data:`SHIPPED_SETS`)."""
    from importlib.resources import files

    return Path(str(files("agent") / "data" / SHIPPED_SETS[name]))


def load_routing_set(path: str | Path | None = None) -> list[RoutingCase]:
    """Read a labelled routing set (JSONL): a file, a shipped set's name, or the default held-out set (None)."""
    if path is None or (isinstance(path, str) and path in SHIPPED_SETS and not Path(path).exists()):
        path = held_out_set_path(path or "held-out")
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"routing set {path} does not exist; pass a JSONL file of labelled requests or a shipped "
                           f"set's name ({', '.join(SHIPPED_SETS)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"routing set {path} cannot be read ({exc}); check it is UTF-8 text") from None
    cases: list[RoutingCase] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where} is not valid JSON ({exc.msg} at column {exc.colno})") from None
        case = _parse_case(row, where)
        if case.id in seen:
            raise DatasetError(f"{where}: id {case.id!r} is used twice; give every request its own id")
        seen.add(case.id)
        cases.append(case)
    if not cases:
        raise DatasetError(f"routing set {path} holds no requests; write one JSON object per line")
    return cases


def _parse_case(row: Any, where: str) -> RoutingCase:
    if not isinstance(row, dict):
        raise DatasetError(f"{where} is a JSON {type(row).__name__}; each line must be an object")
    unknown = sorted(set(row) - {"id", "request", "tool", "args", "images"})
    if unknown:
        raise DatasetError(f"{where} has unknown keys {unknown}; use id, request, tool, args, images")
    case_id, request, tool = row.get("id"), row.get("request"), row.get("tool", "missing")
    if not isinstance(case_id, str) or not case_id:
        raise DatasetError(f"{where} has no 'id' (a non-empty string)")
    if not isinstance(request, str) or not request.strip():
        raise DatasetError(f"{where} ({case_id}) has no 'request' text")
    if tool == "missing" or not (tool is None or (isinstance(tool, str) and tool)):
        raise DatasetError(f"{where} ({case_id}): 'tool' must be a tool name, or null when no tool fits")
    args = row.get("args") or {}
    if not isinstance(args, dict) or (args and tool is None):
        raise DatasetError(f"{where} ({case_id}): 'args' must be an object, and only with a tool")
    for name, expected in args.items():
        words_ok = isinstance(expected, list) and expected and all(isinstance(w, str) and w.strip() for w in expected)
        if not (isinstance(expected, (str, int, float, bool)) or words_ok):
            raise DatasetError(
                f"{where} ({case_id}): args.{name} must be a value or a non-empty list of words, got {expected!r}"
            )
    images = row.get("images") or []
    if not isinstance(images, list) or not all(isinstance(i, str) and i.strip() for i in images):
        raise DatasetError(f"{where} ({case_id}): 'images' must be a list of file names")
    if any(value == ATTACHED for value in args.values()) and not images:
        raise DatasetError(f"{where} ({case_id}): an argument expects {ATTACHED} but the request attaches no image")
    return RoutingCase(case_id, request, tool, args, tuple(images))


# ----- scoring ---------------------------------------------------------------------------------

_PATH_HINT = re.compile(r"[/\\~]|\.(png|jpe?g|gif|webp|bmp|tiff?)$", re.IGNORECASE)


def normalise_text(value: Any) -> str:
    """Case, punctuation and spacing removed: ``"Good morning, everyone!"`` -> ``"good morning everyone"``."""
    return " ".join(re.sub(r"[^\w\s]", " ", str(value).casefold()).split())


def normalise_path(value: Any) -> str:
    """Surrounding spaces, quotes and a trailing full stop removed; the path itself is kept as written."""
    text = str(value).strip().strip("'\"`").strip()
    return text[:-1] if text.endswith(".") and not text.endswith("..") else text


def argument_matches(expected: Any, actual: Any, attached: Sequence[str] = ()) -> bool:
    """Whether one argument value is right (see the module docstring for the rules)."""
    if actual is None:
        return False
    if isinstance(expected, list):
        value = normalise_text(actual)
        return all(any(normalise_text(option) in value for option in word.split("|")) for word in expected)
    if isinstance(expected, bool) or isinstance(expected, (int, float)):
        try:
            return float(actual) == float(expected)
        except (TypeError, ValueError):
            return False
    if expected == ATTACHED:
        return bool(attached) and normalise_path(actual) == attached[0]
    if _PATH_HINT.search(expected):
        return normalise_path(actual) == normalise_path(expected)
    return normalise_text(actual) == normalise_text(expected)


def arguments_match(expected: Mapping[str, Any], actual: Mapping[str, Any], attached: Sequence[str] = ()) -> bool:
    """Every checked argument is present and right."""
    return all(name in actual and argument_matches(value, actual[name], attached) for name, value in expected.items())


@dataclass
class CaseResult:
    """What the agent did with one request."""

    id: str
    request: str
    expected: str | None
    called: str | None
    args: dict[str, Any]
    routed_right: bool
    args_right: bool | None
    """None when the case expects no tool or the tool was wrong (arguments not scored)."""
    latency_s: float
    text: str = ""


@dataclass
class RoutingReport:
    """Scores of one benchmark run; :meth:`render` prints them, :meth:`to_dict` gives them as data."""

    results: list[CaseResult]
    tools: list[str]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def routing_accuracy(self) -> float:
        return _share(sum(r.routed_right for r in self.results), len(self.results))

    @property
    def false_call_rate(self) -> float:
        plain = [r for r in self.results if r.expected is None]
        return _share(sum(r.called is not None for r in plain), len(plain))

    @property
    def argument_accuracy(self) -> float:
        scored = [r for r in self.results if r.args_right is not None]
        return _share(sum(bool(r.args_right) for r in scored), len(scored))

    @property
    def call_accuracy(self) -> float:
        needs_tool = [r for r in self.results if r.expected is not None]
        return _share(sum(bool(r.args_right) for r in needs_tool), len(needs_tool))

    @property
    def median_latency_s(self) -> float:
        return statistics.median(r.latency_s for r in self.results) if self.results else 0.0

    def labels(self) -> list[str]:
        seen = {r.expected or NO_TOOL for r in self.results} | {r.called or NO_TOOL for r in self.results}
        ordered = [t for t in self.tools if t in seen] + sorted(seen - set(self.tools) - {NO_TOOL})
        return ordered + [NO_TOOL]

    def confusion(self) -> dict[str, dict[str, int]]:
        """``confusion[expected][called]`` counts; ``(none)`` stands for no call."""
        labels = self.labels()
        table = {row: dict.fromkeys(labels, 0) for row in labels}
        for r in self.results:
            table[r.expected or NO_TOOL][r.called or NO_TOOL] += 1
        return table

    def per_tool(self) -> dict[str, dict[str, float]]:
        """Precision, recall and support for each label (``(none)`` included)."""
        out = {}
        for label in self.labels():
            expected = [r for r in self.results if (r.expected or NO_TOOL) == label]
            called = [r for r in self.results if (r.called or NO_TOOL) == label]
            hits = sum((r.called or NO_TOOL) == label for r in expected)
            out[label] = {
                "precision": _share(hits, len(called)),
                "recall": _share(hits, len(expected)),
                "support": len(expected),
            }
        return out

    def summary(self) -> dict[str, float]:
        return {
            "requests": len(self.results),
            "routing_accuracy": round(self.routing_accuracy, 4),
            "argument_accuracy": round(self.argument_accuracy, 4),
            "call_accuracy": round(self.call_accuracy, 4),
            "false_call_rate": round(self.false_call_rate, 4),
            "median_latency_s": round(self.median_latency_s, 4),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "settings": self.settings,
            "per_tool": self.per_tool(),
            "confusion": self.confusion(),
            "results": [asdict(r) for r in self.results],
        }

    def render(self, *, show_errors: bool = False) -> str:
        """The report as text: headline numbers, per-tool table, confusion table."""
        labels = self.labels()
        lines = [
            f"requests: {len(self.results)}   " + "   ".join(f"{k}={v}" for k, v in self.settings.items() if v is not None),
            f"routing accuracy   {self.routing_accuracy:.3f}",
            f"argument accuracy  {self.argument_accuracy:.3f}   (calls to the right tool with the right arguments)",
            f"call accuracy      {self.call_accuracy:.3f}   (right tool and arguments, over requests needing a tool)",
            f"false-call rate    {self.false_call_rate:.3f}   (no-tool requests that got a call)",
            f"median latency     {self.median_latency_s:.3f} s (request to decision)",
            "",
            f"{'tool':<16}{'precision':>10}{'recall':>8}{'support':>9}",
        ]
        for label, scores in self.per_tool().items():
            lines.append(f"{label:<16}{scores['precision']:>10.3f}{scores['recall']:>8.3f}{scores['support']:>9}")
        width = max(9, *(len(label) + 1 for label in labels))
        lines += ["", "confusion (rows: expected, columns: called)", " " * 16 + "".join(f"{label[:width - 1]:>{width}}" for label in labels)]
        for row, counts in self.confusion().items():
            lines.append(f"{row:<16}" + "".join(f"{counts[col]:>{width}}" for col in labels))
        if show_errors:
            wrong = [r for r in self.results if not r.routed_right or r.args_right is False]
            lines += ["", f"wrong decisions ({len(wrong)}):"]
            for r in wrong:
                lines.append(
                    f"  {r.id}: expected {r.expected or NO_TOOL}, called {r.called or NO_TOOL} "
                    f"{json.dumps(r.args, ensure_ascii=False) if r.called else repr(r.text[:60])}  <- {r.request!r}"
                )
        return "\n".join(lines)


def _share(count: int, total: int) -> float:
    return count / total if total else 0.0


def score_case(case: RoutingCase, called: str | None, args: Mapping[str, Any], attached: Sequence[str],
               latency_s: float, text: str = "") -> CaseResult:
    """Score one decision against its label."""
    routed_right = called == case.tool
    args_right = arguments_match(case.args, args, attached) if routed_right and case.tool is not None else None
    return CaseResult(case.id, case.request, case.tool, called, dict(args), routed_right, args_right, latency_s, text)
