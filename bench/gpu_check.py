"""One GPU check: everything that only runs on CUDA, proven in a single short run.

    python bench/gpu_check.py --output gpu-report                         # CUDA, real sizes (sized for <= 8 min on an H100/H200)
    python bench/gpu_check.py --output dry-run --device cpu --size tiny   # the same steps on tiny models, on a CPU

Six independent steps (one failing is reported with its error and the others still run):

1. ``ChatLlava`` at llava-1.5-7b size in NF4 4-bit (double quant), int8 and fp16: load time, GPU
   memory, time to first token (text, and with one image) and decode tok/s, each against plain
   transformers ``generate`` on the same weights in the same run (target: ChatLlava decodes at
   >= 95% of plain ``generate``).
2. Constrained tool calls: 20 forced calls (five per product tool) validated against the four
   tools' schemas; the mask cost per token, replayed on the device.
3. The tools on the device (fp16 where the tool loads fp16): captions/s (BLIP-large size),
   s/image for ``generate_image`` (SD-Turbo size, 512x512, one step), CLIP indexing images/s and
   search latency (ViT-B/32), VITS real-time factor (mms-tts-eng size) -- then the model
   manager's budget and least-recently-used eviction with several models resident.
4. QLoRA at llava-1.5-7b size (batch 1, ~600 tokens with one image) through ``finetune.train``:
   30 steps, interrupted by a kill after the first checkpoint and resumed; samples/s and peak
   GPU memory (target <= 8 GiB); the adapter reloaded into ``ChatLlava``; ``finetune.merge``
   refusing a base saved in 4-bit.
5. The turn benchmark (``bench/bench_turns.py``) when it exists.
6. ``generate_video`` at CogVideoX-2b size (float16): one 49-frame 720x480 clip per memory plan the
   tool can choose (all on the GPU; model CPU offload), seconds per step and per default clip,
   peak GPU memory, and the working memory over the weights against the margin
   ``tools.video_cost`` keeps when it picks a plan.

Every model has random weights built from its real config (nothing is downloaded). The report
(``gpu_check.md``) and the raw results (``gpu_check.json``) are rewritten in ``--output`` after
every step (and when a step starts), so a run cut short still says what it reached.

Layout: this file parses the command line and runs the steps; ``gpu_check_chat`` holds steps 1,
2 and 5, ``gpu_check_tools`` step 3, ``gpu_check_qlora`` step 4, ``gpu_check_video`` step 6; ``gpu_check_models`` builds the
checkpoints, ``gpu_check_common`` the shared helpers, ``gpu_check_report`` the report.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.gpu_check_report import REPORT_MD, Report, StepRecord, environment, say  # noqa: E402


def run_step(step: StepRecord, function, context: Any, report: Report) -> None:
    say(f"step {step.number}: {step.title}")
    step.status = "running"
    report.write()
    started = time.perf_counter()
    try:
        function(context, step)
    except Exception as exc:  # the step fails, the run goes on
        step.status = "failed"
        step.error = f"{type(exc).__name__}: {exc}"
        step.traceback = "".join(traceback.format_exception(exc))[-4000:]
        say(f"  FAILED: {step.error}")
    else:
        if step.status == "running":
            failed = [c["name"] for c in step.checks if not c["ok"]]
            step.status = "failed" if failed else "passed"
            if failed:
                step.error = "failed checks: " + "; ".join(failed)
    step.seconds = round(time.perf_counter() - started, 1)
    report.build_seconds = dict(context.assets.seconds)
    say(f"step {step.number}: {step.status} in {step.seconds} s")
    report.write()


def steps() -> list[tuple[str, str, Any]]:
    """(name, title, function) of the steps, in order."""
    from bench.gpu_check_chat import step_chat_model, step_tool_calls, step_turns
    from bench.gpu_check_qlora import step_qlora
    from bench.gpu_check_tools import step_tools
    from bench.gpu_check_video import step_video

    return [
        ("chat_model", "ChatLlava in 4-bit, 8-bit and fp16 against plain generate", step_chat_model),
        ("tool_calls", "Constrained tool calls: 20 forced calls, mask cost per token", step_tool_calls),
        ("tools", "Tools on the device: caption, generate_image, CLIP index/search, VITS; budget and eviction", step_tools),
        ("qlora", "QLoRA: 30 steps with an interrupt and resume, adapter reload, merge refusal", step_qlora),
        ("turns", "Turn benchmark (bench/bench_turns.py)", step_turns),
        ("video", "generate_video at CogVideoX-2b size: memory plans, s/clip, peak memory", step_video),
    ]


def default_work_parent(size: str) -> str | None:
    """RAM-backed /dev/shm when it has room for the real-size checkpoints (about 22 GB), else the temp folder.

    The 7B checkpoint is written once (13.5 GB) and read four times; on the 2-core development
    machine safetensors wrote to disk at 0.24 GB/s (about 56 s for 13.5 GB at that rate), while
    a tmpfs takes writes at memory speed. Containers often give /dev/shm only 64 MB, hence the check.
    """
    shm = Path("/dev/shm")
    if size == "full" and shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 28 * 2**30:
        return str(shm)
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Steps: 1 chat model, 2 tool calls, 3 tools, 4 QLoRA, 5 turn benchmark, 6 video.",
    )
    parser.add_argument("--output", type=Path, required=True, help="folder for gpu_check.md and gpu_check.json")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--size", choices=("full", "tiny"), default="full",
                        help="full: real architecture sizes (CUDA only); tiny: test-suite sizes (a dry run)")
    parser.add_argument("--steps", type=int, nargs="+", choices=range(1, 7), default=[1, 2, 3, 4, 5, 6],
                        metavar="N", help="run only these steps (the others are reported as skipped)")
    parser.add_argument("--workdir", type=Path, help="where checkpoints are built (default: a new folder in /dev/shm "
                        "when it has room, else in the temp folder; removed at the end); keep it off --output, "
                        "the 7B checkpoint is 13.5 GB")
    parser.add_argument("--keep-workdir", action="store_true", help="do not remove the work folder at the end")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu" and args.size == "full":
        print("gpu_check: --size full on a CPU would take hours; use --device cpu --size tiny for a dry run",
              file=sys.stderr)
        return 2
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                        ("ANONYMIZED_TELEMETRY", "False"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TQDM_DISABLE", "1")):
        os.environ.setdefault(name, value)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: --device cuda needs a CUDA GPU, but torch {torch.__version__} (CUDA build "
              f"{torch.version.cuda}) sees none; run on a GPU machine, or use --device cpu --size tiny for a dry run",
              file=sys.stderr)  # fmt: skip
        return 2

    from bench.gpu_check_common import Context
    from bench.gpu_check_models import Assets

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpu-check-", dir=default_work_parent(args.size)))
    workdir.mkdir(parents=True, exist_ok=True)
    # The tools and the chat read the user's config and data folder by default: keep them in the work folder.
    (workdir / "config.toml").write_text("")
    os.environ["LLAVA_AGENT_CONFIG"] = str(workdir / "config.toml")
    os.environ["LLAVA_AGENT_DATA_DIR"] = str(workdir / "data")
    if args.size == "tiny":
        torch.set_num_threads(1)  # tiny models gain nothing from threads on a busy CPU

    plan = steps()
    records = [StepRecord(number, name, title) for number, (name, title, _) in enumerate(plan, start=1)]
    report = Report(args.output, args, records)
    report.environment = environment(args.device)
    say(f"gpu check: device {args.device}, size {args.size}, work folder {workdir}, report {args.output}")
    say("environment: " + json.dumps(report.environment))
    context = Context(device=args.device, size=args.size, workdir=workdir, assets=Assets(workdir, args.size, args.device))
    for record, (_, _, function) in zip(records, plan, strict=True):
        if record.number not in args.steps:
            record.status = "skipped"
            record.notes.append("not selected with --steps")
            continue
        run_step(record, function, context, report)
    report.finished = time.strftime("%Y-%m-%d %H:%M:%S %z")
    report.write()
    say(f"done in {report.elapsed()} s: " + ", ".join(f"{r.number} {r.status}" for r in records))
    say(f"report: {args.output / REPORT_MD}")
    if not args.keep_workdir and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if any(r.status == "failed" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
