"""The tool-use adapter recipe: synthesise data from the tools, train a LoRA, benchmark before and after.

``llava-agent finetune tools --model M --output DIR`` (or :func:`train_tool_adapter`):

1. **data**: :func:`agent.tool_data.synthesize_tool_data` writes ``DIR-data/train.jsonl`` (and
   the pictures its image rows attach) from the configured agent's tools and system prompt;
2. **before**: the routing benchmark (:mod:`agent.routing_eval`) on the held-out set, without
   the adapter;
3. **train**: :func:`finetune.train` on that data with shared-prefix batches
   (:mod:`finetune.shared_prefix`: the system prompt and tool list are encoded once per step);
4. **after**: the same benchmark with the adapter; both reports are saved in the adapter folder
   (``routing_before.json``, ``routing_after.json``).

Use the adapter with ``llava-agent chat --adapter DIR`` or ``adapter = "DIR"`` under ``[model]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.config import AppConfig
    from agent.routing_eval import RoutingReport
    from agent.tool_data import ToolDataset
    from finetune.train import TrainResult

logger = logging.getLogger(__name__)

TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 2.0,
    "batch_size": 8,
    "learning_rate": 3e-4,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_layers": None,
    "warmup_ratio": 0.05,
    "logging_steps": 5,
    "save_steps": 50,
    "max_length": 4096,
}
"""Training settings of the recipe (any :class:`finetune.TrainConfig` field can override them)."""


@dataclass
class ToolAdapterResult:
    """What the recipe produced: the data, the adapter, and the benchmark before and after."""

    data: ToolDataset
    adapter_dir: Path | None
    train: TrainResult | None
    before: RoutingReport | None
    after: RoutingReport | None


def data_dir_for(output_dir: str | Path) -> Path:
    """The training data lives next to the adapter folder (which is replaced whole when training ends)."""
    output_dir = Path(output_dir).expanduser()
    return output_dir.with_name(output_dir.name + "-data")


def train_tool_adapter(
    model: str,
    output_dir: str | Path,
    *,
    config: AppConfig | str | Path | Mapping[str, Any] | None = None,
    count: int = 600,
    seed: int = 0,
    eval_set: str | Path | None = None,
    eval_limit: int | None = None,
    evaluate: bool = True,
    train: bool = True,
    progress: Callable[[str], None] | None = None,
    **train_options: Any,
) -> ToolAdapterResult:
    """Run the recipe; ``train_options`` are :class:`finetune.TrainConfig` fields (they override :data:`TRAIN_DEFAULTS`).

    With ``train=False`` only the data is written (and evaluated before, when ``evaluate``).
    """
    from agent.config import atomic_write_text, load_config
    from agent.prompts import build_system_prompt
    from agent.routing_eval import agent_tools, evaluate_routing
    from agent.tool_data import synthesize_tool_data

    say = progress or logger.info
    app_config = load_config(config)
    output_dir = Path(output_dir).expanduser()
    tools = agent_tools(app_config)
    data = synthesize_tool_data(
        tools, data_dir_for(output_dir), system_prompt=build_system_prompt(tools, app_config.agent.system_prompt),
        count=count, seed=seed,
    )
    say(f"wrote {len(data.rows)} training rows to {data.path} ({json.dumps(data.summary['kinds'])})")
    benchmark = {"cases": eval_set, "config": app_config, "limit": eval_limit, "routing": "model"}
    before = evaluate_routing(model, **benchmark) if evaluate else None
    if before is not None:
        say("before: " + _headline(before))
    if not train:
        return ToolAdapterResult(data, None, None, before, None)

    from finetune.train import train as run_training

    options = {**TRAIN_DEFAULTS, **train_options}
    result = run_training(
        model=model, data=str(data.path), image_folder=str(data.image_folder), output_dir=str(output_dir),
        format="messages", shared_prefix=True, seed=seed, **options,
    )
    say(f"adapter saved to {result.adapter_dir} ({result.global_step} steps, {result.seconds:.0f} s)")
    after = evaluate_routing(model, adapter=str(output_dir), **benchmark) if evaluate else None
    if after is not None:
        say("after:  " + _headline(after))
    for name, report in (("routing_before.json", before), ("routing_after.json", after)):
        if report is not None:
            atomic_write_text(output_dir / name, json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return ToolAdapterResult(data, output_dir, result, before, after)


def _headline(report: RoutingReport) -> str:
    return (
        f"routing {report.routing_accuracy:.3f}, arguments {report.argument_accuracy:.3f}, "
        f"false calls {report.false_call_rate:.3f}, median latency {report.median_latency_s:.2f} s "
        f"({len(report.results)} requests)"
    )


def comparison(before: RoutingReport | None, after: RoutingReport | None) -> str:
    """Before/after table of the benchmark's headline numbers."""
    rows = [("routing accuracy", "routing_accuracy"), ("argument accuracy", "argument_accuracy"),
            ("call accuracy", "call_accuracy"), ("false-call rate", "false_call_rate"),
            ("median latency (s)", "median_latency_s")]
    lines = [f"{'':<20}{'before':>10}{'after':>10}"]
    for label, key in rows:
        values = [f"{getattr(r, key):>10.3f}" if r is not None else f"{'-':>10}" for r in (before, after)]
        lines.append(f"{label:<20}" + "".join(values))
    return "\n".join(lines)


# ----- the ``finetune tools`` command -------------------------------------------------------------


def register_cli(commands: Any) -> argparse.ArgumentParser:
    """Add ``tools`` to the ``finetune`` sub-commands."""
    parser = commands.add_parser(
        "tools", help="Train a tool-use adapter from data synthesised from the enabled tools",
        description="Synthesise tool-use training data from the configured agent's tools, train a LoRA adapter "
        "on it, and print the routing benchmark before and after.",
    )
    parser.add_argument("--model", required=True, help="Base model: hub id or local folder")
    parser.add_argument("--output", required=True, dest="output_dir", help="Adapter folder (data goes to OUTPUT-data)")
    parser.add_argument("--config", dest="app_config", help="llava-agent config file (tools enabled, memory, prompt)")
    parser.add_argument("--count", type=int, default=600, help="Training rows to synthesise (default 600)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=float, default=TRAIN_DEFAULTS["epochs"])
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--batch-size", type=int, default=TRAIN_DEFAULTS["batch_size"])
    parser.add_argument("--learning-rate", type=float, default=TRAIN_DEFAULTS["learning_rate"])
    parser.add_argument("--lora-r", type=int, default=TRAIN_DEFAULTS["lora_r"])
    parser.add_argument("--lora-alpha", type=int, default=TRAIN_DEFAULTS["lora_alpha"])
    parser.add_argument("--lora-layers", type=int, help="Adapt only the last N decoder layers (cheaper steps)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--eval-set", help="Labelled routing requests, JSONL (default: the shipped held-out set)")
    parser.add_argument("--eval-limit", type=int, help="Benchmark only the first N requests")
    parser.add_argument("--no-eval", action="store_true", help="Skip the benchmark before and after")
    parser.add_argument("--data-only", action="store_true", help="Only write the training data")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing adapter folder")
    parser.set_defaults(func=run_tools)
    return parser


def run_tools(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {
        "epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
        "lora_r": args.lora_r, "lora_alpha": args.lora_alpha, "lora_layers": args.lora_layers, "device": args.device,
        "overwrite": args.overwrite,
    }
    if args.max_steps:
        options["max_steps"] = args.max_steps
    result = train_tool_adapter(
        args.model, args.output_dir, config=args.app_config, count=args.count, seed=args.seed,
        eval_set=args.eval_set, eval_limit=args.eval_limit, evaluate=not args.no_eval, train=not args.data_only,
        progress=lambda line: sys.stderr.write(line + "\n"), **options,
    )
    sys.stdout.write(f"training data: {result.data.path}\n")
    if result.adapter_dir is not None:
        sys.stdout.write(f"adapter: {result.adapter_dir}  (use: llava-agent chat --adapter {result.adapter_dir})\n")
    if result.before is not None or result.after is not None:
        sys.stdout.write(comparison(result.before, result.after) + "\n")
    return 0
