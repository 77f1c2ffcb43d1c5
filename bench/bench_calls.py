"""Tool calls written by a real model: one token per pass, jump-forward, jump-forward + prompt lookup.

The turn benchmark (``bench_turns.py``) runs random weights, whose string arguments are noise
that fills the token budget. This one asks a real pretrained language model (the SmolLM2-135M
LLaVA checkpoint of the tests, ``tests/real_model.py``; any LLaVA folder with ``--model``),
optionally with the tool-use adapter, to write the calls of the held-out routing set's tool
requests, each forced to the expected tool (as hybrid routing does when it is sure), with the
agent's real system prompt and tools, greedy. Per request and configuration, interleaved:

* the time from ``invoke`` to the complete, validated call (the system prompt's keys and values
  come from the prefix cache, as in a real thread: each configuration has its own, warmed once);
* the decoding after the first token (``seconds - first_token_seconds`` of the decode stats);
* forward passes, tokens forced by the grammar, drafted and kept tokens.

Configurations: ``one token at a time`` (jump-forward, few-row logits and prompt lookup off),
``jump-forward`` (prompt lookup off) and ``jump-forward + lookup`` (the defaults). The calls of
the last two must be identical (prompt lookup is exact at temperature 0); the first may spell a
forced stretch differently.

    python bench/bench_calls.py                       # the test checkpoint (built if missing)
    python bench/bench_calls.py --model M --adapter A --output calls.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS: dict[str, dict] = {
    "one token at a time": {"jump_forward": False, "few_row_logits": False, "prompt_lookup": "off"},
    "jump-forward": {"prompt_lookup": "off"},
    "jump-forward + lookup": {},
}


def run(args) -> dict:
    import jsonschema
    from langchain_core.messages import HumanMessage, SystemMessage

    from agent import ChatLlava
    from agent.app.routing_eval import agent_tools, load_routing_set
    from agent.app.system_prompt import build_system_prompt
    from agent.core.config import load_config
    from agent.llava.messages import tool_schemas
    from agent.llava.prefix_cache import PrefixCache

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = args.model
    if model is None:
        from tests.real_model import smollm2_llava_path

        model = str(smollm2_llava_path())
    config = load_config(None, overrides={"agent": {"long_term_memory": True}, "data_dir": "/tmp/bench-calls"})
    tools = agent_tools(config)
    schemas = tool_schemas(tools)
    parameters = {s["function"]["name"]: s["function"]["parameters"] for s in schemas}
    system = SystemMessage(build_system_prompt(tools))
    llm = ChatLlava(model=model, adapter=args.adapter, device="cpu", temperature=0.0, max_tokens=args.max_tokens,
                    quantization=args.quantization)
    cases = [c for c in load_routing_set(args.set) if c.tool is not None and c.tool in parameters]
    cases = cases[:: max(1, len(cases) // args.requests)][: args.requests] if args.requests else cases
    loaded = llm.loaded
    print(f"precision {loaded.spec.quantization}/{loaded.spec.dtype}", flush=True)
    base_cache = loaded.prefix_cache
    caches = {name: PrefixCache(accountant=base_cache.accountant) for name in CONFIGS}
    for name, settings in CONFIGS.items():  # warm-up: the head copy, constraint indexes, the system prompt
        loaded.prefix_cache = caches[name]
        llm.bind_tools(schemas, tool_choice="speak").invoke([system, HumanMessage("say hi")], **settings)
    rows = []
    names = list(CONFIGS)
    for number, case in enumerate(cases):
        row: dict = {"id": case.id, "tool": case.tool, "configs": {}}
        messages = [system, HumanMessage(case.request)]
        bound = llm.bind_tools(schemas, tool_choice=case.tool)
        for name in names[number % len(names) :] + names[: number % len(names)]:
            loaded.prefix_cache = caches[name]
            started = time.perf_counter()
            reply = bound.invoke(messages, **CONFIGS[name])
            seconds = time.perf_counter() - started
            calls = [(c["name"], c["args"]) for c in reply.tool_calls]
            for call_name, call_args in calls:
                jsonschema.validate(call_args, parameters[call_name])
            stats = reply.response_metadata["decode"]
            row["configs"][name] = {
                "seconds": seconds,
                "decode_seconds": stats["seconds"] - (stats["first_token_seconds"] or 0.0),
                "tokens": stats["generated_tokens"],
                "passes": stats["forward_passes"],
                "forced": stats["forced_tokens"],
                "drafted": stats.get("drafted_tokens", 0),
                "kept": stats.get("accepted_tokens", 0),
                "calls": calls,
            }
        done = row["configs"]
        print(
            f"{number + 1}/{len(cases)} {case.id:<14} "
            + "  ".join(f"{n}: {done[n]['seconds']:.2f}s/{done[n]['passes']}p" for n in names)
            + f"  {json.dumps(done['jump-forward + lookup']['calls'])[:90]}",
            flush=True,
        )
        rows.append(row)
    loaded.prefix_cache = base_cache
    return {"model": model, "adapter": args.adapter, "rows": rows, "load_average": os.getloadavg()}


def summarise(report: dict) -> dict:
    rows = report["rows"]
    slow = "one token at a time"
    print("\n| configuration | call (s, median) | decode after the first token (s) | passes | tokens | kept drafts |")
    print("|---|---:|---:|---:|---:|---:|")
    summary: dict = {}
    for name in CONFIGS:
        values = [r["configs"][name] for r in rows]

        def median(key, values=values):
            return statistics.median(v[key] for v in values)

        summary[name] = {k: median(k) for k in ("seconds", "decode_seconds", "passes", "tokens", "kept")}
        s = summary[name]
        print(
            f"| {name} | {s['seconds']:.3f} | {s['decode_seconds']:.3f} | {s['passes']:g} | {s['tokens']:g} "
            f"| {s['kept']:g} |"
        )
    print("\nSpeed-up over one token at a time (median of the per-request ratios):")
    for name in list(CONFIGS)[1:]:
        whole = statistics.median(r["configs"][slow]["seconds"] / r["configs"][name]["seconds"] for r in rows)
        decode = statistics.median(
            r["configs"][slow]["decode_seconds"] / r["configs"][name]["decode_seconds"]
            for r in rows
            if r["configs"][name]["decode_seconds"] > 0
        )
        summary[name]["speedup_call"] = whole
        summary[name]["speedup_decode"] = decode
        print(f"- {name}: whole call {whole:.2f}x, decoding after the first token {decode:.2f}x")
    same = sum(r["configs"]["jump-forward"]["calls"] == r["configs"]["jump-forward + lookup"]["calls"] for r in rows)
    same_slow = sum(r["configs"][slow]["calls"] == r["configs"]["jump-forward + lookup"]["calls"] for r in rows)
    print(f"- calls identical with and without prompt lookup: {same}/{len(rows)}")
    print(f"- calls identical to one token at a time: {same_slow}/{len(rows)}")
    print(f"- load average at the end: {report['load_average']}")
    summary["identical_with_lookup"] = f"{same}/{len(rows)}"
    summary["identical_to_one_at_a_time"] = f"{same_slow}/{len(rows)}"
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a LLaVA folder (default: the tests' SmolLM2 checkpoint)")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--set", default=None, help="a routing set (default: the shipped held-out set)")
    parser.add_argument("--requests", type=int, default=40, help="tool requests, spread over the set (0: all)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--quantization", default="auto", help="auto (this CPU's fastest), 4bit, int8-weights or none")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    report = run(args)
    report["summary"] = summarise(report)
    if args.output:
        args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
