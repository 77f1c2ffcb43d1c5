"""GPU decode: plain ``generate`` vs the decode loop, eager and with CUDA graphs, on a 4-bit NF4 model.

A random llava-1.5-7b-sized checkpoint (weights drawn on the GPU, saved once) is loaded the way
``ChatLlava`` loads it (NF4 + double quantization, bf16 compute: the product's CUDA default) and
decoded greedily through ``ChatLlava``'s generation path (``stream_generate``, so LangChain need
not be installed), interleaving the paths so each sees the same machine:

* ``transformers``: ``decoder="transformers"`` (``model.generate``, dynamic cache);
* ``loop eager``: the decode loop with static buffers, no graphs;
* ``loop + graphs``: the decode loop replaying a captured CUDA graph per step.

Reported: decode tokens/s (tokens after the first over the time after the first), whether the
graph path produced the same tokens as the eager loop, and a forced tool call (four product
tools) on each path. Target at 7b on an H100/H200: >= 150 tok/s batch-1 decode.

    python bench/bench_gpu_decode.py --size 7b --output results.json
    python bench/bench_gpu_decode.py --size tiny --device cpu --uncaptured-graphs   # a dry run

``--size tiny`` is a tiny llama with llava-1.5-7b's head layout (32 heads, no grouped keys and
values); ``--uncaptured-graphs`` runs the graph path's computation (static buffers, a bucket of
positions under a mask) without capturing it, so the dry run checks it where CUDA is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PROMPT = "Describe a red circle meeting a blue square, in a long story with many details."
PATHS = {
    "transformers": {"decoder": "transformers"},
    "loop eager": {"cuda_graphs": False},
    "loop + graphs": {"cuda_graphs": True},
}


def _generate(loaded, settings: dict, max_tokens: int, tools=None, prompt: str = PROMPT):
    """One greedy reply through the product's generation path (no LangChain needed)."""
    from agent.decoding.constraint import ToolCallConstraint
    from agent.llava.decode_setup import DecodeSettings
    from agent.llava.prompting import render_prompt
    from agent.llava.streaming import stream_generate

    rendered = render_prompt(
        loaded.processor, [{"role": "user", "content": prompt}], tools=tools, config=loaded.config
    )
    inputs = rendered.encode(loaded.processor)
    processor = None
    if tools:
        constraint = ToolCallConstraint.build(
            loaded.tokenizer, tools, "any", eos_token_ids=loaded.model.generation_config.eos_token_id
        )
        processor = constraint.logits_processor(max_tokens)
    decoder = settings.get("decoder", "auto")
    decode_settings = (
        None
        if decoder == "transformers"
        else DecodeSettings(prefix_cache=False, cuda_graphs=settings.get("cuda_graphs", True))
    )
    options = {"max_new_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0, "seed": None}
    started = time.perf_counter()
    first = last = None
    result = None
    for event in stream_generate(
        loaded, inputs, options=options, constraint_processor=processor, decode_settings=decode_settings
    ):
        now = time.perf_counter()
        if isinstance(event, str):
            first = first or now
            last = now
        else:
            result = event
    return started, first, last, result


def decode_rate(loaded, settings: dict, max_tokens: int) -> tuple[float, str, dict]:
    """Tokens/s after the first streamed token, the reply text, and the loop's stats."""
    _, first, last, result = _generate(loaded, settings, max_tokens)
    if first is None or last is None or last <= first:
        return float("nan"), result.text, result.decode or {}
    return (result.output_tokens - 1) / (last - first), result.text, result.decode or {}


def tool_call(loaded, schemas, settings: dict) -> tuple[float, str, dict]:
    from agent.decoding.tool_protocol import parse_tool_calls

    started, _, _, result = _generate(
        loaded, settings, 256, tools=schemas, prompt="Describe cat.png and read it aloud."
    )
    elapsed = time.perf_counter() - started
    _, calls = parse_tool_calls(result.text)
    return elapsed, json.dumps([(c["name"], c["args"]) for c in calls]), result.decode or {}


def product_schemas(path: Path | None) -> list[dict]:
    """The four product tools' schemas (from a JSON file where LangChain is not installed)."""
    if path is not None:
        return json.loads(path.read_text())
    from agent.llava.messages import tool_schemas
    from tools.caption import CaptionImageTool
    from tools.generate import GenerateImageTool
    from tools.search import SearchImagesTool
    from tools.speak import SpeakTool

    return tool_schemas([CaptionImageTool(), GenerateImageTool(), SearchImagesTool(), SpeakTool()])


def _common_prefix(first: str, second: str) -> int:
    pairs = zip(first, second, strict=False)
    return next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(first), len(second)))


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _force_uncaptured_graphs() -> None:
    """Make the decode loop use a :class:`GraphDecoder` that runs its step uncaptured, on any device."""
    import agent.llava.decode_loop as decode_loop
    from agent.llava.cuda_graphs import GraphDecoder

    def uncaptured(loaded, parts, positions):
        decoder = loaded.accelerators.get("graphs")
        if decoder is None or not decoder.fits(positions):
            dtype = parts.head.weight.dtype
            decoder = GraphDecoder(parts, positions, loaded.input_device, dtype, capture=False)
            loaded.accelerators["graphs"] = decoder
        return decoder

    decode_loop.graph_decoder = uncaptured


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["7b", "0.5b", "tiny"], default="7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--uncaptured-graphs",
        action="store_true",
        help="run the graph path's step computation uncaptured (checks it on a CPU)",
    )
    parser.add_argument(
        "--schemas",
        type=Path,
        default=None,
        help="tool schemas as JSON (written with --write-schemas elsewhere)",
    )
    parser.add_argument(
        "--write-schemas", type=Path, default=None, help="write the product tools' schemas and exit"
    )
    args = parser.parse_args()
    if args.write_schemas:
        args.write_schemas.write_text(json.dumps(product_schemas(None)))
        return

    import torch

    from agent.llava.loading import load_model, resolve_spec

    results: dict = {"size": args.size, "device": args.device, "errors": []}
    results["versions"] = {name: _version(name) for name in ("torch", "transformers", "bitsandbytes")}
    if args.uncaptured_graphs:
        _force_uncaptured_graphs()
    started = time.perf_counter()
    if args.model_dir:
        folder = args.model_dir
    elif args.size == "tiny":
        from tests.tiny_models import LLAVA_15_7B_HEADS, build_tiny_llava

        folder = build_tiny_llava(Path(tempfile.mkdtemp()) / "tiny", "llama", text_overrides=LLAVA_15_7B_HEADS)
    else:
        from bench_chat_model import build_checkpoint

        init = "cuda" if args.device.startswith("cuda") else "cpu"
        folder = build_checkpoint(Path(tempfile.mkdtemp(prefix="gpu-decode-")), args.size, init_device=init)
        torch.cuda.empty_cache() if init == "cuda" else None
    results["build_seconds"] = round(time.perf_counter() - started, 1)
    print(f"checkpoint ready in {results['build_seconds']}s: {folder}", flush=True)

    spec = resolve_spec(str(folder), device=args.device)
    started = time.perf_counter()
    llm = load_model(spec)
    results["load_seconds"] = round(time.perf_counter() - started, 1)
    results["spec"] = {"quantization": spec.quantization, "dtype": spec.dtype, "device": spec.device}
    if args.device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name()
    from agent.llava.decode_setup import model_parts
    from agent.llava.kv_cache import cache_keyword

    parts = model_parts(llm.model)
    results["cache_keyword"] = parts if isinstance(parts, str) else cache_keyword(parts.language_model)
    print(f"loaded in {results['load_seconds']}s: {results['spec']} {results['versions']}", flush=True)
    schemas = product_schemas(args.schemas)

    rates: dict[str, list[float]] = {name: [] for name in PATHS}
    texts: dict[str, str] = {}
    metas: dict[str, dict] = {}
    for name, settings in PATHS.items():  # warm-up: allocations, graph capture for the buckets used
        try:
            decode_rate(llm, settings, args.max_new_tokens)
        except Exception as exc:  # noqa: BLE001 - recorded, the other paths still run
            results["errors"].append(f"warm-up {name}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
    for _ in range(args.repeats):
        for name, settings in PATHS.items():
            try:
                rate, text, meta = decode_rate(llm, settings, args.max_new_tokens)
            except Exception as exc:  # noqa: BLE001
                results["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            rates[name].append(rate)
            texts[name] = text
            metas[name] = meta
            print(f"{name:>14}: {rate:7.1f} tok/s {meta}", flush=True)
    results["decode_tok_s"] = {k: round(statistics.median(v), 1) for k, v in rates.items() if v}
    results["decode_runs"] = {k: [round(x, 1) for x in v] for k, v in rates.items()}
    results["graphs_same_text_as_eager"] = texts.get("loop + graphs") == texts.get("loop eager")
    results["loop_same_text_as_transformers"] = texts.get("loop eager") == texts.get("transformers")
    # where they part: at once when the loop's cache is not the model's (garbage), later for rounding
    results["loop_agrees_with_transformers_for_chars"] = _common_prefix(
        texts.get("loop eager") or "", texts.get("transformers") or ""
    )
    results["graph_steps"] = metas.get("loop + graphs", {}).get("graph_steps")
    graphs = llm.accelerators.get("graphs")
    results["graph_failure"] = getattr(graphs, "failed", None)
    results["graph_buckets"] = sorted(getattr(graphs, "graphs", {}) or [])

    calls: dict[str, dict] = {}
    for name, settings in PATHS.items():
        try:
            tool_call(llm, schemas, settings)  # warm-up
            elapsed, call, meta = tool_call(llm, schemas, settings)
            calls[name] = {"seconds": round(elapsed, 3), "call": call, "decode": meta}
            print(f"{name:>14}: tool call in {elapsed:.3f}s {call[:120]}", flush=True)
        except Exception as exc:  # noqa: BLE001
            results["errors"].append(f"tool call {name}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
    results["tool_calls"] = calls
    print(json.dumps(results, indent=1), flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
