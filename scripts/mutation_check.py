#!/usr/bin/env python
"""A small mutation check of the modules that hold the project's guarantees.

Each mutant is a realistic bug written by hand: one find/replace on one source file. For each,
the check copies the repository (tracked and untracked, not ignored, files) to a temporary
folder, applies the mutant there, runs the tests that guard that file, and reports whether they
caught it (killed) or not (survived). The working tree is never modified.

    python scripts/mutation_check.py                  # every mutant (10-15 minutes on 2 shared cores)
    python scripts/mutation_check.py --list           # the table, without running anything
    python scripts/mutation_check.py --only index     # mutants whose file or name contains "index"
    python scripts/mutation_check.py --json out.json  # the results, machine-readable

Keeping it current: the whole table is ``TARGETS`` below, keyed by the path of the file each
group mutates. When a file moves, change its key (and the test paths); a mutant whose ``find``
text no longer occurs exactly once in its file is reported as ``stale`` instead of being run, so
edits that outdate the table show up at once. The check is not part of CI (it runs the guarding
tests once per mutant); run it after changing one of these modules or their tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    find: str
    replace: str


@dataclass(frozen=True)
class Target:
    """The mutants of one file and the tests that guard it."""

    tests: tuple[str, ...]
    mutants: tuple[Mutant, ...] = field(default_factory=tuple)


# -- the table: file path -> the tests guarding it, and its mutants ------------------------------
TARGETS: dict[str, Target] = {
    # constrained decoding: the regex every tool call is decoded through. Enums, string lengths and
    # optional properties are written by outlines_core; the mutants below plant the same kind of
    # bug in what this project's code adds around it.
    "agent/decoding/schema_regex.py": Target(
        tests=("tests/unit/test_schema_regex.py", "tests/unit/test_tool_schemas.py"),
        mutants=(
            Mutant("enum of bounded numbers widened to the range",
                   'any(k in node for k in (*_BOUNDS, "multipleOf")) and not {"enum", "const"} & set(node):',
                   'any(k in node for k in (*_BOUNDS, "multipleOf")):'),
            Mutant("integer bounds ignored",
                   "return integer_range_regex(max(lows, default=None), min(highs, default=None))",
                   "return INTEGER"),
            Mutant("multipleOf ignored", 'if "multipleOf" in schema:\n            return _multiples(',
                   'if False:\n            return _multiples('),
            Mutant("string cap replaces a tighter maxLength",
                   'elif kind == "string" and max_string_length is not None and "maxLength" not in node:',
                   'elif kind == "string" and max_string_length is not None:'),
            Mutant("raw control characters allowed in strings", r"""STRING_CHAR = r'([^"\\\x00-\x1f]""",
                   r"""STRING_CHAR = r'([^"\\]"""),
            Mutant("no space after an optional property's comma",
                   '_AFTER_COMMA = re.compile(_WHITESPACE + r"?,((?:\\)(?:[?*+]|\\{\\d*,?\\d*\\})?)*)" + _WHITESPACE)',
                   '_AFTER_COMMA = re.compile(_WHITESPACE + r"?,()" + _WHITESPACE)'),
        ),
    ),
    # constrained decoding: the per-token mask and its token budget
    "agent/decoding/call_processor.py": Target(
        tests=("tests/integration/test_constrained_decoding.py",),
        mutants=(
            Mutant("auto mode opens a call it cannot finish", "blocked = ids[cost > remaining - 1]",
                   "blocked = ids[cost > remaining]"),
            Mutant("budget reserve off by one", "if automaton.max_next_dist[state] <= remaining - 1:",
                   "if automaton.max_next_dist[state] <= remaining:"),
        ),
    ),
    "agent/decoding/constraint.py": Target(
        tests=("tests/integration/test_constrained_decoding.py",),
        mutants=(
            Mutant("tool_choice naming a tool allows every tool",
                   'if tool_choice not in ("auto", "any", "required") and name != tool_choice:',
                   "if False:"),
        ),
    ),
    # allowed folders and artifact files
    "agent/core/files.py": Target(
        tests=("tests/unit/test_paths.py",),
        mutants=(
            Mutant("symlinks not followed", "resolved = raw.resolve(strict=False)",
                   "resolved = Path(os.path.abspath(raw))"),
            Mutant("folder check by string prefix", "resolved == folder or resolved.is_relative_to(folder)",
                   "str(resolved).startswith(str(folder))"),
            Mutant("artifacts overwrite", "os.link(tmp, target)\n                return target",
                   "os.replace(tmp, target)\n                return target"),
        ),
    ),
    # image files: the pixel limit read from the header before decoding
    "agent/core/images.py": Target(
        tests=("tests/unit/test_paths.py", "tests/unit/test_images.py"),
        mutants=(
            Mutant("pixel limit per side", "                if width * height > max_pixels:\n                    raise ImageError(",
                   "                if width > max_pixels or height > max_pixels:\n                    raise ImageError("),
        ),
    ),
    # publishing adapter and merged-model folders
    "finetune/folders.py": Target(
        tests=("tests/unit/test_folders.py",),
        mutants=(
            Mutant("delete the target, then move",
                   "elif exchange_paths(staging, target):\n        _fsync_folder(target.parent)\n"
                   "        shutil.rmtree(staging, ignore_errors=True)",
                   "elif True:\n        shutil.rmtree(target)\n        os.replace(staging, target)"),
            Mutant("folder left aside never restored", "if aside and not target.exists():", "if False:"),
            Mutant("stale staging folders kept", 'for stale in [*aside, *target.parent.glob(f".{target.name}.tmp-*")]:',
                   "for stale in aside:"),
        ),
    ),
    # conversations
    "memory/conversations.py": Target(
        tests=("tests/unit/test_conversation_store.py", "tests/integration/test_memory_conversations.py"),
        mutants=(
            Mutant("thread delete leaves its checkpoints",
                   '_THREAD_TABLES = ("checkpoints", "writes", "llava_agent_threads")',
                   '_THREAD_TABLES = ("llava_agent_threads",)'),
            Mutant("thread delete leaves pending writes",
                   '_THREAD_TABLES = ("checkpoints", "writes", "llava_agent_threads")',
                   '_THREAD_TABLES = ("checkpoints", "llava_agent_threads")'),
            Mutant("deleted words stay in the file", 'self._conn.execute("PRAGMA secure_delete=ON")',
                   'self._conn.execute("PRAGMA secure_delete=OFF")'),
            Mutant("cached checkpoint trusted after another process wrote",
                   "fresh = row is not None and row[0] == checkpoint_id", "fresh = row is not None"),
            Mutant("thread prefix wildcards not escaped", '.replace("_", "\\\\_")', ""),
            Mutant("a thread created untitled never takes its first message as title",
                   "title = CASE WHEN llava_agent_threads.title = '' THEN excluded.title",
                   "title = CASE WHEN 0 THEN excluded.title"),
        ),
    ),
    # the agent's error handling: interrupted turns, tool errors, call statuses
    "agent/app/multimodal_agent.py": Target(
        tests=("tests/unit/test_app_graph.py",),
        mutants=(
            Mutant("calls cut off by the turn's end become empty successes",
                   'ToolMessage(content="Not run: the turn ended first.", tool_call_id=c["id"], name=c["name"], '
                   'status="error")',
                   'ToolMessage(content="", tool_call_id=c["id"], name=c["name"], status="success")'),
            Mutant("a failed first turn leaves an orphan thread",
                   "if created:  # the caller never learns this thread's id: a failed first turn leaves no thread "
                   "behind\n                self.conversations.delete(thread_id)",
                   "if False:\n                pass"),
            Mutant("a stopped turn is not closed",
                   "if collector.limit_reached or collector.stopped:\n            self._close_turn(",
                   "if collector.limit_reached:\n            self._close_turn("),
        ),
    ),
    "agent/app/events.py": Target(
        tests=("tests/unit/test_app_graph.py",),
        mutants=(
            Mutant("calls that never ran reported as successes", 'call["status"] = "not_run"',
                   'call["status"] = "success"'),
            Mutant("failed tools' artifacts reported", "if artifact is not None and not is_error:",
                   "if artifact is not None:"),
        ),
    ),
    "tools/base.py": Target(
        tests=("tests/unit/test_tools_inputs.py", "tests/unit/test_tool_schemas.py"),
        mutants=(
            Mutant("arguments outside the schema raise instead of reaching the model",
                   "if self.handle_tool_error and not self.handle_validation_error:", "if False:"),
            Mutant("tool errors escape as exceptions",
                   "raise ToolException(self.error_message(kwargs, exc)) from exc", "raise"),
        ),
    ),
    # the tools' schemas: values constrained decoding can write are values the tools take
    "tools/speak.py": Target(
        tests=("tests/unit/test_tool_schemas.py", "tests/unit/test_tools_inputs.py"),
        mutants=(
            Mutant("voice is a free string again",
                   "voice_type = Optional[Literal.__getitem__(tuple(voices))]", "voice_type = Optional[str]"),
            Mutant("voices not checked against the engine",
                   "offered = tuple(dict.fromkeys(v for v in requested if v.lower() in by_lower))",
                   "offered = tuple(dict.fromkeys(requested))"),
            Mutant("speed unbounded", "(float, Field(1.0, ge=MIN_SPEED, le=MAX_SPEED, description=description))",
                   "(float, Field(1.0, description=description))"),
        ),
    ),
    "tools/generate.py": Target(
        tests=("tests/unit/test_tool_schemas.py", "tests/unit/test_tools_inputs.py"),
        mutants=(
            Mutant("width not a multiple of 8 in the schema",
                   '512, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8,\n        description=f"Width',
                   '512, ge=MIN_SIDE, le=MAX_SIDE,\n        description=f"Width'),
            Mutant("a lower step limit is not in the schema", "if self.max_steps != MAX_STEPS:", "if False:"),
        ),
    ),
    # the image index
    "memory/image_index.py": Target(
        tests=("tests/integration/test_image_index.py", "tests/integration/test_tools_search.py"),
        mutants=(
            Mutant("captioner ignored",
                   'captions = captioner.caption_images(images) if captioner is not None else [""] * len(images)',
                   'captions = [""] * len(images)'),
            Mutant("changed files not re-embedded", 'if old and old.get("sha256") == metadata["sha256"]:',
                   "if old:"),
            Mutant("deleted files stay indexed", "removed = [item_id for item_id in existing if item_id not in seen]",
                   "removed = []"),
            Mutant("score is the distance", "score=1.0 - float(distance)", "score=float(distance)"),
            Mutant("k unbounded", "if not isinstance(k, int) or not 1 <= k <= MAX_K:",
                   "if not isinstance(k, int) or k < 1:"),
            Mutant("another CLIP model's collection accepted",
                   "if stored == self.clip_model and stored_print in (None, self.clip_fingerprint):\n            return",
                   "if True:\n            return"),
            Mutant("CLIP weights changed in place trusted by their id",
                   "if stored == self.clip_model and stored_print in (None, self.clip_fingerprint):",
                   "if stored == self.clip_model:"),
            Mutant("reindex after an in-place retrain keeps the old embeddings",
                   'if old_metadata.get("clip_model") == self.clip_model and old_metadata.get("clip_fingerprint") in (\n'
                   "            None, self.clip_fingerprint\n        ):",
                   'if old_metadata.get("clip_model") == self.clip_model:'),
        ),
    ),
}


@dataclass
class Outcome:
    path: str
    mutant: str
    status: str  # killed, survived, stale, baseline-failed
    seconds: float = 0.0
    caught_by: str = ""


def copy_repository(destination: Path) -> None:
    """Copy the files git would see (tracked, and untracked but not ignored) into ``destination``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def run_tests(root: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *tests]
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timed out", time.monotonic() - started
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def first_failure(output: str) -> str:
    match = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    return match.group(1) if match else output.strip().splitlines()[-1][:120] if output.strip() else ""


def selected(only: str | None) -> list[tuple[str, Target, Mutant]]:
    rows = [(path, target, mutant) for path, target in TARGETS.items() for mutant in target.mutants]
    if only:
        rows = [r for r in rows if only.lower() in r[0].lower() or only.lower() in r[2].name.lower()]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run the mutants whose file path or name contains this text")
    parser.add_argument("--list", action="store_true", help="print the mutants and their tests, run nothing")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per test run (a hang counts as killed)")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args()

    rows = selected(args.only)
    if args.list:
        for path, target, mutant in rows:
            print(f"{path:30} {mutant.name}  [{' '.join(target.tests)}]")
        return 0
    if not rows:
        print(f"no mutant matches {args.only!r}", file=sys.stderr)
        return 2

    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="mutation-check-") as tmp:
        root = Path(tmp)
        copy_repository(root)
        baseline: dict[tuple[str, ...], bool] = {}
        for path, target, mutant in rows:
            source = root / path
            original = source.read_text() if source.is_file() else ""
            if original.count(mutant.find) != 1:
                found = original.count(mutant.find) if source.is_file() else "no file"
                outcomes.append(Outcome(path, mutant.name, "stale", caught_by=f"find text occurs {found} times"))
                print(f"STALE     {path}: {mutant.name} (find text occurs {found} times; update TARGETS)", flush=True)
                continue
            if target.tests not in baseline:
                code, output, seconds = run_tests(root, target.tests, args.timeout)
                baseline[target.tests] = code == 0
                state = "pass" if code == 0 else f"FAIL ({first_failure(output)})"
                print(f"baseline  {' '.join(target.tests)}: {state} in {seconds:.0f} s", flush=True)
            if not baseline[target.tests]:
                outcomes.append(Outcome(path, mutant.name, "baseline-failed"))
                continue
            source.write_text(original.replace(mutant.find, mutant.replace))
            try:
                code, output, seconds = run_tests(root, target.tests, args.timeout)
            finally:
                source.write_text(original)
            if code == 0:
                status, caught = "survived", ""
            elif code == 5:
                status, caught = "baseline-failed", "no tests ran"
            else:
                status, caught = "killed", "timed out" if code == -1 else first_failure(output)
            outcomes.append(Outcome(path, mutant.name, status, seconds, caught))
            print(f"{status.upper():9} {path}: {mutant.name} ({seconds:.0f} s) {caught}", flush=True)

    killed = sum(o.status == "killed" for o in outcomes)
    survived = [o for o in outcomes if o.status == "survived"]
    judged = killed + len(survived)
    print(f"\nmutation score: {killed}/{judged} killed" + (f" ({killed / judged:.0%})" if judged else ""))
    for outcome in survived:
        print(f"  survived: {outcome.path}: {outcome.mutant}")
    for outcome in outcomes:
        if outcome.status in ("stale", "baseline-failed"):
            print(f"  not judged ({outcome.status}): {outcome.path}: {outcome.mutant} {outcome.caught_by}")
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ for o in outcomes], indent=2) + "\n")
    return 0 if not survived and judged == len(outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
