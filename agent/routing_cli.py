"""The ``eval`` command: ``llava-agent eval routing`` runs the routing benchmark and prints its report.

This layer only parses and prints; :mod:`agent.routing_eval` does the work.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

ROUTING_MODES = ("model", "semantic", "hybrid")


def register(subparsers: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
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
                         help="labelled requests, JSONL (default: the shipped held-out set)")
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

    from agent.config import load_config
    from agent.routing_eval import evaluate_routing

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
