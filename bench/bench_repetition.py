"""Choose decoding defaults for small models by measurement: loops, length and right answers.

    python bench/bench_repetition.py --model "$(python tests/real_model.py)"

Each setting answers the same plain requests through the agent's first model call (its system
prompt and tools bound, as in chat), up to --max-new-tokens. Reported per setting: replies that
loop (some 8-token sequence occurs three times or more), replies cut by the token limit, the
median reply length, knowledge answers containing the expected word, and requests that wrongly
became a tool call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    ("What is the capital of Japan?", "Tokyo"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"),
    ("How many days are in a week?", "seven|7"),
    ("What is the largest planet in our solar system?", "Jupiter"),
    ("What gas do plants take in from the air?", "carbon dioxide|CO2"),
    ("Tell me about your tools.", None),
    ("Can you help me plan a picnic?", None),
    ("Explain what a photograph is.", None),
]
SETTINGS = {
    "greedy": {"temperature": 0.0},
    "default (t=0.2)": {"temperature": 0.2, "top_p": 0.95},
    "t=0.2, penalty 1.2": {"temperature": 0.2, "top_p": 0.95, "repetition_penalty": 1.2},
    "t=0.2, no-repeat 4-gram": {"temperature": 0.2, "top_p": 0.95, "no_repeat_ngram_size": 4},
    "t=0.2, penalty 1.1 + no-repeat 6": {"temperature": 0.2, "top_p": 0.95, "repetition_penalty": 1.1, "no_repeat_ngram_size": 6},
}


def loops(token_ids: list[int], size: int = 8, times: int = 3) -> bool:
    counts: dict[tuple[int, ...], int] = {}
    for start in range(len(token_ids) - size + 1):
        key = tuple(token_ids[start : start + size])
        counts[key] = counts.get(key, 0) + 1
        if counts[key] >= times:
            return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="names of settings to run")
    args = parser.parse_args()

    import re

    import torch
    from langchain_core.messages import HumanMessage, SystemMessage

    torch.set_num_threads(args.threads)
    from agent import ChatLlava
    from agent.app.routing_eval import agent_tools, stand_in_tools
    from agent.app.system_prompt import build_system_prompt
    from agent.core.config import load_config

    tools = stand_in_tools(agent_tools(load_config({"data_dir": "/tmp/llava-agent-bench-repetition"})))
    system = build_system_prompt(tools)
    for name, options in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        llm = ChatLlava(model=args.model, quantization="none", max_new_tokens=args.max_new_tokens, seed=args.seed,
                        **options).bind_tools(tools)
        tokenizer = None
        looped = cut = right = asked = calls = 0
        lengths = []
        started = time.perf_counter()
        for prompt, expected in PROMPTS:
            reply = llm.invoke([SystemMessage(system), HumanMessage(prompt)])
            if reply.tool_calls:
                calls += 1
                continue
            if tokenizer is None:
                tokenizer = llm.bound.loaded.tokenizer
            ids = tokenizer(reply.content, add_special_tokens=False)["input_ids"]
            lengths.append(len(ids))
            looped += loops(ids)
            cut += reply.response_metadata.get("finish_reason") == "length"
            if expected is not None:
                asked += 1
                right += bool(re.search(expected, reply.content, re.IGNORECASE))
            print(f"  [{name}] {prompt!r} -> {reply.content[:150]!r}", flush=True)
        print(f"{name}: looping {looped}/{len(lengths)}, cut at the limit {cut}/{len(lengths)}, median length "
              f"{statistics.median(lengths) if lengths else 0} tokens, right answers {right}/{asked}, tool calls "
              f"{calls}/{len(PROMPTS)} ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
