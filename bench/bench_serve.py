"""A bounded load test of ``llava-agent serve``: concurrent streaming clients on loopback, one model.

The real server command is started on 127.0.0.1 (only: this never listens beyond the machine)
with a random-weight checkpoint: the llava-interleave-0.5b-sized one of
``bench/bench_chat_model.py`` (default) or the tiny test model (``--size tiny``). Then:

1. one reference reply per prompt, greedy, one request at a time;
2. ``--clients`` threads each send ``--requests`` streaming requests through the official
   ``openai`` client, one after the other, each client cycling through the prompts from a
   different start, so concurrent requests always carry different prompts;
3. every reply is checked against its prompt's reference (greedy decoding is deterministic, so a
   reply that went to the wrong request, or got mixed with another, does not match; the eight
   references differ from each other), and each stream's chunks must share one completion id.
   With batching, a padded row's floating-point sums differ slightly from the request run alone,
   and a random model's greedy pick can flip mid-reply; a mismatch is therefore classed as
   "drifted" (it starts as its own reference) or "mixed-up" (closer to another prompt's);
4. the server's resident memory is sampled every 0.25 s over the run.

A fixed request count and a time limit bound the run (requests not finished in time count as
errors). Reported: requests/s, time to first token p50/p95, tokens/s per client and in total,
errors, mismatched replies, server memory at start, end and peak.

    HF_HUB_OFFLINE=1 python bench/bench_serve.py                       # 0.5b-sized, 8 x 10
    HF_HUB_OFFLINE=1 python bench/bench_serve.py --size tiny           # quick
    HF_HUB_OFFLINE=1 python bench/bench_serve.py --model-dir /tmp/llava-random-0.5b   # reuse a checkpoint
    HF_HUB_OFFLINE=1 python bench/bench_serve.py --max-batch 1     # one request at a time, for comparison
    HF_HUB_OFFLINE=1 python bench/bench_serve.py --quantization none --dtype float32   # batched rows exact
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"
KEY = "bench-key-" + "k" * 24
PROMPTS = [
    "Describe a red circle meeting a blue square.",
    "Tell me a short story about a cat on a mat.",
    "What colour is the sky at sunset over the sea?",
    "Write a few words about a dog in the park today.",
    "Why do leaves turn yellow in the autumn?",
    "List three things you can see in a kitchen.",
    "How does a bicycle stay upright when it moves?",
    "Say something kind about a rainy Monday.",
]


@dataclass
class Result:
    client: int
    prompt: int
    started: float
    first_token: float | None = None
    finished: float | None = None
    tokens: int = 0
    text: str = ""
    ids: set[str] = field(default_factory=set)
    error: str | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def build_model(size: str, model_dir: Path | None, workdir: Path) -> Path:
    if model_dir is not None and (model_dir / "config.json").exists():
        return model_dir
    if size == "tiny":
        from tests.tiny_models import build_tiny_llava

        return build_tiny_llava((model_dir or workdir / "llava-tiny-qwen2"), "qwen2")
    from bench.bench_chat_model import build_checkpoint

    built = build_checkpoint(model_dir.parent if model_dir else workdir, "0.5b")
    return built


def start_server(model: Path, port: int, workdir: Path, args: argparse.Namespace) -> subprocess.Popen:
    config = workdir / "config.toml"
    config.write_text(
        f'data_dir = "{workdir / "data"}"\n[model]\ntemperature = 0.0\ndevice = "cpu"\n'
        f'quantization = "{args.quantization}"\ndtype = "{args.dtype}"\n'
        f"[serve]\nmax_queue = {max(args.clients * 2, 8)}\nrequest_timeout_s = {args.time_limit}\n"
        f"max_batch = {args.max_batch}\n"
    )
    env = {**os.environ, "LLAVA_AGENT_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
    env.pop("LLAVA_AGENT_DATA_DIR", None)
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - kept open for the server's life
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli.main", "serve", "--host", HOST, "--port", str(port), "--model", str(model),
         "--no-agent", "--api-key", KEY],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def wait_ready(url: str, process: subprocess.Popen, limit: float, log: Path) -> dict:
    import httpx

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited ({process.returncode}):\n{log.read_text()[-2000:]}")
        try:
            response = httpx.get(url + "/health", timeout=5)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server was not ready in {limit:.0f} s:\n{log.read_text()[-2000:]}")


def stream_one(client, model: str, result: Result, max_tokens: int) -> Result:
    try:
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPTS[result.prompt]}], max_tokens=max_tokens,
            temperature=0, stream=True,
        )  # fmt: skip
        pieces = []
        for chunk in stream:
            result.ids.add(chunk.id)
            if chunk.choices and chunk.choices[0].delta.content:
                if result.first_token is None:
                    result.first_token = time.perf_counter()
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                result.tokens = chunk.usage.completion_tokens
        result.text = "".join(pieces)
        result.finished = time.perf_counter()
    except Exception as exc:  # counted and reported, never hidden
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def common_prefix(a: str, b: str) -> int:
    size = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        size += 1
    return size


def classify(reply: str, own: str, others: list[str]) -> str:
    """"mixed-up" when the reply is closer to another prompt's reference than to its own, else "drifted".

    Batched rows are padded, so their floating-point sums are not bit-identical to a request run
    alone, and a random-weight model's greedy choice can then flip; such a reply still starts as its
    own reference does. A reply that went to the wrong request starts as another one's.
    """
    own_prefix = common_prefix(reply, own)
    return "mixed-up" if any(common_prefix(reply, other) > own_prefix for other in others) else "drifted"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["0.5b", "tiny"], default="0.5b")
    parser.add_argument("--model-dir", type=Path, default=None, help="reuse (or build into) this checkpoint folder")
    parser.add_argument("--quantization", default="auto")
    parser.add_argument("--dtype", default="auto", help="float32 (with --quantization none) makes batched rows exact")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=10, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--time-limit", type=float, default=1800.0, help="seconds for the load phase")
    parser.add_argument("--max-batch", type=int, default=4, help="serve.max_batch (1: one request at a time)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    import openai
    import psutil

    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    model = build_model(args.size, args.model_dir, workdir)
    port = free_port()
    url = f"http://{HOST}:{port}"
    process = start_server(model, port, workdir, args)
    try:
        started = time.perf_counter()
        health = wait_ready(url, process, 900, workdir / "server.log")
        print(f"server ready in {time.perf_counter() - started:.1f} s: {health['model']} ({model})", flush=True)
        server = psutil.Process(process.pid)
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=args.time_limit)
        name = health["model"]

        references = {}
        for index in range(len(PROMPTS)):
            reference = stream_one(client, name, Result(-1, index, time.perf_counter()), args.max_tokens)
            if reference.error:
                raise SystemExit(f"reference request failed: {reference.error}")
            references[index] = reference.text
        print(f"references: {len(references)} prompts, e.g. {references[0][:60]!r}", flush=True)

        memory: list[tuple[float, int]] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                memory.append((time.perf_counter(), server.memory_info().rss))
                sampling.wait(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        results: list[Result] = []
        deadline = time.perf_counter() + args.time_limit

        def run_client(number: int) -> None:
            for request in range(args.requests):
                prompt = (number + request) % len(PROMPTS)
                result = Result(number, prompt, time.perf_counter())
                if result.started > deadline:
                    result.error = "not started: time limit"
                else:
                    stream_one(client, name, result, args.max_tokens)
                results.append(result)

        load_started = time.perf_counter()
        clients = [threading.Thread(target=run_client, args=(n,)) for n in range(args.clients)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(timeout=max(1.0, deadline - time.perf_counter() + 60))
        wall = time.perf_counter() - load_started
        sampling.set()
        sampler.join()
        import httpx

        final_health = httpx.get(url + "/health", timeout=30).json()
    finally:
        process.terminate()
        process.wait(timeout=60)

    done = [r for r in results if r.error is None and r.finished is not None]
    errors = [r for r in results if r.error is not None]
    missing = args.clients * args.requests - len(results)
    mismatched = [r for r in done if r.text != references[r.prompt] or len(r.ids) != 1]
    others = {p: [t for q, t in references.items() if q != p] for p in references}
    mixed_up = [r for r in mismatched if len(r.ids) != 1 or classify(r.text, references[r.prompt], others[r.prompt])
                == "mixed-up"]  # fmt: skip
    drifted = [r for r in mismatched if r not in mixed_up]
    shared = [common_prefix(r.text, references[r.prompt]) / max(len(references[r.prompt]), 1) for r in drifted]
    ttft = [r.first_token - r.started for r in done if r.first_token is not None]
    tokens = sum(r.tokens for r in done)
    per_client = []
    for number in range(args.clients):
        mine = [r for r in done if r.client == number]
        busy = sum(r.finished - r.started for r in mine)
        if busy > 0:
            per_client.append(sum(r.tokens for r in mine) / busy)
    rss = [value for _, value in memory]
    quarters = [rss[min(len(rss) - 1, int(q * (len(rss) - 1)))] / 2**20 for q in (0.25, 0.5, 0.75, 1.0)] if rss else []
    report = {
        "size": args.size,
        "model": str(model),
        "clients": args.clients,
        "requests_per_client": args.requests,
        "max_tokens": args.max_tokens,
        "max_batch": args.max_batch,
        "completed": len(done),
        "errors": len(errors) + missing,
        "mismatched_replies": len(mismatched),
        "mixed_up_replies": len(mixed_up),
        "drifted_replies": len(drifted),
        "drifted_median_shared_prefix": round(statistics.median(shared), 2) if shared else None,
        "distinct_references": len(set(references.values())),  # the mix-up check needs replies that differ
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(done) / wall, 3),
        "ttft_p50_s": round(percentile(ttft, 0.5), 3),
        "ttft_p95_s": round(percentile(ttft, 0.95), 3),
        "tokens_per_s_total": round(tokens / wall, 2),
        "tokens_per_s_per_client_mean": round(statistics.mean(per_client), 2) if per_client else None,
        "server_rss_mib_start": round(rss[0] / 2**20, 1) if rss else None,
        "server_rss_mib_end": round(rss[-1] / 2**20, 1) if rss else None,
        "server_rss_mib_peak": round(max(rss) / 2**20, 1) if rss else None,
        "server_rss_mib_at_25_50_75_100pct": [round(q, 1) for q in quarters],
        "server_counters": final_health.get("requests"),
        "batched_requests": final_health.get("queue", {}).get("batched_requests"),
        "first_errors": [r.error for r in errors[:3]],
        "mismatches": [{"prompt": r.prompt, "reply": r.text, "reference": references[r.prompt],
                        "shared_prefix": common_prefix(r.text, references[r.prompt]), "ids": len(r.ids),
                        "class": "mixed-up" if r in mixed_up else "drifted"} for r in mismatched],
    }
    print()
    print(f"{args.clients} streaming clients x {args.requests} requests, {args.size}, max_tokens={args.max_tokens}, "
          f"max_batch={args.max_batch}, quantization={args.quantization}, dtype={args.dtype}, "
          f"{psutil.cpu_count()} CPUs")  # fmt: skip
    print("| metric | value |")
    print("|---|---|")
    for key, value in report.items():
        if key not in ("model", "first_errors", "mismatches"):
            print(f"| {key} | {value} |")
    if errors:
        print("errors:", report["first_errors"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
