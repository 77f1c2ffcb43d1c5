"""Semantic pre-routing: calibrate its threshold and margin, and measure its cost per turn.

    python bench/bench_routing.py                 # calibrate on the built-in tools, then time routing
    python bench/bench_routing.py --repeats 3     # more timing rounds
    python bench/bench_routing.py --package       # also ship the fitted read-out for the built-in tools

Calibration uses requests synthesised from the tools' own examples, each scored against the
other examples only (agent.app.routing_calibration.calibrate); the held-out benchmark set is used only to time
routing decisions (and to report, for information, how the router alone labels it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="timing rounds over the held-out requests")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the agent's embedder shares the CPU)")
    parser.add_argument("--package", action="store_true",
                        help="write the read-out for the built-in tools to agent/data/routing/ (replacing older ones)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from agent.app import routing
    from agent.app.routing import NO_TOOL, SemanticRouter, median_ms
    from agent.app.routing_calibration import calibrate
    from agent.app.routing_eval import agent_tools, load_routing_set
    from agent.core.config import load_config
    from memory.embedders import TextEmbedder

    config = load_config({"data_dir": "/tmp/llava-agent-bench-routing"})
    tools = agent_tools(config)
    embedder = TextEmbedder(config.memory.text_embedder, device="cpu", runtime=config.memory.text_embedder_runtime)
    started, cpu = time.perf_counter(), time.process_time()
    calibration = calibrate(tools, embedder)
    print(f"calibration ({time.perf_counter() - started:.1f} s, {time.process_time() - cpu:.1f} s CPU, embedder "
          f"load included): {calibration.summary()}")
    started, cpu = time.perf_counter(), time.process_time()
    router = SemanticRouter(tools, embedder, threshold=calibration.threshold, margin=calibration.margin,
                            no_tool_threshold=calibration.no_tool_threshold)
    routing.PACKAGED_READOUTS = Path("/nonexistent")  # time the fit itself
    router.readout  # noqa: B018  (fits the read-out)
    print(f"fitting the router on {router.requests} requests: {time.perf_counter() - started:.1f} s "
          f"({time.process_time() - cpu:.1f} s CPU; cached per data folder afterwards)")
    if args.package:
        shipped = Path(routing.__file__).resolve().parents[1] / "data" / "routing"
        for old in shipped.glob("router-*.npz"):
            old.unlink()
        routing.save_readout(router.readout, shipped / f"router-{router.fingerprint()}.npz")
        print(f"shipped the read-out for the built-in tools: {shipped / f'router-{router.fingerprint()}.npz'}")

    cases = load_routing_set()
    router.route("warm up")
    decisions = [router.route(case.request) for _ in range(args.repeats) for case in cases]
    walls = sorted(d.seconds for d in decisions)
    print(f"routing cost per turn over {len(decisions)} requests: median {median_ms(decisions):.1f} ms wall "
          f"(p90 {1000 * walls[int(0.9 * len(walls))]:.1f} ms), median {median_ms(decisions, cpu=True):.1f} ms CPU")

    right = wrong = unrouted = 0
    for case in cases:
        decision = router.route(case.request)
        if decision.tool is None:
            unrouted += 1
        elif decision.tool == (case.tool or NO_TOOL):
            right += 1
        else:
            wrong += 1
    print(f"held-out set, router alone: {right} routed right, {wrong} routed wrong, {unrouted} unrouted "
          f"of {len(cases)} (unrouted no-tool requests are right in 'semantic' mode)")
    sure = [case.tool for case in cases if router.route(case.request).no_tool]
    print(f"  sure no tool fits ('hybrid' answers in words without the model): {len(sure)} requests, "
          f"{sum(tool is not None for tool in sure)} of them needing a tool")
    # In 'semantic' mode the decision is the router's alone (a routed request gets a call of that
    # tool, any other a plain answer), so its routing accuracy and false-call rate need no model.
    decided = [(case, router.route(case.request).tool) for case in cases]
    plain = [tool for case, tool in decided if case.tool is None]
    accuracy = sum(tool == case.tool for case, tool in decided) / len(decided)
    false_calls = sum(tool is not None for tool in plain) / max(1, len(plain))
    print(f"'semantic' mode on the held-out set: routing accuracy {accuracy:.3f}, false-call rate {false_calls:.3f} "
          f"({len(plain)} no-tool requests)")
    by_tool: dict[str, list[int]] = {}
    for case, tool in decided:
        counts = by_tool.setdefault(case.tool or NO_TOOL, [0, 0])
        counts[0] += tool == case.tool
        counts[1] += 1
    print("  right per expected tool: " + ", ".join(f"{name} {a}/{b}" for name, (a, b) in by_tool.items()))


if __name__ == "__main__":
    main()
