"""The record each ``bench/gpu_check.py`` step fills, and the report written from them.

The report is rewritten (Markdown and JSON, each atomically) when a step starts and when it
ends, so a run cut short still has one saying which steps ran and what they measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

REPORT_MD = "gpu_check.md"
REPORT_JSON = "gpu_check.json"
BUDGET_S = 480  # the whole run, model construction included, on one H100/H200


@dataclass
class StepRecord:
    """What one step measured and checked; filled in by the step as it goes."""

    number: int
    name: str
    title: str
    status: str = "pending"  # pending, running, passed, failed, not available, skipped
    seconds: float | None = None
    headline: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None

    def metric(self, name: str, value: Any, unit: str = "") -> Any:
        """Record (and print) one measured value."""
        if isinstance(value, float):
            value = round(value, 4)
        self.metrics[name] = value
        say(f"  {name} = {value}{(' ' + unit) if unit else ''}")
        return value

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        """Record a pass/fail check; a failed check fails the step (the step still runs on)."""
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})
        say(f"  [{'ok' if ok else 'FAILED'}] {name}{': ' + detail if detail else ''}")
        return bool(ok)

    def target(self, name: str, value: float | None, goal: str, met: bool | None) -> None:
        """A performance target: reported, never a failure (``met`` is None when not judged, e.g. dry runs)."""
        self.targets.append({"name": name, "value": value, "target": goal, "met": met})
        verdict = "n/a" if met is None else ("met" if met else "MISSED")
        say(f"  target {name}: {value} ({goal}) -> {verdict}")

    def table(self, title: str, headers: list[str], rows: list[list[Any]]) -> None:
        self.tables.append({"title": title, "headers": headers, "rows": rows})

    def note(self, text: str) -> None:
        self.notes.append(text)
        say(f"  note: {text}")


_STARTED = time.perf_counter()


def say(text: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:7.1f}s] {text}", flush=True)


def environment(device: str) -> dict[str, Any]:
    import importlib.metadata as metadata

    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
    }
    for package in ("transformers", "bitsandbytes", "peft", "accelerate", "diffusers", "chromadb"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        info["gpu"] = properties.name
        info["gpu_memory_gib"] = round(properties.total_memory / 2**30, 1)
        info["gpu_capability"] = f"{properties.major}.{properties.minor}"
        info["bf16"] = torch.cuda.is_bf16_supported()
    return info


class Report:
    """The run's results, written as Markdown and JSON (atomically) whenever something changes."""

    def __init__(self, folder: Path, args: argparse.Namespace, steps: list[StepRecord]) -> None:
        self.folder = folder
        self.args = args
        self.steps = steps
        self.started = time.strftime("%Y-%m-%d %H:%M:%S %z")
        self.environment: dict[str, Any] = {}
        self.build_seconds: dict[str, float] = {}
        self.finished: str | None = None

    def elapsed(self) -> float:
        return round(time.perf_counter() - _STARTED, 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "device": self.args.device,
            "size": self.args.size,
            "dry_run": self.args.size == "tiny",
            "started": self.started,
            "finished": self.finished,
            "elapsed_s": self.elapsed(),
            "budget_s": BUDGET_S if self.args.size == "full" else None,
            "environment": self.environment,
            "build_seconds": self.build_seconds,
            "steps": [asdict(step) for step in self.steps],
        }

    def write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        data = self.as_dict()
        _atomic_write(self.folder / REPORT_JSON, json.dumps(data, indent=2, default=str) + "\n")
        _atomic_write(self.folder / REPORT_MD, render_markdown(data))


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(data: dict[str, Any]) -> str:
    mode = ("dry run on tiny models" if data["dry_run"] else
            "real architecture sizes with random weights: LLaVA at llava-1.5-7b size, BLIP-large, SD-Turbo, "
            "CLIP ViT-B/32, VITS mms-tts-eng")
    lines = [
        f"# GPU check: {data['device']}, {mode}",
        "",
        f"`{data['command']}`  ",
        f"started {data['started']}, "
        + (f"finished {data['finished']}" if data["finished"] else "**not finished** (report written as it went)")
        + f", {data['elapsed_s']} s"
        + (f" (budget {data['budget_s']} s)" if data["budget_s"] else ""),
        "",
        "| step | status | seconds | result |",
        "|---|---|---|---|",
    ]
    for step in data["steps"]:
        lines.append(f"| {step['number']}. {step['title']} | {step['status']} | {_cell(step['seconds'])} | "
                     f"{_cell(step['headline'] or step['error'] or '')} |")  # fmt: skip
    environment = data["environment"]
    if environment:
        lines += ["", "Environment: " + ", ".join(f"{k} {v}" for k, v in environment.items() if v is not None)]
    if data["build_seconds"]:
        lines += ["", "Checkpoint construction (s): " + ", ".join(f"{k} {v}" for k, v in data["build_seconds"].items())]
    for step in data["steps"]:
        lines += ["", f"## {step['number']}. {step['title']}", "", f"**{step['status']}**"
                  + (f" in {step['seconds']} s" if step["seconds"] is not None else "")]
        if step["error"]:
            lines += ["", f"Error: {step['error']}"]
        for table in step["tables"]:
            lines += ["", f"{table['title']}:", "", "| " + " | ".join(table["headers"]) + " |",
                      "|" + "---|" * len(table["headers"])]
            lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table["rows"]]
        if step["targets"]:
            lines += ["", "| target | value | goal | met |", "|---|---|---|---|"]
            for target in step["targets"]:
                met = "n/a (dry run)" if target["met"] is None else ("yes" if target["met"] else "**no**")
                lines.append(f"| {target['name']} | {_cell(target['value'])} | {target['target']} | {met} |")
        if step["metrics"]:
            lines += ["", "| metric | value |", "|---|---|"]
            lines += [f"| {name} | {_cell(value)} |" for name, value in step["metrics"].items()]
        if step["checks"]:
            lines += [""] + [f"- [{'x' if c['ok'] else ' '}] {c['name']}" + (f": {c['detail']}" if c["detail"] else "")
                             for c in step["checks"]]  # fmt: skip
        for note in step["notes"]:
            lines += ["", note]
        if step["traceback"]:
            lines += ["", "```", step["traceback"].rstrip(), "```"]
    return "\n".join(lines) + "\n"
