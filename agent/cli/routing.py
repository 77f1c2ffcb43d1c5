"""Routing commands: ``llava-agent eval routing`` (the benchmark) and ``llava-agent finetune tools``
(the tool-use adapter recipe).

This layer only parses and prints; :mod:`agent.app.routing_eval` and :mod:`agent.app.tool_adapter`
do the work. ``finetune tools`` is added to the ``finetune`` command from here because it needs
the agent's tools and its routing benchmark, which fine-tuning itself may not import.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from agent.core.defaults import ROUTING_MODES, TOOL_ADAPTER_ROWS, TOOL_ADAPTER_TRAINING


def register_eval(subparsers: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``eval`` (with its ``routing`` sub-command) to the ``llava-agent`` parser."""
    parser = subparsers.add_parser("eval", parents=[common], help="benchmarks of the agent's decisions")
    commands = parser.add_subparsers(dest="eval_command", metavar="{routing}")
    commands.required = True
    routing = commands.add_parser(
        "routing", parents=[common],
        help="does the agent call the right tool with the right arguments, or none? (labelled requests)",
        description="Drive the agent's first model call over a labelled set of requests (tools are instant "
        "stand-ins) and report routing accuracy, per-tool precision/recall, false calls, argument accuracy "
        "and latency.",
    )
    routing.add_argument("--model", help="hub id or local folder of the chat model (overrides the config)")
    routing.add_argument("--adapter", metavar="PATH", help="folder of a LoRA adapter to apply (overrides the config)")
    routing.add_argument("--routing", choices=ROUTING_MODES, help="routing mode (overrides agent.routing)")
    routing.add_argument("--set", dest="routing_set", metavar="FILE",
                         help="labelled requests, JSONL, or a shipped set: held-out (the default), held-out-2")
    routing.add_argument("--limit", type=int, metavar="N", help="score only the first N requests")
    routing.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    routing.add_argument("--max-new-tokens", type=int, default=256, help="token budget of the model call")
    routing.add_argument("--answers", action="store_true", help="let plain answers finish (slower; kept in --json)")
    routing.add_argument("--errors", action="store_true", help="list every wrong decision")
    routing.add_argument("--json", action="store_true", help="print the full report (every decision) as JSON")
    routing.set_defaults(func=run_routing)
    return parser


def run_routing(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from agent.app.routing_eval import evaluate_routing
    from agent.core.config import load_config

    config = load_config(args.config)
    with tqdm(desc="routing", unit="request", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:

        def progress(done: int, total: int, result: Any) -> None:
            bar.total = total
            bar.update(1)

        report = evaluate_routing(
            args.model, adapter=args.adapter, routing=args.routing, cases=args.routing_set, config=config,
            temperature=args.temperature, max_new_tokens=args.max_new_tokens, limit=args.limit,
            answers=args.answers, progress=progress,
        )
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(report.render(show_errors=args.errors) + "\n")
    return 0


# ----- finetune tools ------------------------------------------------------------------------------


def register_finetune_tools(commands: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``tools`` to the ``finetune`` sub-commands (``common``: the ``--config`` and ``--verbose`` parent parser)."""
    defaults = TOOL_ADAPTER_TRAINING
    parser = commands.add_parser(
        "tools", parents=[common], help="Train a tool-use adapter from data synthesised from the enabled tools",
        description="Synthesise tool-use training data from the tools of the configured agent (--config), train a "
        "LoRA adapter on it, and print the routing benchmark before and after.",
    )
    parser.add_argument("--model", required=True, help="Base model: hub id or local folder")
    parser.add_argument("--output", required=True, dest="output_dir", help="Adapter folder (data goes to OUTPUT-data)")
    parser.add_argument("--count", type=int, default=TOOL_ADAPTER_ROWS,
                        help=f"Training rows to synthesise (default {TOOL_ADAPTER_ROWS})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=float, default=defaults["epochs"])
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"])
    parser.add_argument("--learning-rate", type=float, default=defaults["learning_rate"])
    parser.add_argument("--lora-r", type=int, default=defaults["lora_r"])
    parser.add_argument("--lora-alpha", type=int, default=defaults["lora_alpha"])
    parser.add_argument("--lora-layers", type=int, help="Adapt only the last N decoder layers (cheaper steps)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--eval-set", help="Labelled routing requests, JSONL (default: the shipped held-out set)")
    parser.add_argument("--eval-limit", type=int, help="Benchmark only the first N requests")
    parser.add_argument("--no-eval", action="store_true", help="Skip the benchmark before and after")
    parser.add_argument("--data-only", action="store_true", help="Only write the training data (no model is loaded)")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an existing adapter folder and its training data (OUTPUT-data)")
    parser.set_defaults(func=run_finetune_tools)
    return parser


def run_finetune_tools(args: argparse.Namespace) -> int:
    from agent.app.tool_adapter import comparison, train_tool_adapter

    options: dict[str, Any] = {
        "epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
        "lora_r": args.lora_r, "lora_alpha": args.lora_alpha, "lora_layers": args.lora_layers, "device": args.device,
    }
    if args.max_steps:
        options["max_steps"] = args.max_steps
    result = train_tool_adapter(
        args.model, args.output_dir, config=args.config, count=args.count, seed=args.seed,
        eval_set=args.eval_set, eval_limit=args.eval_limit, evaluate=not args.no_eval, train=not args.data_only,
        overwrite=args.overwrite,
        progress=lambda line: sys.stderr.write(line + "\n"), **options,
    )
    sys.stdout.write(f"training data: {result.data.path}\n")
    if result.adapter_dir is not None:
        sys.stdout.write(f"adapter: {result.adapter_dir}  (use: llava-agent chat --adapter {result.adapter_dir})\n")
    if result.before is not None or result.after is not None:
        sys.stdout.write(comparison(result.before, result.after) + "\n")
    return 0
