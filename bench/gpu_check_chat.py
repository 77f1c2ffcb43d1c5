"""GPU check steps on the chat model: 1 (ChatLlava in NF4, int8 and fp16 against plain ``generate``),
2 (forced tool calls under the constraint, and the mask cost) and 5 (the turn benchmark, when it exists).
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.gpu_check_common import (
    GIB,
    Context,
    allocated_gib,
    checkpoint_parameters,
    count_modules,
    median,
    noise_image,
    peak_gib,
    percentile,
    product_tools,
    release_models,
    reset_peak,
    sync,
    unload_chat_model,
)
from bench.gpu_check_report import REPO, say

# -- step 1: ChatLlava in 4-bit, 8-bit and fp16 against plain generate ----------------------------
PRECISIONS = (("4bit", "auto", "NF4 4-bit"), ("8bit", "float16", "int8"), ("none", "float16", "fp16"))
QUANTIZED_LAYER = {"4bit": "Linear4bit", "8bit": "Linear8bitLt"}


def step_chat_model(ctx: Context, record: Any) -> None:
    from langchain_core.messages import HumanMessage

    from agent import ChatLlava
    from bench.bench_chat_model import PROMPT

    folder = ctx.assets.llava()
    record.metric("checkpoint_parameters_b", checkpoint_parameters(folder) / 1e9)
    image = noise_image()
    cases = {
        "text": [HumanMessage(PROMPT)],
        "image": [HumanMessage(content=[{"type": "image", "image": image}, {"type": "text", "text": PROMPT}])],
    }
    max_new_tokens = 32 if ctx.full else 8
    rows = []
    for quantization, dtype, label in PRECISIONS:
        repeats = 3 if ctx.full and quantization == "4bit" else 1  # int8 decodes slowly: one round
        say(f"  {label}: loading and measuring ({repeats} round(s) of {max_new_tokens} new tokens)")
        llm = ChatLlava(model=str(folder), device=ctx.device, quantization=quantization, dtype=dtype, temperature=0.0)
        try:
            result = _measure_precision(ctx, llm, cases, max_new_tokens, repeats, quantization)
        except Exception as exc:
            record.check(f"{label}: loads and generates on {ctx.device}", False, f"{type(exc).__name__}: {exc}")
            rows.append([label] + [None] * 9)
            unload_chat_model(llm.spec)
            continue
        if quantization != "4bit":  # the 4-bit model stays cached for step 2 (ChatLlava's own cache)
            unload_chat_model(llm.spec)
        gc.collect()
        key = {"4bit": "nf4", "8bit": "int8", "none": "fp16"}[quantization]
        record.check(f"{label}: loads and generates on {ctx.device}", True, f"compute dtype {result['dtype']}")
        record.check(f"{label}: every weight is on {ctx.device}", result["devices"] == [ctx.device],
                     f"parameters on {result['devices']}")  # fmt: skip
        if quantization in QUANTIZED_LAYER:
            record.check(f"{label}: language-model layers are {QUANTIZED_LAYER[quantization]}",
                         result["quantized_layers"] > 0, f"{result['quantized_layers']} layers")  # fmt: skip
        for name in ("load_s", "memory_gib", "peak_gib", "ttft_text_s", "ttft_image_s", "decode_tok_s",
                     "plain_decode_tok_s", "decode_ratio"):
            record.metric(f"{key}_{name}", result[name])  # fmt: skip
        rows.append([label, result["load_s"], result["memory_gib"], result["peak_gib"],
                     result["plain_ttft_text_s"], result["ttft_text_s"], result["plain_ttft_image_s"],
                     result["ttft_image_s"], result["plain_decode_tok_s"], result["decode_tok_s"]])  # fmt: skip
        target_met = result["decode_ratio"] >= 0.95 if ctx.full else None
        record.target(f"{label} ChatLlava decode / plain generate", round(100 * result["decode_ratio"], 1),
                      ">= 95%", target_met)  # fmt: skip
    memory = ("memory = GPU memory of the weights, peak = max allocated while generating" if ctx.device == "cuda"
              else "memory = model footprint, peak = the process's peak RSS")
    record.table(
        f"ChatLlava against plain `generate` on the same weights, medians, {max_new_tokens} new tokens ({memory})",
        ["precision", "load s", "memory GiB", "peak GiB", "TTFT text plain s", "TTFT text ChatLlava s",
         "TTFT image plain s", "TTFT image ChatLlava s", "decode plain tok/s", "decode ChatLlava tok/s"],
        rows,
    )  # fmt: skip
    if "nf4_decode_tok_s" in record.metrics:
        ctx.shared["nf4_decode_tok_s"] = record.metrics["nf4_decode_tok_s"]
        record.headline = (
            f"NF4: {record.metrics['nf4_decode_tok_s']:.1f} tok/s = {100 * record.metrics['nf4_decode_ratio']:.1f}% "
            f"of plain generate; TTFT {record.metrics['nf4_ttft_text_s']:.3f} s text, "
            f"{record.metrics['nf4_ttft_image_s']:.3f} s image; {record.metrics['nf4_memory_gib']:.2f} GiB, "
            f"loaded in {record.metrics['nf4_load_s']:.1f} s"
        )


def _measure_precision(ctx: Context, llm: Any, cases: dict, max_new_tokens: int, repeats: int, quantization: str) -> dict:
    from bench.bench_chat_model import run_chat, run_plain

    before = allocated_gib(ctx.device)
    started = time.perf_counter()
    loaded = llm.loaded
    sync(ctx.device)
    load_s = time.perf_counter() - started
    model = loaded.model
    memory = allocated_gib(ctx.device) - before if ctx.device == "cuda" else model.get_memory_footprint() / GIB
    reset_peak(ctx.device)
    results: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    for case, messages in cases.items():
        run_chat(llm, messages, 4)  # warm-up: first-call allocations, kernels
        run_plain(llm, messages, 4)
        for _ in range(repeats):  # interleaved, so both paths see the same conditions
            results.setdefault(("plain", case), []).append(run_plain(llm, messages, max_new_tokens))
            results.setdefault(("chat", case), []).append(run_chat(llm, messages, max_new_tokens))

    def decode(path: str) -> float:
        return median([r[1] for case in cases for r in results[(path, case)]])

    layer = QUANTIZED_LAYER.get(quantization)
    return {
        "load_s": load_s,
        "memory_gib": memory,
        "peak_gib": peak_gib(ctx.device),
        "dtype": llm.spec.dtype,
        "devices": sorted({p.device.type for p in model.parameters()}),
        "quantized_layers": count_modules(model.get_decoder(), layer) if layer else 0,
        "ttft_text_s": median([r[0] for r in results[("chat", "text")]]),
        "ttft_image_s": median([r[0] for r in results[("chat", "image")]]),
        "plain_ttft_text_s": median([r[0] for r in results[("plain", "text")]]),
        "plain_ttft_image_s": median([r[0] for r in results[("plain", "image")]]),
        "decode_tok_s": decode("chat"),
        "plain_decode_tok_s": decode("plain"),
        "decode_ratio": decode("chat") / decode("plain"),
    }


# -- step 2: forced tool calls under the constraint, and the mask cost ----------------------------
FORCED_CALLS = 20


def step_tool_calls(ctx: Context, record: Any) -> None:
    import jsonschema
    import torch
    from langchain_core.messages import HumanMessage

    from agent import ChatLlava
    from agent.decoding.constraint import ToolCallConstraint as constraint_class
    from agent.decoding.tool_protocol import format_tool_calls
    from agent.llava.messages import tool_schemas
    tools = product_tools()
    by_name = {tool.name: tool for tool in tools}
    schemas = tool_schemas(tools)
    parameters = {s["function"]["name"]: s["function"]["parameters"] for s in schemas}
    names = list(parameters)
    llm = ChatLlava(model=str(ctx.assets.llava()), device=ctx.device, quantization="4bit", temperature=1.0, top_p=1.0)
    started = time.perf_counter()
    loaded = llm.loaded  # cached from step 1 when it ran
    record.metric("model_load_s", time.perf_counter() - started)
    tokenizer = loaded.tokenizer
    eos = loaded.model.generation_config.eos_token_id
    started = time.perf_counter()
    constraints = {name: constraint_class.build(tokenizer, schemas, name, eos_token_ids=eos) for name in names}
    record.metric("constraint_build_s", time.perf_counter() - started)
    budget = max(c.required_new_tokens for c in constraints.values()) + 12  # room to choose, little to wait for
    record.metric("max_new_tokens", budget)

    replies, problems, seconds, tokens = [], [], [], []
    for index in range(FORCED_CALLS):
        name = names[index % len(names)]
        bound = llm.model_copy(update={"seed": index, "max_new_tokens": budget}).bind_tools(tools, tool_choice=name)
        prompt = f"Request {index}: use {name} for photos/cat-{index}.png and tell me what you did."
        started = time.perf_counter()
        reply = bound.invoke([HumanMessage(prompt)])
        sync(ctx.device)
        seconds.append(time.perf_counter() - started)
        tokens.append(reply.usage_metadata["output_tokens"])
        replies.append((name, reply))
        problem = _call_problem(reply, name, parameters, by_name, jsonschema)
        if problem:
            problems.append(f"call {index} ({name}): {problem}")
    valid = FORCED_CALLS - len(problems)
    record.check(f"{FORCED_CALLS} forced calls are valid for their tools' schemas", not problems,
                 f"{valid}/{FORCED_CALLS} valid" + (f"; first problem: {problems[0]}" if problems else ""))  # fmt: skip
    record.metric("valid_calls", valid)
    record.metric("tokens_per_call_mean", statistics.mean(tokens))
    record.metric("seconds_per_call_median", median(seconds))
    record.metric("call_tokens_per_s", sum(tokens) / sum(seconds), "tok/s (prefill included)")

    # The mask cost per token, replayed on the device over each call's tokens (the processor's work
    # depends only on the token sequence, not on the logits' values).
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    times, outside = [], 0
    for name, reply in replies:
        if not reply.tool_calls:
            continue
        ids = tokenizer(format_tool_calls(reply.tool_calls), add_special_tokens=False)["input_ids"]
        processor = constraints[name].logits_processor(max(budget, len(ids) + 1))
        sequence = torch.tensor([[tokenizer.pad_token_id or 0]], device=loaded.input_device)
        for position in range(len(ids) + 1):
            scores = torch.zeros((1, vocab), device=loaded.input_device)
            sync(ctx.device)
            started = time.perf_counter()
            processor(sequence, scores)
            sync(ctx.device)
            times.append(time.perf_counter() - started)
            if position < len(ids):
                outside += not bool(torch.isfinite(scores[0, ids[position]]))
                sequence = torch.cat([sequence, torch.tensor([[ids[position]]], device=sequence.device)], dim=1)
    record.check("every replayed call token is allowed by the mask", outside == 0 and bool(times),
                 f"{len(times)} steps, {outside} outside")  # fmt: skip
    if times:
        mask_ms = 1000 * median(times)
        record.metric("mask_ms_per_token_median", mask_ms)
        record.metric("mask_ms_per_token_p95", 1000 * percentile(times, 0.95))
        record.metric("mask_ms_per_token_mean", 1000 * statistics.mean(times))
        record.metric("vocabulary", vocab)
        decode = ctx.shared.get("nf4_decode_tok_s")
        share = f", {100 * mask_ms / (1000 / decode):.1f}% of an NF4 decode step" if decode else ""
        if decode:
            record.metric("mask_share_of_decode_step_pct", 100 * mask_ms / (1000 / decode))
        record.headline = (f"{valid}/{FORCED_CALLS} forced calls valid; mask {mask_ms:.3f} ms/token median{share}; "
                           f"{median(seconds):.2f} s per call")  # fmt: skip


def _call_problem(reply: Any, name: str, parameters: dict, by_name: dict, jsonschema: Any) -> str | None:
    if reply.invalid_tool_calls:
        return f"invalid calls {reply.invalid_tool_calls!r:.200}"
    if not reply.tool_calls:
        return f"no call in {reply.content!r:.200}"
    for call in reply.tool_calls:
        if call["name"] != name:
            return f"called {call['name']!r}, not the forced tool"
        try:
            jsonschema.validate(call["args"], parameters[name])
            by_name[name].args_schema.model_validate(call["args"])
        except Exception as exc:
            return f"arguments {call['args']!r:.200} rejected: {exc}"
    return None


# -- step 5: the turn benchmark, when it exists -------------------------------------------------------
def step_turns(ctx: Context, record: Any) -> None:
    release_models()
    script = REPO / "bench" / "bench_turns.py"
    if not script.is_file():
        record.status = "not available"
        record.headline = "bench/bench_turns.py does not exist yet"
        record.note("The turn benchmark (prefix cache reuse, jump-forward decoding) has not landed; nothing to run.")
        return
    environment = dict(os.environ, PYTHONPATH=str(REPO))
    usage = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                           cwd=REPO, env=environment).stdout  # fmt: skip
    command = [sys.executable, str(script)]
    if "--device" in usage:
        command += ["--device", ctx.device]
    if not ctx.full:
        if "--size" not in usage:
            record.status = "skipped"
            record.headline = "bench_turns.py has no --size option, so it has no tiny dry run"
            record.note(record.headline)
            return
        command += ["--size", "tiny"]
        if "--turns" in usage:  # a dry run: two tool turns and two plain ones exercise every measurement
            command += ["--turns", "4", "--call-tokens", "48", "--answer-tokens", "16"]
    results = ctx.workdir / "bench_turns.json"
    if "--output" in usage:
        command += ["--output", str(results)]
    say("  " + " ".join(command[1:]))
    done = subprocess.run(command, capture_output=True, text=True, timeout=420 if ctx.full else 120, cwd=REPO,
                          env=environment)  # fmt: skip
    tail = (done.stdout + done.stderr)[-3000:]
    record.note("Output:\n\n```\n" + tail.strip() + "\n```")
    if done.returncode != 0:
        raise RuntimeError(f"bench_turns.py exited with {done.returncode}: {tail[-500:]}")
    if results.is_file():
        data = json.loads(results.read_text())
        for name, value in (data.items() if isinstance(data, dict) else []):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                record.metric(name, value)
    record.headline = f"bench_turns.py ran ({len(record.metrics)} numeric results)"
