"""The routing table of the README: the benchmark over the held-out set for several set-ups.

    python bench/bench_routing_table.py --model M --adapter A --out runs/routing \
        --setup model --setup semantic --setup adapter --setup adapter+hybrid

Each set-up is ``[adapter+]<routing mode>`` (``adapter`` alone means the adapter with
``routing = "model"``). Every decision is appended to ``OUT/<setup>.jsonl`` as it is made, so an
interrupted run still gives numbers for the requests it reached (``--summarise`` prints them);
a finished set-up also writes ``OUT/<setup>.json`` (the full report). The CPU load average is
recorded with each set-up, since latency depends on it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path


def parse_setup(setup: str) -> tuple[bool, str]:
    parts = setup.split("+")
    adapter = parts[0] == "adapter"
    mode = parts[1] if adapter and len(parts) > 1 else ("model" if adapter else parts[0])
    return adapter, mode


def summarise(out: Path, setups: list[str]) -> str:
    from agent.app.routing_eval import CaseResult, RoutingReport

    lines = ["| set-up | requests | routing accuracy | argument accuracy | false-call rate | median latency (s) |",
             "|---|---|---|---|---|---|"]
    for setup in setups:
        path = out / f"{setup}.jsonl"
        if not path.exists():
            continue
        results = [CaseResult(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
        report = RoutingReport(results, [])
        lines.append(f"| {setup} | {len(results)} | {report.routing_accuracy:.3f} | {report.argument_accuracy:.3f} | "
                     f"{report.false_call_rate:.3f} | {report.median_latency_s:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--adapter")
    parser.add_argument("--setup", action="append", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", dest="routing_set")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--summarise", action="store_true", help="only print the table of what is there")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.summarise:
        sys.stdout.write(summarise(out, args.setup) + "\n")
        return

    from agent.app.routing_eval import evaluate_routing

    for setup in args.setup:
        use_adapter, mode = parse_setup(setup)
        if use_adapter and not args.adapter:
            raise SystemExit(f"set-up {setup!r} needs --adapter")
        progress_file = out / f"{setup}.jsonl"
        progress_file.write_text("")
        load_before = os.getloadavg()

        def progress(done: int, total: int, result, progress_file=progress_file, setup=setup) -> None:
            with progress_file.open("a") as handle:
                handle.write(json.dumps(asdict(result), ensure_ascii=False) + "\n")
            sys.stderr.write(f"{setup} {done}/{total} {result.id}: {result.called} ({result.latency_s:.1f} s)\n")

        report = evaluate_routing(
            args.model, adapter=args.adapter if use_adapter else None, routing=mode, cases=args.routing_set,
            limit=args.limit, max_new_tokens=args.max_new_tokens, progress=progress,
        )
        data = report.to_dict()
        data["load_average"] = {"before": load_before, "after": os.getloadavg()}
        (out / f"{setup}.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        sys.stdout.write(f"== {setup}\n{report.render()}\n\n")
    sys.stdout.write(summarise(out, args.setup) + "\n")


if __name__ == "__main__":
    main()
